//! Leave it training: raising `train.steps`, or building again after kill -9, continues
//! from a saved state and writes the bytes of a run from scratch.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Run, TestDir};

/// Evaluations every 7 steps, so saved states fall between evaluations; short runs
/// pass the overfit checks (the build exits 0).
const RESUME: &str = r#"
[train]
eval_every = 7

[checks.overfit]
min_drop = 0.0
min_train_acc = 0.0
"#;

/// `PIPE_CHECKPOINT_EVERY`: a state every 25 steps (and at the last step).
const EVERY: (&str, &str) = ("PIPE_CHECKPOINT_EVERY", "25");

/// Artifact hashes of the one `overfit[...]` instance of a build.
fn overfit_hashes(run: &Run) -> Vec<(String, String)> {
    let hashes: Vec<(String, String)> = run
        .hashes()
        .into_iter()
        .filter(|(name, _)| name.starts_with("overfit["))
        .map(|(name, hash)| (name.split_once("]/").map_or(name.clone(), |(_, file)| file.to_string()), hash))
        .collect();
    assert!(hashes.iter().any(|(name, _)| name == "checkpoint.safetensors"), "{}\n{}", run.stdout, run.stderr);
    hashes
}

fn build(dir: &TestDir, instance: &str, env: &[(&str, &str)]) -> Run {
    let run = dir.run_with_env(&["-v", "build", "--json", instance], env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    run
}

/// 60 steps straight, and 40 then raised to 60: the same bytes for every artifact
/// (checkpoint, curves, layer health, dynamics, the lr series), and `pipe status`
/// says where the longer run starts.
fn raising_steps_matches_a_straight_run(extra: &str, short: &str, long: &str, from: u32) {
    let straight = TestDir::with_pipeline(&format!("{RESUME}{extra}"));
    let expected = overfit_hashes(&build(&straight, long, &[EVERY]));
    let resumed = TestDir::with_pipeline(&format!("{RESUME}{extra}"));
    build(&resumed, short, &[EVERY]);
    let status = resumed.run(&["status", long]);
    assert!(status.stdout.contains(&format!("resumes from step {from}")), "{}", status.stdout);
    let run = build(&resumed, long, &[EVERY]);
    assert!(run.stderr.contains(&format!("resuming from step {from} of")), "{}", run.stderr);
    assert_eq!(overfit_hashes(&run), expected);
}

#[test]
fn raising_train_steps_resumes_the_mlp_bitwise() {
    raising_steps_matches_a_straight_run("", "overfit[train.steps=40]", "overfit[train.steps=60]", 40);
}

#[test]
fn raising_train_steps_resumes_a_convnet_with_momentum_bitwise() {
    let convnet = "\n[model]\nkind = \"convnet\"\nchannels = [4, 8]\n";
    let short = "overfit[train.optimizer=\"sgd\",train.momentum=0.9,train.lr=0.01,train.steps=12]";
    let long = "overfit[train.optimizer=\"sgd\",train.momentum=0.9,train.lr=0.01,train.steps=18]";
    raising_steps_matches_a_straight_run(convnet, short, long, 12);
}

#[test]
fn raising_train_steps_resumes_a_resnet_with_batch_norm_bitwise() {
    let resnet = "\n[model]\nkind = \"resnet\"\nwidth = 4\n";
    let short = "overfit[train.optimizer=\"adamw\",train.weight_decay=0.1,train.steps=10]";
    let long = "overfit[train.optimizer=\"adamw\",train.weight_decay=0.1,train.steps=16]";
    raising_steps_matches_a_straight_run(resnet, short, long, 10);
}

#[test]
fn a_cosine_schedule_says_why_it_starts_over() {
    let dir = TestDir::with_pipeline(RESUME);
    build(&dir, "overfit[train.schedule=\"cosine\",train.steps=40]", &[EVERY]);
    let long = "overfit[train.schedule=\"cosine\",train.steps=60]";
    let status = dir.run(&["status", long]);
    assert!(status.stdout.contains("cannot resume from step 40"), "{}", status.stdout);
    let run = build(&dir, long, &[EVERY]);
    assert!(!run.stderr.contains("resuming from step"), "{}", run.stderr);
    assert!(run.stderr.contains("depend on train.steps"), "{}", run.stderr);
    let straight = TestDir::with_pipeline(RESUME);
    assert_eq!(overfit_hashes(&run), overfit_hashes(&build(&straight, long, &[("PIPE_CHECKPOINT_EVERY", "0")])));
}

/// Steps of the run killed with -9: long enough to be mid-training after its first
/// saved state (about 1 ms a step).
const KILLED_STEPS: &str = "overfit[train.steps=1500]";

/// `pipe build --json KILLED_STEPS` in the background, saving every `every` steps.
fn spawn_build(dir: &TestDir, every: &str, stdout: Stdio) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["-C", dir.path().to_str().unwrap(), "build", "--json", KILLED_STEPS])
        .env_remove("PIPE_CACHE_DIR")
        .env_remove("PIPE_LOG")
        .env(EVERY.0, every)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// After an interrupted build: the next one continues from a step part-way and
/// writes the bytes of an uninterrupted run in a fresh cache.
fn rebuild_resumes_and_matches_a_clean_run(dir: &TestDir) {
    let run = build(dir, KILLED_STEPS, &[EVERY]);
    let from = run.stderr.split("resuming from step ").nth(1).and_then(|rest| rest.split_whitespace().next());
    let from: u32 = from.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("did not resume:\n{}", run.stderr));
    assert!(from > 0 && from < 1500, "resumed from step {from}");
    let clean = TestDir::with_pipeline(RESUME);
    assert_eq!(overfit_hashes(&run), overfit_hashes(&build(&clean, KILLED_STEPS, &[("PIPE_CHECKPOINT_EVERY", "0")])));
}

#[test]
fn kill_9_mid_training_resumes_from_the_last_state_bitwise() {
    let dir = TestDir::with_pipeline(RESUME);
    let mut child = spawn_build(&dir, "100", Stdio::null());
    // Wait for the first saved state, then a little more (a step that depends on
    // timing, which is the point), and kill.
    let resume = dir.path().join(".pipe/resume");
    let started = Instant::now();
    let saved = || {
        std::fs::read_dir(&resume)
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().read_dir().is_ok_and(|mut e| e.next().is_some()))
    };
    while !saved() {
        assert!(started.elapsed() < Duration::from_secs(60), "no state saved within a minute");
        assert!(child.try_wait().unwrap().is_none(), "the build ended before it was killed; raise KILLED_STEPS");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(u64::from(started.elapsed().subsec_nanos() % 300)));
    assert!(child.try_wait().unwrap().is_none(), "the build ended before it was killed; raise KILLED_STEPS");
    child.kill().unwrap();
    child.wait().unwrap();
    rebuild_resumes_and_matches_a_clean_run(&dir);
}

#[test]
fn ctrl_c_saves_the_state_and_the_next_build_continues_from_it_bitwise() {
    use std::io::BufRead as _;
    let dir = TestDir::with_pipeline(RESUME);
    // No periodic states: whatever is saved, the interruption saved.
    let mut child = spawn_build(&dir, "1000000", Stdio::piped());
    let stdout = child.stdout.take().unwrap();
    for line in std::io::BufReader::new(stdout).lines() {
        if line.unwrap().contains("\"stage\":\"data\"") {
            break;
        }
    }
    // `overfit` is training now.
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the build ended before it was interrupted");
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    assert_eq!(child.wait().unwrap().code(), Some(130));
    rebuild_resumes_and_matches_a_clean_run(&dir);
}
