//! `pipe diff A B`: what differs between two configs or recorded runs, and what it
//! did. Each side is read, never built: a run side from its record (and the action
//! entries it names), a config side from the cache the way `pipe status` would find
//! it. Sections: knobs, stages (same key / different key and why / not built), metrics,
//! changed verdicts, a curve overlay (SVG artifact) and per-tensor checkpoint distances.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cache::{ArtifactRef, Cache, KeyInputs, Metrics, StageKey};
use pipelines::compare::{diff_tensors, TensorDiff};
use pipelines::plot::{overlay_svg, Curves};
use serde_json::{json, Value};
use workspace::StageSpec;

use crate::project::{failed, is_run_reference, load_config, resolve_run, usage, Failure, Project};
use crate::text::{change_text, changed_knobs, knob_text, say, utc};

/// One side of a diff.
struct Side {
    /// How it is shown: `run 3 (overfit, ...)` or `pipe.toml --set train.lr=1e-3`.
    label: String,
    /// How it was named (`@prev`, `b.toml`, `.`).
    name: String,
    source: Source,
    /// Canonical text of every knob.
    config: BTreeMap<String, String>,
    device: String,
    stages: BTreeMap<String, SideStage>,
}

enum Source {
    Run(u64),
    Config { file: PathBuf, sets: Vec<String> },
}

#[derive(Default)]
struct SideStage {
    key: Option<StageKey>,
    inputs: Option<KeyInputs>,
    built: bool,
    artifacts: BTreeMap<String, ArtifactRef>,
    metrics: Metrics,
    /// Check name -> status (`pass`, `warn`, `fail`).
    verdicts: BTreeMap<String, String>,
}

pub fn run(project: &Project, a: Option<&str>, b: Option<&str>, json: bool) -> Result<u8, Failure> {
    let cache = project.open_cache()?;
    let specs: Vec<StageSpec> =
        pipelines::recipe(&project.directory).stages.iter().map(|stage| stage.spec().clone()).collect();
    let a = side(project, &cache, a.unwrap_or("@latest"), &[])?;
    let b = side(project, &cache, b.unwrap_or("."), &project.sets)?;

    let knobs = changed_knobs(&a.config, &b.config);
    let mut stages = Vec::new();
    let mut metrics = Vec::new();
    let mut verdicts = Vec::new();
    let mut checkpoints = Vec::new();
    let mut curves = Vec::new();
    let mut build_commands = BuildCommands::new(project);
    // Stages of the target neither side lists (a fan-in stage outside `all`) are left out.
    for spec in specs.iter().filter(|spec| a.stages.contains_key(spec.id.0) || b.stages.contains_key(spec.id.0)) {
        let empty = SideStage::default();
        let sa = a.stages.get(spec.id.0).unwrap_or(&empty);
        let sb = b.stages.get(spec.id.0).unwrap_or(&empty);
        stages.push(stage_row(spec, &a, &b, sa, sb, &mut build_commands));
        if !(sa.built && sb.built) {
            continue;
        }
        let names: BTreeSet<&String> = sa.metrics.keys().chain(sb.metrics.keys()).collect();
        for name in names {
            let (x, y) = (sa.metrics.get(name).copied(), sb.metrics.get(name).copied());
            let delta = x.zip(y).map(|(x, y)| y - x);
            metrics.push(json!({ "stage": spec.id.0, "metric": name, "a": x, "b": y, "delta": delta }));
        }
        let checks: BTreeSet<&String> = sa.verdicts.keys().chain(sb.verdicts.keys()).collect();
        for check in checks {
            let (x, y) = (sa.verdicts.get(check), sb.verdicts.get(check));
            if x != y {
                verdicts.push(json!({ "stage": spec.id.0, "check": check, "a": x, "b": y }));
            }
        }
        checkpoints.extend(checkpoint_diffs(&cache, spec.id.0, sa, sb));
    }
    for spec in &specs {
        if let Some(plot) = curve_plot(&cache, spec.id.0, &a, &b)? {
            curves.push(plot);
        }
    }

    let report = json!({
        "a": side_json(&a),
        "b": side_json(&b),
        "knobs": knobs.iter().map(|(name, x, y)| json!({
            "knob": name,
            "a": x.as_deref().map(knob_text),
            "b": y.as_deref().map(knob_text),
        })).collect::<Vec<_>>(),
        "stages": stages,
        "metrics": metrics,
        "verdicts": verdicts,
        "curves": curves,
        "checkpoints": checkpoints,
    });
    if json {
        say!("{report}");
    } else {
        print_human(&report, &knobs);
    }
    Ok(0)
}

fn side(project: &Project, cache: &Cache, name: &str, sets: &[String]) -> Result<Side, Failure> {
    if is_run_reference(name) {
        if !sets.is_empty() {
            return Err(usage(anyhow::anyhow!(
                "--set applies to the B side of `pipe diff`, which is run `{name}`; give a pipeline file or `.` as B"
            )));
        }
        return run_side(cache, name);
    }
    if let Some(instance) = super::diff_instance::resolve(project, name)? {
        let sets: Vec<String> = instance.sets.iter().chain(sets).cloned().collect();
        return config_side(project, name, project.file.clone(), &sets, &instance.stage, instance.label);
    }
    let file = if name == "." {
        project.file.clone()
    } else {
        let path = project.directory.join(name);
        if path.is_dir() {
            path.join("pipe.toml")
        } else {
            path
        }
    };
    if !file.is_file() {
        return Err(usage(anyhow::anyhow!(
            "`{name}` is neither a run (@latest, @prev, @N) nor a pipeline file (no file at {})",
            file.display()
        )));
    }
    let mut label = if name == "." { file.display().to_string() } else { name.to_string() };
    for set in sets {
        label.push_str(&format!(" --set {set}"));
    }
    config_side(project, name, file, sets, "all", label)
}

/// A side read from pipeline `file` under `sets`: the instances of `target` (with
/// their upstream) as the cache knows them.
fn config_side(
    project: &Project,
    name: &str,
    file: PathBuf,
    sets: &[String],
    target: &str,
    label: String,
) -> Result<Side, Failure> {
    let mut session = project.open_file(&file, sets)?;
    let instances = session.instances(&[], target)?;
    let mut stages = BTreeMap::new();
    for snapshot in workspace::snapshot(&mut session.db, &instances) {
        let verdicts = snapshot
            .verdicts
            .iter()
            .map(|v| (v.check.clone(), serde_json::to_value(v.status).ok().and_then(|s| s.as_str().map(String::from))))
            .map(|(check, status)| (check, status.unwrap_or_default()))
            .collect();
        let (artifacts, metrics) =
            snapshot.manifest.as_ref().map(|m| (m.artifacts.clone(), m.metrics.clone())).unwrap_or_default();
        stages.insert(
            snapshot.name.0.clone(),
            SideStage {
                key: snapshot.key(),
                built: snapshot.manifest.is_some(),
                inputs: snapshot.inputs,
                artifacts,
                metrics,
                verdicts,
            },
        );
    }
    Ok(Side {
        label,
        name: name.to_string(),
        source: Source::Config { file, sets: sets.to_vec() },
        config: session.config.canonical(),
        device: project.device.clone(),
        stages,
    })
}

fn run_side(cache: &Cache, name: &str) -> Result<Side, Failure> {
    let runs = cache.runs();
    let id = resolve_run(&runs, name)?;
    let run =
        runs.load(id).map_err(|err| failed(anyhow::anyhow!("{err} (`pipe fsck` moves a damaged record aside)")))?;
    let mut stages = BTreeMap::new();
    for stage in &run.stages {
        let verdicts = stage
            .verdicts
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| Some((v["check"].as_str()?.to_string(), v["status"].as_str()?.to_string())))
            .collect();
        stages.insert(
            stage.stage.clone(),
            SideStage {
                key: stage.key,
                inputs: stage.key.and_then(|key| cache.actions().peek(&key)).map(|manifest| manifest.inputs),
                built: matches!(stage.status.as_str(), "ran" | "cached"),
                artifacts: stage.artifacts.clone(),
                metrics: stage.metrics.clone(),
                verdicts,
            },
        );
    }
    Ok(Side {
        label: format!("run {id} ({}, {} UTC)", run.targets.join(","), utc(run.started_unix_secs)),
        name: name.to_string(),
        source: Source::Run(id),
        config: run.config,
        device: run.device,
        stages,
    })
}

fn side_json(side: &Side) -> Value {
    let mut value = json!({ "name": side.name, "label": side.label, "device": side.device });
    match &side.source {
        Source::Run(id) => value["run"] = json!(id),
        Source::Config { file, sets } => {
            value["file"] = json!(file.display().to_string());
            value["set"] = json!(sets);
        }
    }
    value
}

/// The `pipe build` command that would build a stage of a side.
struct BuildCommands<'a> {
    project: &'a Project,
    /// The current pipeline's knobs (loaded on first use), for a run side's `--set`s.
    current: Option<Option<BTreeMap<String, String>>>,
}

impl<'a> BuildCommands<'a> {
    fn new(project: &'a Project) -> BuildCommands<'a> {
        BuildCommands { project, current: None }
    }

    fn command(&mut self, side: &Side, stage: &str) -> String {
        let mut args = vec!["pipe".to_string()];
        if let Some(dir) = &self.project.directory_arg {
            args.extend(["-C".into(), dir.display().to_string()]);
        }
        if let Some(dir) = &self.project.cache_dir_arg {
            args.extend(["--cache-dir".into(), dir.display().to_string()]);
        }
        args.extend(["build".into(), stage.to_string()]);
        let default_file = self.project.file.clone();
        match &side.source {
            Source::Config { file, sets } => {
                if *file != default_file {
                    args.extend(["--pipeline".into(), side.name.clone()]);
                }
                for set in sets {
                    args.extend(["--set".into(), set.clone()]);
                }
            }
            Source::Run(_) => {
                let project = self.project;
                let current = self.current.get_or_insert_with(|| {
                    let schema = pipelines::knobs::schema();
                    load_config(&schema, &default_file, &[]).ok().map(|config| config.canonical())
                });
                match current {
                    Some(current) => {
                        for (name, _, value) in changed_knobs(current, &side.config) {
                            if let Some(value) = value {
                                args.extend(["--set".into(), format!("{name}={}", knob_text(&value))]);
                            }
                        }
                    }
                    None => args.push("# with the run's config".into()),
                }
                if side.device != project.device {
                    args.extend(["--device".into(), side.device.clone()]);
                }
            }
        }
        args.iter().map(|arg| shell_word(arg)).collect::<Vec<_>>().join(" ")
    }
}

fn shell_word(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=@,+#".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn stage_row(
    spec: &StageSpec,
    a: &Side,
    b: &Side,
    sa: &SideStage,
    sb: &SideStage,
    commands: &mut BuildCommands<'_>,
) -> Value {
    let status = match (sa.key, sb.key) {
        (Some(x), Some(y)) if x == y => "same",
        (Some(_), Some(_)) => "different",
        _ => "not_built",
    };
    let unknown = |label: &str, side: &Side, stage: &SideStage| match (&side.source, stage.key) {
        (_, Some(_)) => None,
        (Source::Run(id), None) => Some(format!("{label}: not built in run {id}")),
        (Source::Config { .. }, None) => Some(format!("{label}: key unknown until its upstream stages are built")),
    };
    let reasons = match status {
        "different" => why_different(spec, a, b, sa, sb),
        "not_built" => [unknown("A", a, sa), unknown("B", b, sb)].into_iter().flatten().collect(),
        _ => Vec::new(),
    };
    let build_a = (!sa.built).then(|| commands.command(a, spec.id.0));
    let build_b = (!sb.built).then(|| commands.command(b, spec.id.0));
    json!({
        "stage": spec.id.0,
        "status": status,
        "key_a": sa.key.map(|k| k.to_hex()),
        "key_b": sb.key.map(|k| k.to_hex()),
        "built_a": sa.built,
        "built_b": sb.built,
        "reasons": reasons,
        "build_a": build_a,
        "build_b": build_b,
    })
}

/// Why two keys of a stage differ: from the key inputs when both are known, else from
/// the knobs the stage declares and its upstream artifacts.
fn why_different(spec: &StageSpec, a: &Side, b: &Side, sa: &SideStage, sb: &SideStage) -> Vec<String> {
    if let (Some(x), Some(y)) = (&sa.inputs, &sb.inputs) {
        return y.explain_change(x);
    }
    let mut reasons = Vec::new();
    for knob in &spec.knobs {
        let (x, y) = (a.config.get(knob.0), b.config.get(knob.0));
        if x != y {
            reasons.push(format!("knob `{}`", change_text(knob.0, &x.cloned(), &y.cloned())));
        }
    }
    for up in &spec.upstream {
        let empty = BTreeMap::new();
        let xs = a.stages.get(up.0).map_or(&empty, |s| &s.artifacts);
        let ys = b.stages.get(up.0).map_or(&empty, |s| &s.artifacts);
        for name in xs.keys().chain(ys.keys()).collect::<BTreeSet<_>>() {
            let (x, y) = (xs.get(name).map(|r| r.hash.short()), ys.get(name).map(|r| r.hash.short()));
            if x != y {
                let show = |h: Option<String>| h.unwrap_or_else(|| "(absent)".into());
                reasons.push(format!("upstream `{up}/{name}` {} -> {}", show(x), show(y)));
            }
        }
    }
    if reasons.is_empty() {
        reasons.push("the key inputs of one side are no longer cached (collected by `pipe gc`)".into());
    }
    reasons
}

fn checkpoint_diffs(cache: &Cache, stage: &str, sa: &SideStage, sb: &SideStage) -> Vec<Value> {
    let mut out = Vec::new();
    let names: BTreeSet<&String> =
        sa.artifacts.keys().chain(sb.artifacts.keys()).filter(|name| name.ends_with(".safetensors")).collect();
    for name in names {
        let (x, y) = (sa.artifacts.get(name), sb.artifacts.get(name));
        let mut value = json!({
            "stage": stage,
            "artifact": name,
            "hash_a": x.map(|r| r.hash.to_hex()),
            "hash_b": y.map(|r| r.hash.to_hex()),
        });
        match (x, y) {
            (Some(x), Some(y)) if x.hash == y.hash => continue,
            (Some(x), Some(y)) => {
                let tensors = cache
                    .store()
                    .get(&x.hash)
                    .and_then(|bx| cache.store().get(&y.hash).map(|by| (bx, by)))
                    .map_err(|err| format!("{err}"))
                    .and_then(|(bx, by)| diff_tensors(&bx, &by).map_err(|err| err.to_string()));
                match tensors {
                    Ok(tensors) => value["tensors"] = tensors_json(&tensors),
                    Err(error) => value["error"] = json!(format!("cannot compare: {error}")),
                }
            }
            _ => value["only_on"] = json!(if x.is_some() { "a" } else { "b" }),
        }
        out.push(value);
    }
    out
}

fn tensors_json(tensors: &[TensorDiff]) -> Value {
    serde_json::to_value(tensors).unwrap_or(Value::Null)
}

/// Overlays the curves of `stage`'s `metrics.json` on both sides, stores the SVG as an
/// artifact and copies it to `.pipe/out/diff/<stage>.curves.svg`.
fn curve_plot(cache: &Cache, stage: &str, a: &Side, b: &Side) -> Result<Option<Value>, Failure> {
    let read = |side: &Side| -> Option<Curves> {
        let artifact = side.stages.get(stage).filter(|s| s.built)?.artifacts.get("metrics.json")?;
        Curves::from_metrics_json(&cache.store().get(&artifact.hash).ok()?)
    };
    let (ca, cb) = (read(a), read(b));
    if ca.is_none() && cb.is_none() {
        return Ok(None);
    }
    let title = format!("{stage}: A = {} vs B = {}", a.label, b.label);
    let svg = overlay_svg(&title, [(&format!("A {}", a.name), ca.as_ref()), (&format!("B {}", b.name), cb.as_ref())]);
    let hash = cache.store().put(svg.as_bytes()).map_err(failed)?;
    let relative = PathBuf::from("out").join("diff").join(format!("{stage}.curves.svg"));
    let path = cache
        .write_file(&relative, svg.as_bytes())
        .map_err(|err| failed(anyhow::anyhow!("writing {}: {err}", relative.display())))?;
    Ok(Some(json!({
        "stage": stage,
        "hash": hash.to_hex(),
        "object": cache.store().path(&hash).display().to_string(),
        "path": path.display().to_string(),
        "bytes": svg.len(),
    })))
}

fn num(value: &Value) -> String {
    match value.as_f64() {
        None => "-".into(),
        Some(v) if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) => format!("{v:.3e}"),
        Some(v) => format!("{v:.4}"),
    }
}

fn signed(value: &Value) -> String {
    match value.as_f64() {
        Some(v) if v >= 0.0 => format!("+{}", num(value)),
        _ => num(value),
    }
}

fn short_key(value: &Value) -> String {
    value.as_str().map_or("-".to_string(), |key| key.get(..12).unwrap_or(key).to_string())
}

fn print_human(report: &Value, knobs: &[(String, Option<String>, Option<String>)]) {
    say!("A  {}", report["a"]["label"].as_str().unwrap_or_default());
    say!("B  {}", report["b"]["label"].as_str().unwrap_or_default());
    say!("");
    if knobs.is_empty() {
        say!("knobs: no differences");
    } else {
        say!("knobs (A -> B)");
        for (name, x, y) in knobs {
            say!("  {}", change_text(name, x, y));
        }
    }
    say!("");
    say!("stages");
    let rows = report["stages"].as_array().cloned().unwrap_or_default();
    for row in &rows {
        let stage = row["stage"].as_str().unwrap_or_default();
        match row["status"].as_str() {
            Some("same") => {
                let shared = if row["built_a"] == true { "shared artifacts" } else { "same key" };
                say!("  {:<10} {stage:<22} {}  {shared}", "same", short_key(&row["key_a"]));
            }
            Some("different") => {
                let reasons: Vec<&str> =
                    row["reasons"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                say!(
                    "  {:<10} {stage:<22} {} -> {}  {}",
                    "different",
                    short_key(&row["key_a"]),
                    short_key(&row["key_b"]),
                    reasons.join("; ")
                );
            }
            _ => {
                let reasons: Vec<&str> =
                    row["reasons"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                say!("  {:<10} {stage:<22} {}", "not built", reasons.join("; "))
            }
        }
        for side in ["a", "b"] {
            if let Some(command) = row[format!("build_{side}")].as_str() {
                say!("  {:<10} {:<22} not built on {}: {command}", "", "", side.to_uppercase());
            }
        }
    }
    let metrics = report["metrics"].as_array().cloned().unwrap_or_default();
    let differing_stages: BTreeSet<&str> =
        rows.iter().filter(|r| r["status"] != "same").filter_map(|r| r["stage"].as_str()).collect();
    let shown: Vec<&Value> =
        metrics.iter().filter(|m| m["stage"].as_str().is_some_and(|s| differing_stages.contains(s))).collect();
    if !shown.is_empty() {
        say!("");
        say!("metrics (A -> B, delta; stages with the same key have the same metrics)");
        for m in shown {
            say!(
                "  {:<20} {:<20} {:>12} -> {:<12} ({})",
                m["stage"].as_str().unwrap_or_default(),
                m["metric"].as_str().unwrap_or_default(),
                num(&m["a"]),
                num(&m["b"]),
                signed(&m["delta"])
            );
        }
    }
    let verdicts = report["verdicts"].as_array().cloned().unwrap_or_default();
    if !verdicts.is_empty() {
        say!("");
        say!("verdicts that changed (A -> B)");
        for v in &verdicts {
            let show = |s: &Value| {
                s.as_str().map_or("(none)".to_string(), |s| if s == "fail" { "FAIL".into() } else { s.into() })
            };
            say!(
                "  {:<20} {:<22} {} -> {}",
                v["stage"].as_str().unwrap_or_default(),
                v["check"].as_str().unwrap_or_default(),
                show(&v["a"]),
                show(&v["b"])
            );
        }
    }
    for curve in report["curves"].as_array().into_iter().flatten() {
        say!("");
        say!(
            "curves of {}: {} (artifact {})",
            curve["stage"].as_str().unwrap_or_default(),
            curve["path"].as_str().unwrap_or_default(),
            curve["hash"].as_str().map_or("", |h| h.get(..12).unwrap_or(h))
        );
    }
    for checkpoint in report["checkpoints"].as_array().into_iter().flatten() {
        say!("");
        let name = format!(
            "{}/{}",
            checkpoint["stage"].as_str().unwrap_or_default(),
            checkpoint["artifact"].as_str().unwrap_or_default()
        );
        if let Some(side) = checkpoint["only_on"].as_str() {
            say!("{name}: only on {}", side.to_uppercase());
            continue;
        }
        if let Some(error) = checkpoint["error"].as_str() {
            say!("{name}: {error}");
            continue;
        }
        say!("{name} (relative L2 = ||B - A|| / ||A||)");
        say!("  {:<24} {:<12} {:>10} {:>10} {:>10} {:>10}", "tensor", "shape", "|A|", "|B|", "rel L2", "max |B-A|");
        for t in checkpoint["tensors"].as_array().into_iter().flatten() {
            let shape = |s: &Value| match s.as_array() {
                Some(dims) => format!("{:?}", dims.iter().filter_map(Value::as_u64).collect::<Vec<_>>()),
                None => "(absent)".into(),
            };
            let shapes = if t["shape_a"] == t["shape_b"] {
                shape(&t["shape_a"])
            } else {
                format!("{} -> {}", shape(&t["shape_a"]), shape(&t["shape_b"]))
            };
            say!(
                "  {:<24} {:<12} {:>10} {:>10} {:>10} {:>10}",
                t["name"].as_str().unwrap_or_default(),
                shapes,
                num(&t["norm_a"]),
                num(&t["norm_b"]),
                num(&t["rel_l2"]),
                num(&t["max_abs"])
            );
        }
    }
    if knobs.is_empty() && rows.iter().all(|r| r["status"] == "same") {
        say!("");
        say!("no differences: every stage has the same key");
    }
}
