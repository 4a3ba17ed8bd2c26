//! `pipe verify`: proof of reproducibility. Each built stage is re-executed outside
//! the action cache on its cached upstream artifacts; every artifact it writes goes
//! to a scratch directory (`.pipe/tmp/verify-<pid>/<stage>/<name>`) and is compared
//! byte for byte with the cached object. Nothing in the cache is written or replaced.

use std::sync::Arc;
use std::time::Instant;

use pipelines::compare::first_difference;
use serde_json::{json, Value};
use workspace::ArtifactCheck;

use crate::progress::Bars;
use crate::project::{failed, targets_or, Failure, Project};
use crate::text::say;

pub fn run(project: &Project, targets: &[String], json: bool) -> Result<u8, Failure> {
    let started = Instant::now();
    let mut session = project.open()?;
    let targets = targets_or(targets, "overfit");
    let stages = session.instances(&targets, "overfit")?;
    // The lock keeps `pipe gc` from removing what is being compared.
    let _lock = session.cache.lock().map_err(failed)?;
    let snapshots = workspace::snapshot(&mut session.db, &stages);
    let unbuilt: Vec<&str> = snapshots.iter().filter(|s| s.manifest.is_none()).map(|s| s.name.as_str()).collect();
    if !unbuilt.is_empty() {
        return Err(failed(anyhow::anyhow!(
            "not built for this config: {}; nothing was verified (run `pipe build {}` first)",
            unbuilt.join(", "),
            targets.join(" ")
        )));
    }
    session.db.set_progress(Arc::new(Bars::new(!json)));
    let scratch_relative = std::path::PathBuf::from("tmp").join(format!("verify-{}", std::process::id()));
    let scratch = session.cache.root().join(&scratch_relative);
    let (mut artifacts, mut mismatched, mut errors) = (0, 0, 0);
    for instance in &stages {
        let check = workspace::verify_stage(&session.db, &snapshots, instance);
        let id = check.name.as_str();
        let mut files = serde_json::Map::new();
        for artifact in &check.artifacts {
            artifacts += 1;
            let path = scratch.join(id).join(&artifact.name);
            if let Some(bytes) = &artifact.rerun_bytes {
                session
                    .cache
                    .write_file(&scratch_relative.join(id).join(&artifact.name), bytes)
                    .map_err(|err| failed(anyhow::anyhow!("writing {}: {err}", path.display())))?;
            }
            let value = artifact_json(artifact, &path);
            if !artifact.reproducible() {
                mismatched += 1;
            }
            if !json {
                print_artifact(id, artifact, &value);
            }
            files.insert(artifact.name.clone(), value);
        }
        let metrics: Vec<Value> =
            check.metrics.iter().map(|(name, a, b)| json!({ "metric": name, "cached": a, "rerun": b })).collect();
        if let Some(error) = &check.error {
            errors += 1;
            if !json {
                say!("{:>12}  {id}: {error}", "ERROR");
            }
        }
        if !json {
            for (name, a, b) in &check.metrics {
                say!("{:>12}  {id} metric `{name}`: cached {a:?} vs rerun {b:?}", "MISMATCH");
            }
        }
        if json {
            say!(
                "{}",
                json!({
                    "event": "verify",
                    "stage": id,
                    "key": check.key.map(|k| k.to_hex()),
                    "reproducible": check.reproducible(),
                    "secs": check.secs,
                    "artifacts": files,
                    "metrics": metrics,
                    "error": check.error,
                })
            );
        }
        mismatched += check.metrics.len();
    }
    let secs = started.elapsed().as_secs_f64();
    let ok = mismatched == 0 && errors == 0;
    if ok {
        std::fs::remove_dir_all(&scratch).ok();
    }
    if json {
        say!(
            "{}",
            json!({
                "event": "done", "stages": stages.len(), "artifacts": artifacts, "mismatched": mismatched,
                "errors": errors, "scratch": (!ok).then(|| scratch.display().to_string()), "secs": secs,
            })
        );
    } else {
        say!(
            "verified {} stages, {artifacts} artifacts: {} in {secs:.2}s",
            stages.len(),
            if ok {
                "all reproducible".to_string()
            } else {
                format!(
                    "{mismatched} mismatch(es), {errors} error(s); re-executed artifacts kept in {}",
                    scratch.display()
                )
            }
        );
    }
    Ok(if ok { 0 } else { 1 })
}

fn artifact_json(artifact: &ArtifactCheck, path: &std::path::Path) -> Value {
    let status = if artifact.reproducible() { "reproducible" } else { "mismatch" };
    let mut value = json!({
        "status": status,
        "cached": artifact.cached.map(|h| h.to_hex()),
        "rerun": artifact.rerun_hash().map(|h| h.to_hex()),
        "cached_corrupt": artifact.cached_corrupt(),
    });
    if artifact.rerun_bytes.is_some() {
        value["path"] = json!(path.display().to_string());
    }
    if !artifact.reproducible() {
        let difference = match (&artifact.cached_bytes, &artifact.rerun_bytes) {
            (Some(cached), Some(rerun)) => first_difference(&artifact.name, cached, rerun)
                .map(|d| (serde_json::to_value(&d).unwrap_or(Value::Null), d.describe("cached", "rerun"))),
            (None, _) if artifact.cached.is_some() => {
                Some((Value::Null, "the cached object is missing (`pipe build` re-creates it)".into()))
            }
            (None, _) => Some((Value::Null, "written by the re-execution but not in the cached entry".into())),
            (_, None) => Some((Value::Null, "the re-execution did not write it".into())),
        };
        if let Some((detail, text)) = difference {
            value["difference"] = detail;
            value["message"] = json!(text);
        }
    }
    value
}

fn print_artifact(stage: &str, artifact: &ArtifactCheck, value: &Value) {
    let name = format!("{stage}/{}", artifact.name);
    let short = |h: &Value| h.as_str().map_or("-".to_string(), |h| h.get(..12).unwrap_or(h).to_string());
    if artifact.reproducible() {
        say!("{:>12}  {name:<34} {}", "reproducible", short(&value["cached"]));
        return;
    }
    say!("{:>12}  {name:<34} cached {}, rerun {}", "MISMATCH", short(&value["cached"]), short(&value["rerun"]));
    if artifact.cached_corrupt() {
        let rerun_matches = artifact.rerun_hash() == artifact.cached;
        say!(
            "{:>12}  the cached object is corrupt: its bytes no longer hash to its name{} (`pipe fsck` moves it aside)",
            "",
            if rerun_matches { "; the re-executed bytes do" } else { "" }
        );
    }
    if let Some(message) = value["message"].as_str() {
        say!("{:>12}  first difference: {message}", "");
    }
}
