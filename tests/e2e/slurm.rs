//! `--runner slurm` (issue 12, item 2) against a real one-node Slurm cluster on this
//! machine: Debian's slurmctld, slurmd and munge, started by `scripts/slurm-up`
//! (which `scripts/test` and CI run). Skipped, saying why, only where `sbatch` is not
//! installed.

use std::io::{BufRead as _, BufReader};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::{repo, stage_statuses, wait, TestDir};
use crate::tune::{statuses, trials, tune_dir};

/// Whether the cluster is up (starting it once per test run); false, with a loud
/// line, when Slurm is not installed.
fn slurm() -> bool {
    static UP: OnceLock<bool> = OnceLock::new();
    *UP.get_or_init(|| {
        let installed = Command::new("sbatch").arg("--version").output().is_ok_and(|out| out.status.success());
        if !installed {
            eprintln!("SKIPPED: the Slurm tests need `sbatch` (Debian's slurm-wlm; scripts/test installs it)");
            return false;
        }
        let up = Command::new(repo().join("scripts/slurm-up")).output().expect("scripts/slurm-up runs");
        assert!(up.status.success(), "scripts/slurm-up failed:\n{}", String::from_utf8_lossy(&up.stderr));
        true
    })
}

/// The job id in a `slurm: submitted job array N (...)` line.
fn job_id(line: &str) -> Option<String> {
    let rest = line.strip_prefix("slurm: submitted job array ")?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// The states squeue still shows for `job`'s tasks, by the name of each task's
/// stage (`names`: the stages in task order, from the submission line).
fn squeue_states(job: &str, names: &[String]) -> Vec<(String, String)> {
    let out = Command::new("squeue")
        .args(["--noheader", "--array", "--states=all", &format!("--jobs={job}"), "--format=%K %T"])
        .output()
        .expect("squeue runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (task, state) = line.trim().split_once(' ')?;
            let name = names.get(task.parse::<usize>().ok()?)?.clone();
            Some((name, state.split_whitespace().next()?.to_string()))
        })
        .collect()
}

/// The stage names of a submission line `slurm: submitted job array N (K tasks: a, b); logs in DIR`
/// (names without overrides, which hold no `, `).
fn task_names(line: &str) -> Vec<String> {
    let list = line.split_once(" tasks: ").map_or("", |(_, rest)| rest);
    let list = list.rsplit_once("); logs in ").map_or(list, |(names, _)| names);
    list.split(", ").map(str::to_string).collect()
}

#[test]
fn a_tune_of_8_trials_through_slurm_is_bitwise_the_local_run() {
    if !slurm() {
        return;
    }
    let args = ["tune", "--set", "tune.trials=8"];
    let local_dir = tune_dir("");
    let local = local_dir.build(&args);
    assert_eq!(local.code, 0, "{}", local.stderr);
    let slurm_dir = tune_dir("");
    let run = slurm_dir.build(&[&args[..], &["--runner", "slurm"]].concat());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let ran = trials(&run);
    assert_eq!(statuses(&ran, "ran").len(), 8, "{ran:?}");
    let (slurm_hashes, local_hashes) = (run.hashes(), local.hashes());
    let differing: Vec<_> = slurm_hashes.iter().filter(|entry| !local_hashes.contains(entry)).collect();
    assert!(differing.is_empty(), "artifacts through slurm that differ from the local run: {differing:#?}");
    assert_eq!(slurm_hashes, local_hashes, "slurm vs local artifacts");
    assert_eq!(stage_statuses(&run).len(), stage_statuses(&local).len());
    // The eight trials were ready together: one array holds them all.
    let names: Vec<&str> = ran.iter().map(|(name, _)| name.as_str()).collect();
    let submissions: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("slurm: submitted job array")).collect();
    assert!(
        submissions.iter().any(|line| names.iter().all(|name| line.contains(name))),
        "one array with every trial: {submissions:#?}"
    );
    // Progress: a line per state change; each trial's task is seen ending (a short
    // one may start and end between two polls of squeue).
    for name in &names {
        let completed =
            run.stderr.lines().any(|l| l.starts_with("slurm: ") && l.contains(name) && l.ends_with("COMPLETED"));
        assert!(completed, "{name} COMPLETED:\n{}", run.stderr);
    }
    assert!(run.stderr.lines().any(|l| l.starts_with("slurm: ") && l.ends_with(" RUNNING")), "{}", run.stderr);
    // Finished actions leave the queue; the logs of successful arrays are removed.
    let queue = slurm_dir.path().join(".pipe/queue");
    assert_eq!(std::fs::read_dir(queue).map_or(0, |entries| entries.count()), 0);
    let logs = slurm_dir.path().join(".pipe/slurm");
    assert_eq!(std::fs::read_dir(logs).map_or(0, |entries| entries.count()), 0);
    // A second build through Slurm submits nothing.
    let again = slurm_dir.build(&[&args[..], &["--runner", "slurm"]].concat());
    assert_eq!(again.done()["ran"], 0, "{}", again.stderr);
    assert!(!again.stderr.contains("slurm: submitted"), "{}", again.stderr);
}

#[test]
fn a_failing_task_is_reported_on_its_stage_with_its_log() {
    if !slurm() {
        return;
    }
    let dir = TestDir::with_pipeline("[data]\nsource = \"csv:broken.csv\"\n");
    std::fs::write(dir.path().join("broken.csv"), "a,label\n1,0\nnot-a-number,1\n").unwrap();
    let run = dir.build(&["--runner", "slurm", "data"]);
    assert_eq!(run.code, 2, "a malformed data file is bad input: {}", run.stderr);
    let data = run.stage("data");
    assert_eq!(data["status"], "failed");
    let error = data["error"].as_str().unwrap();
    assert!(error.contains("broken.csv") && error.contains("Slurm task"), "{error}");
    let log = error.rsplit("log ").next().unwrap().trim_end_matches(')');
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{log}: {e}"));
    assert!(text.contains("broken.csv"), "the task's log holds its outcome: {text}");

    // A partition that does not exist: sbatch's refusal is the stage's error.
    let run = dir.build(&["--runner", "slurm", "--slurm-partition", "no-such-partition", "data"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let error = run.stage("data")["error"].as_str().unwrap().to_string();
    assert!(error.contains("submitting to Slurm") && error.contains("partition"), "{error}");
}

/// Starts a build of a long `overfit` through Slurm (upstream stages built locally
/// first) and returns it once the overfit task runs, with its job id and the stage
/// names of its tasks.
fn long_overfit(dir: &TestDir) -> (std::process::Child, String, Vec<String>) {
    let mut child = dir.spawn(&["build", "--json", "--runner", "slurm", "overfit"]);
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut job = None;
    let mut names = Vec::new();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        if job.is_none() {
            job = job_id(&line);
            names = task_names(&line);
        }
        let running = line.starts_with("slurm: ") && line.contains(" overfit RUNNING");
        seen.push(line);
        if running {
            break;
        }
        assert!(Instant::now() < deadline, "overfit never ran: {seen:#?}");
    }
    let job = job.unwrap_or_else(|| panic!("no submission: {seen:#?}"));
    // Keep draining stderr so that the build never blocks on it.
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    std::mem::drop(rest);
    (child, job, names)
}

#[test]
fn ctrl_c_cancels_the_array_and_a_task_cancelled_elsewhere_fails_its_stage() {
    if !slurm() {
        return;
    }
    let dir = TestDir::with_pipeline("[train]\nsteps = 200000\neval_every = 1000\n");
    let upstream = dir.build(&["overfit_batch"]);
    assert_eq!(upstream.code, 0, "{}", upstream.stderr);

    let (child, job, names) = long_overfit(&dir);
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let run = wait(child);
    assert_eq!(run.code, 130, "{}", run.stdout);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states = squeue_states(&job, &names);
        if states.iter().all(|(_, state)| !matches!(state.as_str(), "PENDING" | "RUNNING" | "COMPLETING")) {
            let overfit = states.iter().find(|(name, _)| name == "overfit");
            assert!(overfit.is_some_and(|(_, state)| state == "CANCELLED"), "{job}: {states:?}");
            break;
        }
        assert!(Instant::now() < deadline, "job {job} still runs after Ctrl-C: {states:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Someone else cancels the task: the stage fails, naming the task and its log.
    let (child, job, names) = long_overfit(&dir);
    let task = names.iter().position(|name| name == "overfit").unwrap();
    assert!(Command::new("scancel").arg(&job).status().unwrap().success());
    let run = wait(child);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let overfit = run.stage("overfit");
    assert_eq!(overfit["status"], "failed");
    let error = overfit["error"].as_str().unwrap();
    assert!(error.contains(&format!("Slurm task {job}_{task} CANCELLED")) && error.contains(".log"), "{error}");
    // The next build resumes nothing partial from the queue.
    assert_eq!(std::fs::read_dir(dir.path().join(".pipe/queue")).map_or(0, |entries| entries.count()), 0);
}

#[test]
fn without_sbatch_the_slurm_runner_is_refused_before_anything_runs() {
    // Runs everywhere: no `sbatch` on this PATH.
    let dir = TestDir::with_pipeline("");
    let run = dir.run_with_env(&["build", "--json", "--runner", "slurm", "data"], &[("PATH", "/nonexistent")]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("`sbatch` is not installed"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "nothing was built: {}", run.stdout);
}
