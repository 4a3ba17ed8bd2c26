//! `pipe build tune`: trials are cached `overfit` instances, so a larger tune, an
//! interrupted one or another project sharing the cache trains only what is new.

use std::io::{BufRead, BufReader};

use serde_json::Value;

use crate::support::{Run, TestDir};

/// Tiny budgets: each trial trains a small MLP for 40 steps. Thresholds that a short
/// training cannot meet are lowered so that the build reaches `tune`.
pub const TUNE: &str = r#"
[model]
kind = "mlp"
hidden = [32]

[train]
steps = 40
eval_every = 20

[checks.zero_input_baseline]
steps = 20
margin = 0.0

[checks.overfit_batch]
max_steps = 300
target_loss = 1.0

[checks.overfit]
min_train_acc = 0.0
min_drop = 0.0

[tune]
trials = 3
seed = 0
space = ["train.lr = log(1e-3, 3e-2)", "model.hidden = int(8, 48)"]
steps = 0
halving = 0
min_steps = 20
"#;

pub(crate) fn tune_dir(extra: &str) -> TestDir {
    let text = TUNE.to_string() + extra;
    TestDir::with_pipeline(&text)
}

/// Stage lines of `overfit` instances with overrides (the trials; the untuned
/// config is the plain `overfit`), by name.
pub(crate) fn trials(run: &Run) -> Vec<(String, String)> {
    let mut lines: Vec<(String, String)> = run
        .lines()
        .iter()
        .filter(|l| l["event"] == "stage" && l["stage"].as_str().is_some_and(|s| s.starts_with("overfit[")))
        .map(|l| (l["stage"].as_str().unwrap().to_string(), l["status"].as_str().unwrap().to_string()))
        .collect();
    lines.sort();
    lines
}

pub(crate) fn statuses<'a>(trials: &'a [(String, String)], status: &str) -> Vec<&'a str> {
    trials.iter().filter(|(_, s)| s == status).map(|(name, _)| name.as_str()).collect()
}

fn tune_json(dir: &TestDir) -> Value {
    let text = std::fs::read_to_string(dir.path().join(".pipe/out/tune/trials.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn raising_the_trial_count_runs_only_the_new_trials() {
    let dir = tune_dir("");
    let first = dir.build(&["tune"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let before = trials(&first);
    assert_eq!(statuses(&before, "ran").len(), 3, "{before:?}");
    let tune = first.stage("tune");
    assert!(tune["artifacts"]["checkpoint.safetensors"]["hash"].is_string());
    let best = tune_json(&dir)["best"]["trial"].as_u64().unwrap() as usize;
    // The copied checkpoint is the best trial's, byte for byte.
    let rows = tune_json(&dir)["trials"].as_array().unwrap().clone();
    let best_acc = rows[best]["metrics"]["val_acc"].as_f64().unwrap();
    assert_eq!(tune["metrics"]["val_acc"].as_f64().unwrap(), best_acc);
    assert!(rows.iter().all(|r| r["metrics"]["val_acc"].as_f64().unwrap() <= best_acc));
    let best_name = &before.iter().find(|(name, _)| name.contains(&best_lr(&rows[best]))).unwrap().0;
    assert_eq!(
        tune["artifacts"]["checkpoint.safetensors"]["hash"],
        first.stage(best_name)["artifacts"]["checkpoint.safetensors"]["hash"]
    );
    for name in ["trials.csv", "best.toml", "scatter.svg", "importance.svg"] {
        assert!(tune["artifacts"][name]["bytes"].as_u64().unwrap() > 0, "{name}");
    }

    let more = dir.build(&["tune", "--set", "tune.trials=5"]);
    assert_eq!(more.code, 0, "{}", more.stderr);
    let after = trials(&more);
    assert_eq!(statuses(&after, "ran").len(), 2, "{after:?}");
    for (name, _) in &before {
        assert!(statuses(&after, "cached").contains(&name.as_str()), "{name} is reused: {after:?}");
    }
    assert_eq!(more.stage("tune")["status"], "ran");
    assert_eq!(tune_json(&dir)["trials"].as_array().unwrap().len(), 5);
}

/// The `train.lr=...` text of a trials.json row, as it appears in an instance name.
fn best_lr(row: &Value) -> String {
    let lr = row["knobs"]["train.lr"].as_f64().unwrap();
    format!("train.lr={},", workspace::knob::format_float(lr))
}

#[test]
fn the_same_trial_in_two_projects_sharing_a_cache_trains_once() {
    let cache = std::env::temp_dir().join(format!("pipe-e2e-shared-cache-{}", std::process::id()));
    std::fs::remove_dir_all(&cache).ok();
    let cache_arg = cache.to_str().unwrap();
    let one = tune_dir("");
    let first = one.build(&["tune", "--cache-dir", cache_arg]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(statuses(&trials(&first), "ran").len(), 3);
    // Another project: the space written in another order and a stricter threshold.
    // Its trials resolve to the same knobs, so they are the same actions.
    let other = TUNE.replace(
        r#"space = ["train.lr = log(1e-3, 3e-2)", "model.hidden = int(8, 48)"]"#,
        r#"space = ["model.hidden = int(8, 48)", "train.lr = log(1e-3, 3e-2)"]"#,
    );
    assert_ne!(other, TUNE);
    let two = TestDir::with_pipeline(&(other + "\n[checks.tune]\nedge = 0.1\n"));
    let second = two.build(&["tune", "--cache-dir", cache_arg]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let reused = trials(&second);
    assert_eq!(statuses(&reused, "ran"), Vec::<&str>::new(), "{reused:?}");
    assert_eq!(statuses(&reused, "cached").len(), 3);
    assert_eq!(second.stage("overfit")["status"], "cached");
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn results_are_identical_for_one_and_two_jobs() {
    let dir = tune_dir("");
    let one = dir.build(&["tune", "--jobs", "1", "--cache-dir", "cache-1"]);
    let two = dir.build(&["tune", "--jobs", "2", "--cache-dir", "cache-2"]);
    assert_eq!(one.code, 0, "{}", one.stderr);
    assert_eq!(two.code, 0, "{}", two.stderr);
    assert_eq!(statuses(&trials(&two), "ran").len(), 3);
    assert_eq!(one.hashes(), two.hashes());
}

#[test]
fn halving_promotes_the_best_of_each_rung_deterministically() {
    let dir = tune_dir("");
    let run = dir.build(&["tune", "--set", "tune.trials=4", "--set", "tune.halving=2", "--set", "tune.min_steps=20"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json = tune_json(&dir);
    assert_eq!(json["rungs"], serde_json::json!([20, 40]));
    let rows = json["trials"].as_array().unwrap();
    let rung = |r: u64| rows.iter().filter(|row| row["rung"] == r).collect::<Vec<_>>();
    assert_eq!((rung(0).len(), rung(1).len()), (4, 2));
    // The promoted trials are the best two of rung 0: accuracy, then loss, then index.
    let mut order: Vec<&Value> = rung(0);
    let key =
        |row: &Value| (-row["metrics"]["val_acc"].as_f64().unwrap(), row["metrics"]["val_loss"].as_f64().unwrap());
    order.sort_by(|a, b| key(a).partial_cmp(&key(b)).unwrap().then(a["trial"].as_u64().cmp(&b["trial"].as_u64())));
    let mut promoted: Vec<u64> = order[..2].iter().map(|row| row["trial"].as_u64().unwrap()).collect();
    promoted.sort_unstable();
    let trained: Vec<u64> = rung(1).iter().map(|row| row["trial"].as_u64().unwrap()).collect();
    assert_eq!(trained, promoted);
    assert!(rung(1).iter().all(|row| row["steps"] == 40));
    // 4 trials at 20 steps and 2 at 40; the untuned config is the plain overfit.
    assert_eq!(statuses(&trials(&run), "ran").len(), 6, "{:?}", trials(&run));
    let again = dir.build(&["tune", "--set", "tune.trials=4", "--set", "tune.halving=2", "--set", "tune.min_steps=20"]);
    assert_eq!(again.done()["ran"], 0);
    assert_eq!(again.stage("tune")["status"], "cached", "all members cached: the tune is found cached too");
}

#[test]
fn a_bad_space_entry_exits_2_naming_it() {
    let dir = tune_dir("");
    let run = dir.build(&["tune", "--set", r#"tune.space=["train.lr = log(1e-4, 1e-2)", "model.hiden = int(8, 48)"]"#]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("tune.space[1]"), "{}", run.stderr);
    assert!(run.stderr.contains("did you mean `model.hidden`"), "{}", run.stderr);
    let run = dir.build(&["tune", "--set", r#"tune.space=["train.lr = uniform(0, 1000)"]"#]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("tune.space[0]") && run.stderr.contains("leaves its range"), "{}", run.stderr);
}

#[test]
fn kill_9_mid_tune_loses_only_the_running_trials() {
    // Longer trials, one at a time, so the kill lands while one is training.
    let dir = tune_dir("");
    let args = ["build", "tune", "--json", "--jobs", "1", "--set", "tune.trials=6", "--set", "train.steps=400"];
    let mut child = dir.spawn(&args);
    let stdout = child.stdout.take().unwrap();
    let mut finished = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let stage = line["stage"].as_str().unwrap_or_default();
        if stage.starts_with("overfit[") && line["status"] == "ran" {
            finished.push(stage.to_string());
            if finished.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(finished.len(), 2, "two trials finished before the kill");
    // SIGKILL: no handler runs, whatever was in flight is lost.
    child.kill().unwrap();
    let killed = child.wait().unwrap();
    assert!(!killed.success());
    let rerun = dir.run(&args);
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    let after = trials(&rerun);
    for name in &finished {
        assert!(statuses(&after, "cached").contains(&name.as_str()), "{name} survived the kill: {after:?}");
    }
    assert!(statuses(&after, "ran").len() <= 4, "{after:?}");
}

#[test]
fn a_trial_failing_its_own_checks_does_not_stop_the_tune() {
    // The untuned config passes min_train_acc; a trial at a tiny rate cannot.
    let dir = tune_dir("");
    let run = dir.build(&[
        "tune",
        "--set",
        "train.lr=1e-2",
        "--set",
        "checks.overfit.min_train_acc=0.5",
        "--set",
        r#"tune.space=["train.lr = choice(1e-2, 1e-6)"]"#,
    ]);
    let failed: Vec<String> = run
        .lines()
        .iter()
        .filter(|l| l["stage"].as_str().is_some_and(|s| s.starts_with("overfit[")))
        .filter(|l| l["verdicts"].as_array().unwrap().iter().any(|v| v["status"] == "fail"))
        .map(|l| l["stage"].as_str().unwrap().to_string())
        .collect();
    assert!(!failed.is_empty() && failed.iter().all(|name| name.contains("train.lr=1e-6")), "{failed:?}");
    assert_eq!(run.stage("overfit")["status"], "ran");
    assert_eq!(run.stage("tune")["status"], "ran", "{}", run.stderr);
    assert_eq!(run.stage("tune")["metrics"]["val_acc"], run.stage("overfit")["metrics"]["val_acc"]);
    // A trial is the tune's to judge: its failed check is a warning, not the build's failure.
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("warning[min_train_acc]") && !run.stderr.contains("error["), "{}", run.stderr);
    // The same instance built as a target fails the build.
    let trial = &failed[0];
    let direct = dir.build(&[trial.as_str(), "--set", "train.lr=1e-2", "--set", "checks.overfit.min_train_acc=0.5"]);
    assert_eq!(direct.stage(trial)["status"], "cached", "{}", direct.stderr);
    assert_eq!(direct.code, 1, "{}", direct.stderr);
    assert!(direct.stderr.contains("error[min_train_acc]"), "{}", direct.stderr);
}

#[test]
fn each_running_trial_has_its_own_progress_line() {
    let dir = tune_dir("");
    let run = dir.run_with_env(&["build", "tune", "--jobs", "2"], &[("PIPE_PROGRESS_EVERY_SECS", "0")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut labels: Vec<&str> = run
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("progress: overfit["))
        .filter_map(|rest| rest.split_once("] ").map(|(inside, _)| inside))
        .collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), 3, "one label per trial: {labels:?}\n{}", run.stderr);
    assert!(labels.iter().all(|l| l.contains("train.lr=") && l.ends_with("train.steps=40")), "{labels:?}");
}

/// `pipe diff` compares two trials artifact by artifact, named by index
/// (`tune/trial-N`) or by instance name, reading the cache only.
#[test]
fn diff_compares_two_trials() {
    let dir = tune_dir("");
    let built = dir.build(&["tune"]);
    assert_eq!(built.code, 0, "{}", built.stderr);
    let rows = tune_json(&dir)["trials"].as_array().unwrap().clone();
    let diff = dir.run(&["diff", "--json", "tune/trial-0", "tune/trial-2"]);
    assert_eq!(diff.code, 0, "{}\n{}", diff.stdout, diff.stderr);
    let report: Value = serde_json::from_str(diff.stdout.lines().last().unwrap()).unwrap();
    // Only the trial's stage and its upstream, keyed apart by the trial's knobs.
    let stages: Vec<(&str, &str)> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(stages, [("data", "same"), ("overfit", "different")], "{report}");
    let knobs: Vec<&str> = report["knobs"].as_array().unwrap().iter().map(|k| k["knob"].as_str().unwrap()).collect();
    assert!(knobs.contains(&"train.lr"), "{knobs:?}");
    // The metrics are the trials' own (as trials.json has them).
    let val_acc = report["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["stage"] == "overfit" && m["metric"] == "val_acc")
        .unwrap()
        .clone();
    assert_eq!(val_acc["a"].as_f64(), rows[0]["metrics"]["val_acc"].as_f64());
    assert_eq!(val_acc["b"].as_f64(), rows[2]["metrics"]["val_acc"].as_f64());
    let checkpoint = &report["checkpoints"][0];
    assert_eq!(checkpoint["artifact"], "checkpoint.safetensors", "{report}");
    assert_ne!(checkpoint["hash_a"], checkpoint["hash_b"]);

    // By instance name (as the build prints it): the same trial as tune/trial-0.
    let label = report["a"]["label"].as_str().unwrap();
    let name = label.strip_prefix("tune/trial-0 = ").unwrap();
    assert!(trials(&built).iter().any(|(trial, _)| trial == name), "{name}");
    let same = dir.run(&["diff", "--json", name, "tune/trial-0"]);
    assert_eq!(same.code, 0, "{}", same.stderr);
    let report: Value = serde_json::from_str(same.stdout.lines().last().unwrap()).unwrap();
    assert!(report["stages"].as_array().unwrap().iter().all(|s| s["status"] == "same"), "{report}");
    assert_eq!(report["knobs"].as_array().unwrap().len(), 0, "{report}");
}
