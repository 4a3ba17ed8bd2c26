//! [`SlurmRunner`] against stand-in `sbatch`, `squeue` and `scancel` scripts (the real
//! cluster is tests/e2e/slurm.rs): calls that arrive together are one array, each task's
//! outcome or failure reaches its own call, and a cancelled call `scancel`s the array.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cache::{Cache, KeyInputs};

use super::{ExecCommand, Runner, SlurmOptions, SlurmRunner};
use crate::action::{Action, ActionOutcome};
use crate::recipe::{Cancel, NoProgress, StageFailure, StageOutput};

fn action(stage: &str) -> Action {
    let inputs = KeyInputs {
        stage: stage.to_string(),
        stage_version: 1,
        tool_version: "test".to_string(),
        knobs: BTreeMap::new(),
        upstream: BTreeMap::new(),
        fingerprints: BTreeMap::new(),
        device: "cpu".to_string(),
        dtype: "f32".to_string(),
    };
    Action {
        name: stage.to_string(),
        inputs,
        knobs: BTreeMap::new(),
        upstream: BTreeMap::new(),
        members: Vec::new(),
        base_dir: PathBuf::from("."),
        device: "cpu".to_string(),
    }
}

/// Stand-ins recording their arguments under `dir`; `squeue` prints `dir/states`.
fn fake_slurm(dir: &Path) {
    let scripts = [
        ("sbatch", format!("echo \"$@\" >> '{0}/sbatch.calls'\necho 42\n", dir.display())),
        ("squeue", format!("cat '{0}/states' 2>/dev/null\n", dir.display())),
        ("scancel", format!("echo \"$@\" >> '{0}/scancel.calls'\n", dir.display())),
    ];
    for (name, body) in scripts {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&path).unwrap().permissions(), 0o755);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn calls_arriving_together_are_one_array_and_each_gets_its_tasks_outcome() {
    let root = std::env::temp_dir().join(format!("pipe-workspace-test-slurm-{}", std::process::id()));
    std::fs::remove_dir_all(&root).ok();
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    fake_slurm(&bin);
    let cache = Cache::open(root.join("cache")).unwrap();
    let options = SlurmOptions {
        gather: Duration::from_millis(50),
        poll: Duration::from_millis(20),
        bin_dir: Some(bin.clone()),
        ..SlurmOptions::default()
    };
    let command = ExecCommand { program: "/usr/bin/pipe".into(), args: vec!["--cache-dir".into(), "/c".into()] };
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let events: super::SlurmEvents = Arc::new(move |line: &str| sink.lock().unwrap().push(line.to_string()));
    let runner = Arc::new(SlurmRunner::new(command, cache, options, root.clone(), events));
    let cancels: Vec<Cancel> = (0..3).map(|_| Cancel::default()).collect();
    let calls: Vec<JoinHandle<ActionOutcome>> = ["a", "b", "c"]
        .into_iter()
        .zip(cancels.clone())
        .map(|(stage, cancel)| {
            let runner = runner.clone();
            std::thread::spawn(move || runner.run(&action(stage), &NoProgress, &cancel))
        })
        .collect();

    wait_for("sbatch", || bin.join("sbatch.calls").exists());
    std::thread::sleep(Duration::from_millis(200));
    let submitted = std::fs::read_to_string(bin.join("sbatch.calls")).unwrap();
    assert_eq!(submitted.lines().count(), 1, "one array: {submitted}");
    assert!(submitted.contains("--array=0-2"), "{submitted}");
    let script_path = submitted.split_whitespace().last().unwrap();
    let script = std::fs::read_to_string(script_path).unwrap();
    let output = submitted.split_whitespace().find_map(|arg| arg.strip_prefix("--output=")).unwrap();
    let logs = Path::new(output).parent().unwrap().to_path_buf();
    // Which task runs which call's action (the order calls arrived in).
    let task_of = |stage: &str| {
        let key = action(stage).key().to_hex();
        let line = script.lines().find(|line| line.contains(&key)).unwrap_or_else(|| panic!("{script}"));
        line.trim().split(')').next().unwrap().parse::<usize>().unwrap()
    };
    let (a, b, c) = (task_of("a"), task_of("b"), task_of("c"));

    // a completes with an outcome line; b fails without one; c keeps running.
    let outcome = ActionOutcome { key: action("a").key(), secs: 1.5, result: Ok(StageOutput::default()) };
    std::fs::write(logs.join(format!("{a}.log")), format!("warning\n{}\n", serde_json::to_string(&outcome).unwrap()))
        .unwrap();
    std::fs::write(logs.join(format!("{b}.log")), "boom: out of memory\n").unwrap();
    std::fs::write(bin.join("states"), format!("{a}|COMPLETED|None\n{b}|FAILED|NonZeroExitCode\n{c}|RUNNING|None\n"))
        .unwrap();
    let mut calls = calls.into_iter();
    let (call_a, call_b, call_c) = (calls.next().unwrap(), calls.next().unwrap(), calls.next().unwrap());
    assert_eq!(call_a.join().unwrap(), outcome);
    match call_b.join().unwrap().result {
        Err(StageFailure::Error(message)) => {
            assert!(message.contains(&format!("Slurm task 42_{b} FAILED (NonZeroExitCode)")), "{message}");
            assert!(message.contains(&format!("{b}.log")) && message.contains("boom: out of memory"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!bin.join("scancel.calls").exists(), "nothing cancelled yet");
    wait_for("c running", || lines.lock().unwrap().iter().any(|l| l == &format!("slurm: 42_{c} c RUNNING")));

    // Cancelling the last unfinished call cancels the whole array.
    cancels[2].cancel();
    assert_eq!(call_c.join().unwrap().result, Err(StageFailure::Cancelled));
    assert_eq!(std::fs::read_to_string(bin.join("scancel.calls")).unwrap(), "42\n");
    std::fs::write(bin.join("states"), format!("{c}|CANCELLED|None\n")).unwrap();
    // The monitor sees the array end; a failed task keeps its log.
    std::thread::sleep(Duration::from_millis(200));
    assert!(logs.join(format!("{b}.log")).exists());
    let lines = lines.lock().unwrap().clone();
    assert!(lines.iter().any(|l| l.starts_with("slurm: submitted job array 42 (3 tasks: ")), "{lines:?}");
    assert!(lines.contains(&format!("slurm: 42_{a} a COMPLETED")), "{lines:?}");
    assert!(lines.contains(&"slurm: cancelled job array 42".to_string()), "{lines:?}");
    std::fs::remove_dir_all(&root).ok();
}
