//! End-to-end tests: the built `pipe` binary on a copy of `examples/digits` with
//! small budgets, asserting what a user sees (exit codes, JSON lines, files).

mod audit;
mod data;
mod engine;
mod hardening;
mod history;
mod regularize;
mod remote;
mod report;
mod resume;
mod skeleton;
mod slurm;
mod squeeze;
mod support;
mod tune;
mod zoo;

use support::{stage_statuses, TestDir};

/// Small budgets so each cold build takes about a second in release mode.
const SMALL: &str = r#"
[train]
steps = 600
eval_every = 200

[checks.zero_input_baseline]
steps = 100

[checks.overfit_batch]
max_steps = 1000

[checks.overfit]
min_train_acc = 0.9
"#;

/// Stages of the `overfit` target.
const OVERFIT_STAGES: i64 = 12;

fn digits() -> TestDir {
    TestDir::with_pipeline(SMALL)
}

#[test]
fn second_build_runs_nothing() {
    let dir = digits();
    let first = dir.build(&[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.done()["ran"], OVERFIT_STAGES);
    let second = dir.build(&[]);
    assert_eq!(second.code, 0);
    assert_eq!(second.done()["ran"], 0);
    assert_eq!(second.done()["cached"], OVERFIT_STAGES);
    assert_eq!(first.hashes(), second.hashes());
}

#[test]
fn changing_lr_reruns_only_dependent_stages() {
    let dir = digits();
    dir.build(&[]);
    let run = dir.build(&["--set", "train.lr=1e-3"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        stage_statuses(&run),
        [
            ("data".to_string(), "cached".to_string()),
            ("inspect".into(), "cached".into()),
            ("batch_preview".into(), "cached".into()),
            ("human_baseline".into(), "cached".into()),
            ("dumb_baselines".into(), "cached".into()),
            ("grad_deps".into(), "cached".into()),
            ("loss_at_init".into(), "cached".into()),
            ("zero_input_baseline".into(), "ran".into()),
            ("overfit_batch".into(), "ran".into()),
            ("overfit".into(), "ran".into()),
            ("beats_baselines".into(), "ran".into()),
            ("evaluate".into(), "ran".into()),
        ]
    );
    // Same value written differently: same keys, nothing runs.
    let again = dir.build(&["--set", "train.lr=0.001"]);
    assert_eq!(again.done()["ran"], 0);
}

#[test]
fn threshold_change_retrains_nothing_and_failing_verdict_exits_1() {
    let dir = digits();
    let first = dir.build(&[]);
    let strict = ["--set", "checks.overfit.min_train_acc=1.0", "--set", "checks.loss_at_init.tolerance=0"];
    let run = dir.build(&[&["--keep-going"], &strict[..]].concat());
    assert_eq!(run.code, 1, "a failed verdict exits 1: {}", run.stderr);
    assert_eq!(run.done()["ran"], 0, "thresholds are not training knobs");
    assert_eq!(first.hashes(), run.hashes());
    assert!(run.stderr.contains("error[loss_at_init]"), "{}", run.stderr);
    assert!(run.stderr.contains("help:"), "{}", run.stderr);
    let verdict = &run.stage("loss_at_init")["verdicts"][0];
    assert_eq!(verdict["status"], "fail");
    assert_eq!(verdict["expected"], run.stage("loss_at_init")["metrics"]["entropy"]);
    assert_eq!(verdict["value"], run.stage("loss_at_init")["metrics"]["loss"]);
    // Without --keep-going the build stops at the first failure.
    let stopped = dir.build(&strict);
    assert_eq!(stopped.code, 1);
    assert_eq!(stopped.stage("overfit")["status"], "skipped");
    // The failure is cached: re-showing it runs nothing.
    assert_eq!(stopped.done()["ran"], 0);
}

#[test]
fn wiping_the_cache_reproduces_identical_bytes() {
    let dir = digits();
    let first = dir.build(&[]);
    std::fs::remove_dir_all(dir.path().join(".pipe")).unwrap();
    let second = dir.build(&[]);
    assert_eq!(second.done()["ran"], OVERFIT_STAGES);
    assert_eq!(first.hashes(), second.hashes());
}

#[test]
fn thread_count_does_not_change_results() {
    let dir = digits();
    let one = dir.run_with_env(&["build", "--json", "--threads", "1", "--cache-dir", "cache-1"], &[]);
    let two = dir.run_with_env(&["build", "--json", "--cache-dir", "cache-2"], &[("PIPE_THREADS", "2")]);
    assert_eq!(one.code, 0, "{}", one.stderr);
    assert_eq!(two.done()["ran"], OVERFIT_STAGES);
    assert_eq!(one.hashes(), two.hashes());
}

#[test]
fn misspelt_key_exits_2_with_line_and_suggestion() {
    let dir = TestDir::with_raw("[train]\nsteps = 10\nlrr = 0.1\n");
    let run = dir.build(&[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("pipe.toml:3:7: unknown key train.lrr, did you mean train.lr?"), "{}", run.stderr);

    let dir = TestDir::with_raw("[model]\nkind = 3\n");
    let run = dir.build(&[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("pipe.toml:2:8: `model.kind` expects one of \"mlp\", \"linear\", \"convnet\", \"resnet\", \"auto\", found integer 3"),
        "{}",
        run.stderr
    );

    let run = digits().build(&["--set", "train.stpes=5"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("unknown key train.stpes, did you mean train.steps?"), "{}", run.stderr);

    let run = digits().build(&["--set", "data.split=[0.5, 0.5, 0.5]"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("data.split must be 3 fractions"), "{}", run.stderr);

    let run = digits().build(&["overfti"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("did you mean `overfit`"), "{}", run.stderr);
}

#[test]
fn cuda_without_the_feature_exits_2_naming_it() {
    if cfg!(feature = "cuda") {
        return;
    }
    let run = digits().build(&["--device", "cuda"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("`cuda` feature"), "{}", run.stderr);
}

#[test]
fn corrupt_object_is_detected_and_rebuilt() {
    let dir = digits();
    let first = dir.build(&[]);
    let hash = first.stage("overfit")["artifacts"]["checkpoint.safetensors"]["hash"].as_str().unwrap().to_string();
    let object = dir.path().join(".pipe/objects").join(&hash[..2]).join(&hash);
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let mut permissions = std::fs::metadata(&object).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&object, permissions).unwrap();
    std::fs::write(&object, &bytes).unwrap();

    let status = dir.run(&["status"]);
    assert!(status.stdout.contains("cached artifacts are missing or corrupt"), "{}", status.stdout);
    let second = dir.build(&[]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.stage("overfit")["status"], "ran");
    assert_eq!(second.done()["ran"], 1);
    assert_eq!(first.hashes(), second.hashes(), "rebuilt bytes are identical");
    let restored = std::fs::read(&object).unwrap();
    assert_eq!(blake3::hash(&restored).to_hex().as_str(), hash);
}

#[test]
fn json_protocol_paths_exist_and_done_is_last() {
    let dir = digits();
    let run = dir.build(&[]);
    let lines = run.lines();
    assert_eq!(lines.last().unwrap()["event"], "done");
    for line in &lines[..lines.len() - 1] {
        assert_eq!(line["event"], "stage");
        assert_eq!(line["key"].as_str().unwrap().len(), 64);
        for (name, artifact) in line["artifacts"].as_object().unwrap() {
            let path = std::path::Path::new(artifact["path"].as_str().unwrap());
            assert!(path.exists(), "{name}: {}", path.display());
            assert_eq!(std::fs::metadata(path).unwrap().len(), artifact["bytes"].as_u64().unwrap());
            assert!(path.ends_with(format!(".pipe/out/{}/{name}", line["stage"].as_str().unwrap())));
        }
    }
    let overfit = run.stage("overfit");
    for metric in ["train_loss", "train_acc", "val_loss", "val_acc"] {
        assert!(overfit["metrics"][metric].is_number(), "{metric}");
    }
    let init = run.stage("loss_at_init");
    let loss = init["metrics"]["loss"].as_f64().unwrap();
    assert!((loss - 10f64.ln()).abs() < 0.1, "loss at init {loss} is near ln 10");
    assert!(init["metrics"]["naive_loss"].as_f64().unwrap() > loss + 0.2);
}

#[test]
fn status_and_show_explain_the_cache() {
    let dir = digits();
    let status = dir.run(&["status"]);
    assert!(status.stdout.contains("never built"), "{}", status.stdout);
    dir.build(&[]);
    let status = dir.run(&["status", "--set", "train.lr=0.001"]);
    let line = status.stdout.lines().find(|l| l.contains("overfit ")).unwrap().to_string();
    assert!(line.contains("stale") && line.contains("knob `train.lr` 0.0003 -> 0.001"), "{line}");
    let line = status.stdout.lines().find(|l| l.contains("loss_at_init")).unwrap().to_string();
    assert!(line.contains("cached"), "{line}");

    let show = dir.run(&["show", "overfit"]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    assert!(show.stdout.contains("checkpoint.safetensors"), "{}", show.stdout);
    assert!(show.stdout.contains("min_train_acc"), "{}", show.stdout);
    let show = dir.run(&["show", "overfit", "--set", "train.lr=0.001"]);
    assert_eq!(show.code, 1);
    assert!(show.stderr.contains("not built for this config"), "{}", show.stderr);
}

#[test]
fn checkpoint_loads_in_python_safetensors() {
    let dir = digits();
    let run = dir.build(&[]);
    let path = run.stage("overfit")["artifacts"]["checkpoint.safetensors"]["path"].as_str().unwrap().to_string();
    let script = r#"
import sys
from safetensors.numpy import load_file
tensors = load_file(sys.argv[1])
for name in sorted(tensors):
    print(name, tuple(tensors[name].shape), tensors[name].dtype)
"#;
    let output = std::process::Command::new("python3").arg("-c").arg(script).arg(&path).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        stdout.trim(),
        "fc1.bias (128,) float32\nfc1.weight (128, 64) float32\nfc2.bias (128,) float32\n\
         fc2.weight (128, 128) float32\nfc3.bias (10,) float32\nfc3.weight (10, 128) float32"
    );
}

#[test]
fn two_processes_share_one_cache_safely() {
    let dir = digits();
    let children: Vec<_> = (0..2).map(|_| dir.spawn(&["build", "--json"])).collect();
    let runs: Vec<_> = children.into_iter().map(support::wait).collect();
    for run in &runs {
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let ran: i64 = runs.iter().map(|run| run.done()["ran"].as_i64().unwrap()).sum();
    assert_eq!(ran, OVERFIT_STAGES, "the second process waits for the lock and reuses the first one's work");
    assert_eq!(runs[0].hashes(), runs[1].hashes());
}

#[test]
fn example_lists_every_knob_at_its_default() {
    let text = std::fs::read_to_string(support::repo().join("examples/digits/pipe.toml")).unwrap();
    let schema = pipelines::knobs::schema();
    let config = workspace::Config::parse(&schema, &text, "examples/digits/pipe.toml").unwrap();
    assert_eq!(config.values, workspace::Config::defaults(&schema).values);
    assert_eq!(config.origins.len(), schema.len(), "every knob is written out in the example");
    // The Fashion-MNIST example is valid too (its data comes from a Debian package).
    let fashion = std::fs::read_to_string(support::repo().join("examples/fashion-mnist/pipe.toml")).unwrap();
    let fashion = workspace::Config::parse(&schema, &fashion, "examples/fashion-mnist/pipe.toml").unwrap();
    pipelines::validate(&fashion).unwrap();
    assert_eq!(fashion.get("data.source").and_then(|v| v.as_str()), Some("idx:/usr/share/datasets/fashion-mnist"));
    let readme = std::fs::read_to_string(support::repo().join("README.md")).unwrap();
    for spec in &schema {
        assert!(readme.contains(&format!("`{}`", spec.name)), "README documents {}", spec.name);
    }
}
