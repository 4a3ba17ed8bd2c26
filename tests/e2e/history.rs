//! Run history, `pipe diff`, `pipe verify`, `pipe fsck` and `pipe gc`, end to end.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::digits;
use crate::support::{Run, TestDir};

/// The single JSON object `pipe diff --json` or `pipe gc --json` prints.
fn report(run: &Run) -> Value {
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn statuses(report: &Value) -> Vec<(String, String)> {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap().to_string(), s["status"].as_str().unwrap().to_string()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

fn object_path(dir: &TestDir, hash: &str) -> PathBuf {
    dir.path().join(".pipe/objects").join(&hash[..2]).join(hash)
}

/// Flips one byte in the middle of a (read-only) file, as a disk error would.
fn flip_middle_byte(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let mut permissions = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(path, permissions).unwrap();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn checkpoint_hash(run: &Run) -> String {
    run.stage("overfit")["artifacts"]["checkpoint.safetensors"]["hash"].as_str().unwrap().to_string()
}

#[test]
fn diff_of_configs_differing_in_one_knob_names_it_and_exactly_the_dependent_stages() {
    let dir = digits();
    assert_eq!(dir.build(&[]).code, 0);
    let text = std::fs::read_to_string(dir.path().join("pipe.toml")).unwrap();
    assert!(text.contains("[train]\n"));
    std::fs::write(dir.path().join("b.toml"), text.replace("[train]\n", "[train]\nlr = 0.001\n")).unwrap();

    // B is not built: stages downstream of a different one cannot have a key yet.
    let expected_stages = pairs(&[
        ("data", "same"),
        ("inspect", "same"),
        ("batch_preview", "same"),
        ("human_baseline", "same"),
        ("dumb_baselines", "same"),
        ("grad_deps", "same"),
        ("loss_at_init", "same"),
        ("zero_input_baseline", "different"),
        ("overfit_batch", "different"),
        ("overfit", "different"),
        ("beats_baselines", "not_built"),
        ("regularize", "not_built"),
        ("evaluate", "not_built"),
    ]);
    let by_file = report(&dir.run(&["diff", "pipe.toml", "b.toml", "--json"]));
    let by_set = report(&dir.run(&["diff", ".", "--set", "train.lr=1e-3", "--json"]));
    for diff in [&by_file, &by_set] {
        assert_eq!(diff["knobs"], serde_json::json!([{ "knob": "train.lr", "a": "0.0003", "b": "0.001" }]));
        assert_eq!(statuses(diff), expected_stages);
        for stage in diff["stages"].as_array().unwrap() {
            if stage["status"] == "different" {
                assert_eq!(stage["reasons"], serde_json::json!(["knob `train.lr` 0.0003 -> 0.001"]), "{stage}");
                assert_eq!(stage["built_b"], false);
                assert!(stage["build_b"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("build {}", stage["stage"].as_str().unwrap())));
            } else if stage["status"] == "same" {
                assert_eq!(stage["key_a"], stage["key_b"]);
                assert_eq!((&stage["built_a"], &stage["built_b"]), (&Value::Bool(true), &Value::Bool(true)));
            } else if stage["stage"] == "regularize" {
                // Not in the default target: built on neither side.
                assert_eq!((&stage["built_a"], &stage["built_b"]), (&Value::Bool(false), &Value::Bool(false)));
            } else {
                assert_eq!((&stage["built_a"], &stage["built_b"]), (&Value::Bool(true), &Value::Bool(false)));
            }
        }
    }
    let overfit =
        |diff: &Value| diff["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "overfit").cloned().unwrap();
    assert!(overfit(&by_file)["build_b"].as_str().unwrap().ends_with("build overfit --pipeline b.toml"));
    assert!(overfit(&by_set)["build_b"].as_str().unwrap().ends_with("build overfit --set train.lr=1e-3"));

    // Identical configs, every stage built (`regularize` is outside the default target):
    // no difference at all.
    assert_eq!(dir.build(&["all"]).code, 0);
    let same = report(&dir.run(&["diff", "pipe.toml", "pipe.toml", "--json"]));
    assert_eq!(same["knobs"], serde_json::json!([]));
    assert!(statuses(&same).iter().all(|(_, status)| status == "same"), "{:?}", statuses(&same));
    assert_eq!(same["verdicts"], serde_json::json!([]));
    assert_eq!(same["checkpoints"], serde_json::json!([]));
    let metrics = same["metrics"].as_array().unwrap();
    assert!(metrics.len() > 10);
    assert!(metrics.iter().all(|m| m["delta"] == 0.0), "{metrics:?}");
    let human = dir.run(&["diff", "pipe.toml", "pipe.toml"]);
    assert!(human.stdout.contains("no differences: every stage has the same key"), "{}", human.stdout);

    // A side that is neither a run nor a file, and --set on a run side, are usage errors.
    let bad = dir.run(&["diff", "nope.toml"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("`nope.toml` is neither a run"), "{}", bad.stderr);
    let bad = dir.run(&["diff", "@latest", "@latest", "--set", "train.lr=1"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("--set applies to the B side"), "{}", bad.stderr);
}

#[test]
fn diff_of_two_runs_shows_metric_deltas_curves_and_checkpoint_tensors() {
    let dir = digits();
    let first = dir.build(&[]);
    let second = dir.build(&["--set", "train.steps=400"]);
    assert_eq!(second.code, 0, "{}", second.stderr);

    let runs = dir.run(&["runs"]);
    let lines: Vec<&str> = runs.stdout.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{}", runs.stdout);
    assert!(lines[0].trim_start().starts_with("1 ") && lines[0].contains("(first recorded run)"), "{}", lines[0]);
    assert!(lines[1].contains("train.steps 600 -> 400") && lines[1].contains("3 ran, 9 cached"), "{}", lines[1]);
    assert!(lines[1].contains("acc test 0.") && lines[1].contains(" val 0."), "headline metrics: {}", lines[1]);
    let json_runs = dir.run(&["runs", "--json"]);
    let headline = &json_runs.lines()[1]["headline"];
    assert!(headline["evaluate/test_acc"].as_f64().is_some_and(|acc| acc > 0.5), "{headline}");

    let diff = report(&dir.run(&["diff", "@prev", "@latest", "--json"]));
    assert_eq!((&diff["a"]["run"], &diff["b"]["run"]), (&Value::from(1), &Value::from(2)));
    assert_eq!(diff["knobs"], serde_json::json!([{ "knob": "train.steps", "a": "600", "b": "400" }]));
    assert_eq!(
        statuses(&diff),
        pairs(&[
            ("data", "same"),
            ("inspect", "same"),
            ("batch_preview", "same"),
            ("human_baseline", "same"),
            ("dumb_baselines", "same"),
            ("grad_deps", "same"),
            ("loss_at_init", "same"),
            ("zero_input_baseline", "same"),
            ("overfit_batch", "same"),
            ("overfit", "different"),
            ("beats_baselines", "different"),
            ("evaluate", "different"),
        ])
    );
    assert_eq!(diff["stages"][9]["reasons"], serde_json::json!(["knob `train.steps` 600 -> 400"]));

    let metric = |name: &str| {
        diff["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["stage"] == "overfit" && m["metric"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!((metric("steps")["a"].as_f64(), metric("steps")["delta"].as_f64()), (Some(600.0), Some(-200.0)));
    let loss = metric("train_loss");
    let (a, b) = (loss["a"].as_f64().unwrap(), loss["b"].as_f64().unwrap());
    assert_eq!(a, first.stage("overfit")["metrics"]["train_loss"].as_f64().unwrap());
    assert_eq!(b, second.stage("overfit")["metrics"]["train_loss"].as_f64().unwrap());
    assert_eq!(loss["delta"].as_f64().unwrap(), b - a);
    assert!(b > a, "fewer steps, higher training loss");

    let checkpoints = diff["checkpoints"].as_array().unwrap();
    assert_eq!(checkpoints.len(), 1, "only the overfit checkpoint differs: {checkpoints:?}");
    assert_eq!(checkpoints[0]["artifact"], "checkpoint.safetensors");
    assert_eq!(checkpoints[0]["hash_a"], checkpoint_hash(&first).as_str());
    let tensors = checkpoints[0]["tensors"].as_array().unwrap();
    let names: Vec<&str> = tensors.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "fc3.bias", "fc3.weight"]);
    for tensor in tensors {
        assert_eq!(tensor["shape_a"], tensor["shape_b"]);
        assert!(tensor["norm_a"].as_f64().unwrap() > 0.0, "{tensor}");
        assert!(tensor["rel_l2"].as_f64().unwrap() > 0.0, "{tensor}");
        assert!(tensor["max_abs"].as_f64().unwrap() > 0.0, "{tensor}");
    }
    assert_eq!(tensors[1]["shape_a"], serde_json::json!([128, 64]));

    // The curve overlay is a stored artifact and well-formed SVG with both sides' curves.
    let curves = &diff["curves"][0];
    assert_eq!(curves["stage"], "overfit");
    let path = curves["path"].as_str().unwrap();
    let svg = std::fs::read(path).unwrap();
    assert_eq!(blake3::hash(&svg).to_hex().as_str(), curves["hash"].as_str().unwrap());
    assert_eq!(std::fs::read(object_path(&dir, curves["hash"].as_str().unwrap())).unwrap(), svg);
    let script = "import sys, xml.etree.ElementTree as ET\n\
        root = ET.parse(sys.argv[1]).getroot()\n\
        ns = '{http://www.w3.org/2000/svg}'\n\
        assert root.tag == ns + 'svg', root.tag\n\
        print(sorted(set((p.get('data-side'), p.get('data-series')) for p in root.iter(ns + 'polyline'))))";
    let output = std::process::Command::new("python3").args(["-c", script, path]).output().expect("python3 runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let series = String::from_utf8_lossy(&output.stdout);
    for side in ["A @prev", "B @latest"] {
        for name in ["train_loss", "val_loss", "train_acc", "val_acc"] {
            assert!(series.contains(&format!("('{side}', '{name}')")), "{side} {name}: {series}");
        }
    }

    // Run ids name the same runs.
    let by_id = report(&dir.run(&["diff", "@1", "2", "--json"]));
    assert_eq!(by_id["stages"], diff["stages"]);
    assert_eq!(by_id["metrics"], diff["metrics"]);
    let human = dir.run(&["diff", "@prev", "@latest"]);
    assert!(human.stdout.contains("fc2.weight") && human.stdout.contains("train.steps 600 -> 400"), "{}", human.stdout);
    let missing = dir.run(&["diff", "@7"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("no run @7: recorded runs: 1..2"), "{}", missing.stderr);
}

#[test]
fn verify_passes_then_names_the_corrupted_artifact_and_replaces_nothing() {
    let dir = digits();
    let build = dir.build(&[]);
    let verify = dir.run(&["verify", "--json"]);
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    let lines = verify.lines();
    let done = lines.last().unwrap();
    let stages = build.lines().iter().filter(|l| l["event"] == "stage").count();
    let artifacts = build.hashes().len();
    assert_eq!(
        (&done["stages"], &done["artifacts"], &done["mismatched"]),
        (&stages.into(), &artifacts.into(), &0.into())
    );
    assert!(lines[..stages].iter().all(|l| l["reproducible"] == true), "{}", verify.stdout);
    assert!(!dir.path().join(".pipe/tmp").read_dir().unwrap().any(|e| e.is_ok()), "scratch removed");

    let object = object_path(&dir, &checkpoint_hash(&build));
    let corrupted = flip_middle_byte(&object);
    let verify = dir.run(&["verify"]);
    assert_eq!(verify.code, 1, "{}\n{}", verify.stdout, verify.stderr);
    let mismatches: Vec<&str> = verify.stdout.lines().filter(|l| l.contains("MISMATCH")).collect();
    assert_eq!(mismatches.len(), 1, "{}", verify.stdout);
    assert!(mismatches[0].contains("overfit/checkpoint.safetensors"), "{}", mismatches[0]);
    assert!(verify.stdout.contains("the cached object is corrupt"), "{}", verify.stdout);
    let difference = verify.stdout.lines().find(|l| l.contains("first difference:")).unwrap();
    assert!(
        difference.contains("tensor `fc") && difference.contains("cached") && difference.contains("rerun"),
        "{difference}"
    );
    assert_eq!(std::fs::read(&object).unwrap(), corrupted, "verify replaces nothing in the cache");

    let json = dir.run(&["verify", "overfit", "--json"]);
    let overfit = json.lines().into_iter().find(|l| l["stage"] == "overfit").unwrap();
    let checkpoint = &overfit["artifacts"]["checkpoint.safetensors"];
    assert_eq!(checkpoint["status"], "mismatch");
    assert_eq!(checkpoint["difference"]["kind"], "tensor");
    assert_eq!(checkpoint["rerun"], checkpoint_hash(&build).as_str(), "the re-execution reproduces the manifest");
    let rerun = std::fs::read(checkpoint["path"].as_str().unwrap()).unwrap();
    assert_eq!(
        blake3::hash(&rerun).to_hex().as_str(),
        checkpoint_hash(&build),
        "re-executed bytes kept for inspection"
    );

    let unbuilt = dir.run(&["verify", "--set", "train.steps=300"]);
    assert_eq!(unbuilt.code, 1);
    assert!(unbuilt.stderr.contains("not built for this config: overfit"), "{}", unbuilt.stderr);
}

#[test]
fn fsck_finds_a_flipped_byte_and_the_next_build_reruns_its_stage() {
    let dir = digits();
    let first = dir.build(&[]);
    let clean = dir.run(&["fsck"]);
    assert_eq!(clean.code, 0, "{}", clean.stdout);
    assert!(clean.stdout.contains("all intact"), "{}", clean.stdout);

    let hash = checkpoint_hash(&first);
    flip_middle_byte(&object_path(&dir, &hash));
    let fsck = dir.run(&["fsck"]);
    assert_eq!(fsck.code, 1, "{}", fsck.stdout);
    assert!(
        fsck.stdout.contains(&format!("corrupt object {} (overfit/checkpoint.safetensors)", &hash[..12])),
        "{}",
        fsck.stdout
    );
    assert!(fsck.stdout.contains("bad action entry of stage `overfit`"), "{}", fsck.stdout);
    assert!(!object_path(&dir, &hash).exists(), "moved aside");
    let quarantined = std::fs::read_dir(dir.path().join(".pipe/quarantine")).unwrap().count();
    assert_eq!(quarantined, 2, "the object and the entry that named it");
    assert_eq!(dir.run(&["fsck"]).code, 0, "a second pass finds nothing");

    let second = dir.build(&[]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.done()["ran"], 1);
    assert_eq!(second.stage("overfit")["status"], "ran");
    assert_eq!(first.hashes(), second.hashes());
}

#[test]
fn gc_frees_unreferenced_objects_and_a_kept_run_rebuilds_nothing() {
    let dir = digits();
    let old = dir.build(&[]);
    let kept = dir.build(&["--set", "train.lr=1e-3"]);
    let (old_checkpoint, kept_checkpoint) = (checkpoint_hash(&old), checkpoint_hash(&kept));
    let dataset = old.stage("data")["artifacts"]["dataset.safetensors"]["hash"].as_str().unwrap().to_string();

    // Keeping every run, nothing a run references goes.
    let all = report(&dir.run(&["gc", "--json"]));
    assert_eq!(all["objects"], serde_json::json!([]));

    let dry = dir.run(&["gc", "--keep-runs", "1", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry.stdout.contains(&format!("would free  object {}", &old_checkpoint[..12])), "{}", dry.stdout);
    assert!(object_path(&dir, &old_checkpoint).exists(), "a dry run removes nothing");

    let gc = report(&dir.run(&["gc", "--keep-runs", "1", "--json"]));
    assert_eq!(gc["removed_runs"], serde_json::json!([1]));
    let freed: Vec<&str> = gc["objects"].as_array().unwrap().iter().map(|o| o["hash"].as_str().unwrap()).collect();
    assert!(freed.contains(&old_checkpoint.as_str()), "{freed:?}");
    assert!(!freed.contains(&kept_checkpoint.as_str()) && !freed.contains(&dataset.as_str()), "{freed:?}");
    assert_eq!(
        gc["actions"].as_array().unwrap().len(),
        5,
        "the old zero_input_baseline, overfit_batch, overfit, beats_baselines, evaluate"
    );
    assert!(gc["freed_bytes"].as_u64().unwrap() > 100_000);
    assert!(!object_path(&dir, &old_checkpoint).exists());
    assert!(object_path(&dir, &kept_checkpoint).exists() && object_path(&dir, &dataset).exists());
    let runs = dir.run(&["runs", "--json"]);
    assert_eq!(runs.lines().iter().map(|l| l["id"].as_u64().unwrap()).collect::<Vec<_>>(), [2]);

    let again = dir.build(&["--set", "train.lr=1e-3"]);
    assert_eq!((again.done()["ran"].as_u64(), again.done()["cached"].as_u64()), (Some(0), Some(12)));
    let rebuilt = dir.build(&[]);
    assert_eq!(rebuilt.done()["ran"], 5, "the collected config re-runs what it does not share");
    assert_eq!(rebuilt.hashes(), old.hashes());
}
