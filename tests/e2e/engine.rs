//! The engine as a user meets it: parallel jobs, the process runner, stage
//! instances, a skipped stage that never trains, and Ctrl-C.

use std::io::BufRead as _;

use crate::support::{stage_statuses, wait, TestDir};
use crate::{digits, OVERFIT_STAGES};

#[test]
fn jobs_and_runners_give_bitwise_identical_artifacts() {
    let builds: Vec<_> = [vec!["--jobs", "1"], vec!["--jobs", "2"], vec!["--jobs", "2", "--runner", "process"]]
        .into_iter()
        .map(|args| {
            let dir = digits();
            let run = dir.build(&args);
            assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
            assert_eq!(run.done()["ran"], OVERFIT_STAGES, "{args:?}");
            run.hashes()
        })
        .collect();
    assert_eq!(builds[0], builds[1], "--jobs 1 vs --jobs 2");
    assert_eq!(builds[0], builds[2], "local vs process runner");
}

#[test]
fn process_runner_reports_a_stage_error_and_bad_input() {
    let dir = TestDir::with_pipeline("[data]\nsource = \"csv:broken.csv\"\n");
    std::fs::write(dir.path().join("broken.csv"), "a,label\n1,0\nnot-a-number,1\n").unwrap();
    let run = dir.build(&["--runner", "process", "data"]);
    assert_eq!(run.code, 2, "a malformed data file is bad input: {}", run.stderr);
    assert_eq!(run.stage("data")["status"], "failed");
    assert!(run.stage("data")["error"].as_str().unwrap().contains("broken.csv"), "{}", run.stdout);
    let queued = std::fs::read_dir(dir.path().join(".pipe/queue")).map_or(0, |entries| entries.count());
    assert_eq!(queued, 0, "finished actions leave the queue");
}

#[test]
fn an_instance_builds_under_overrides_and_shares_upstream_stages() {
    let dir = digits();
    assert_eq!(dir.build(&[]).code, 0);
    let run = dir.build(&["overfit[train.lr=0.001]"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let statuses = stage_statuses(&run);
    assert_eq!(statuses.first().unwrap(), &("data".to_string(), "cached".to_string()));
    assert_eq!(statuses.last().unwrap(), &("overfit[train.lr=0.001]".to_string(), "ran".to_string()));
    assert_eq!(run.done()["ran"], 1, "only the instance trains: {statuses:?}");
    let checkpoint = dir.path().join(".pipe/out/overfit[train.lr=0.001]/checkpoint.safetensors");
    assert!(checkpoint.is_file(), "{}", checkpoint.display());
    // The same resolved knobs through --set are the same action: nothing trains.
    let same = dir.build(&["overfit", "--set", "train.lr=0.001"]);
    let overfit = same.stage("overfit");
    assert_eq!(overfit["status"], "cached", "{}", same.stdout);
    assert_eq!(overfit["key"], run.stage("overfit[train.lr=0.001]")["key"]);
    let show = dir.run(&["show", "overfit[train.lr=0.001]"]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    assert!(show.stdout.contains("checkpoint.safetensors"), "{}", show.stdout);
    let bad = dir.build(&["overfit[train.lrr=0.001]"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("train.lr"), "{}", bad.stderr);
}

#[test]
fn a_skipped_stage_is_never_trained_and_status_agrees_with_the_build() {
    let dir = digits();
    let run = dir.build(&["--set", "train.lr=4", "--jobs", "1"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let statuses = stage_statuses(&run);
    assert!(statuses.contains(&("overfit".to_string(), "skipped".to_string())), "{statuses:?}");
    let status = dir.run(&["status", "--json", "--set", "train.lr=4"]);
    for line in status.lines() {
        let name = line["stage"].as_str().unwrap();
        let built = statuses.iter().any(|(stage, s)| stage == name && (s == "ran" || s == "cached"));
        assert_eq!(line["status"] == "cached", built, "{name}: status {line} vs build {statuses:?}");
    }
}

#[test]
fn ctrl_c_abandons_training_releases_the_lock_and_exits_130() {
    let dir = TestDir::with_pipeline("[train]\nsteps = 200000\neval_every = 1000\n");
    let mut child = dir.spawn(&["build", "--json", "--jobs", "2"]);
    let stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    // Wait for `overfit_batch` and `inspect` (which runs beside the others with
    // --jobs 2 and may finish after them on a busy machine): then only `overfit` runs.
    let finished = |seen: &[String], stage: &str| seen.iter().any(|l| l.contains(&format!("\"stage\":\"{stage}\"")));
    for line in std::io::BufReader::new(stdout).lines() {
        seen.push(line.unwrap());
        if finished(&seen, "overfit_batch") && finished(&seen, "inspect") {
            break;
        }
    }
    // `overfit` (200,000 steps) is running now.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let run = wait(child);
    assert_eq!(run.code, 130, "{}", run.stderr);
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
    assert!(!seen.iter().any(|line| line.contains("\"stage\":\"overfit\"")), "{seen:?}");
    // The lock is free and nothing partial was cached: the next build (with a small
    // budget, too small to fit every training example, so the accuracy floor is
    // lowered; thresholds are in no key) runs only overfit and what depends on it.
    let next = dir.build(&["--set", "train.steps=400", "--set", "checks.overfit.min_train_acc=0.9"]);
    assert_eq!(next.code, 0, "{}", next.stderr);
    let ran: Vec<_> = stage_statuses(&next).into_iter().filter(|(_, s)| s == "ran").map(|(n, _)| n).collect();
    assert!(ran.contains(&"overfit".to_string()), "{ran:?}");
    assert!(!ran.contains(&"data".to_string()) && !ran.contains(&"inspect".to_string()), "{ran:?}");
    let queue = dir.path().join(".pipe/queue");
    assert_eq!(std::fs::read_dir(queue).map_or(0, |entries| entries.count()), 0);
}

#[test]
fn init_writes_a_pipeline_that_loads_and_refuses_to_overwrite() {
    let dir = TestDir::with_raw("");
    std::fs::remove_file(dir.path().join("pipe.toml")).unwrap();
    let run = dir.run(&["init", "--data", "builtin:digits"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = std::fs::read_to_string(dir.path().join("pipe.toml")).unwrap();
    assert!(text.contains("source = \"builtin:digits\"") && text.contains("# "), "{text}");
    assert_eq!(dir.run(&["status"]).code, 0, "the written file loads");
    let again = dir.run(&["init", "--data", "builtin:digits"]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    let missing = dir.run(&["init", "--data", "csv:missing.csv", "--force"]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(missing.stderr.contains("missing.csv"), "{}", missing.stderr);
}

#[test]
fn a_no_op_build_is_not_recorded_as_another_run() {
    let dir = digits();
    assert_eq!(dir.build(&[]).code, 0);
    assert_eq!(dir.build(&[]).done()["ran"], 0);
    let runs = dir.run(&["runs", "--json"]);
    assert_eq!(runs.lines().len(), 1, "{}", runs.stdout);
    assert_eq!(dir.build(&["--set", "train.steps=400"]).code, 0);
    assert_eq!(dir.run(&["runs", "--json"]).lines().len(), 2);
}

#[test]
fn without_a_terminal_long_stages_print_plain_progress_lines() {
    let dir = digits();
    let run = dir.run_with_env(&["build", "overfit_batch", "overfit"], &[("PIPE_PROGRESS_EVERY_SECS", "0")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line =
        run.stderr.lines().find(|l| l.starts_with("progress: overfit ")).unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(line.contains("steps/s") && line.contains("eta") && line.contains("train loss"), "{line}");
    assert!(!run.stderr.contains('\u{1b}'), "no colour codes off a terminal");
}
