//! The Slurm commands [`super::SlurmRunner`] uses (`sbatch`, `squeue`, `scancel`), the
//! job script it submits, and the parsing of their output. Pure where it can be, so
//! the text is unit-tested without a cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cache::StageKey;

use super::slurm::SlurmOptions;
use super::ExecCommand;

/// A submitted job array: its id, as `sbatch --parsable` printed it.
pub(crate) type JobId = String;

/// The batch script of one job array: task `i` runs `PROGRAM ARGS... exec-action
/// KEY_i`, so each task reads its action from the shared cache's queue.
pub(crate) fn job_script(command: &ExecCommand, keys: &[StageKey]) -> String {
    let mut script =
        String::from("#!/bin/sh\n# Written by `pipe build --runner slurm`: task i executes queued action i.\n");
    script.push_str("case \"$SLURM_ARRAY_TASK_ID\" in\n");
    for (task, key) in keys.iter().enumerate() {
        script.push_str(&format!("  {task}) key={} ;;\n", key.to_hex()));
    }
    script.push_str("  *) echo \"pipe: no action for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;\nesac\n");
    script.push_str("exec");
    for word in std::iter::once(command.program.display().to_string()).chain(command.args.iter().cloned()) {
        script.push(' ');
        script.push_str(&quote(&word));
    }
    script.push_str(" exec-action \"$key\"\n");
    script
}

/// `word` as one single-quoted shell word.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// `sbatch`'s arguments for an array of `tasks` tasks whose logs go to `dir/<task>.log`.
/// Every option is explicit: the environment is exported (a remote cache's URL and
/// credentials travel that way), the working directory is this one.
pub(crate) fn sbatch_args(options: &SlurmOptions, tasks: usize, dir: &Path, workdir: &Path) -> Vec<String> {
    let mut args = vec![
        "--parsable".to_string(),
        format!("--array=0-{}", tasks.saturating_sub(1)),
        format!("--job-name={}", options.job_name),
        format!("--output={}", dir.join("%a.log").display()),
        "--open-mode=truncate".to_string(),
        "--export=ALL".to_string(),
        format!("--chdir={}", workdir.display()),
        "--ntasks=1".to_string(),
        format!("--cpus-per-task={}", options.cpus_per_task),
    ];
    if let Some(partition) = &options.partition {
        args.push(format!("--partition={partition}"));
    }
    if let Some(time) = &options.time {
        args.push(format!("--time={time}"));
    }
    if let Some(gpus) = options.gpus_per_task {
        args.push(format!("--gpus-per-task={gpus}"));
    }
    args
}

/// What `sbatch --parsable` printed: `JOBID` or `JOBID;CLUSTER`.
pub(crate) fn parse_job_id(stdout: &str) -> Option<JobId> {
    let id = stdout.lines().map(str::trim).find(|line| !line.is_empty())?.split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then(|| id.to_string())
}

/// Runs `program args...` (from `bin_dir`, else found on PATH); its stdout, or a
/// sentence with its stderr.
pub(crate) fn call(bin_dir: Option<&Path>, program: &str, args: &[String]) -> Result<String, String> {
    let path = bin_dir.map_or_else(|| PathBuf::from(program), |dir| dir.join(program));
    let output = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("starting `{program}`: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("`{program}` exited with {}: {}", output.status, stderr.trim()))
    }
}

/// `sbatch`: submits `script` and returns the job id.
pub(crate) fn sbatch(bin_dir: Option<&Path>, args: &[String], script: &Path) -> Result<JobId, String> {
    let mut args = args.to_vec();
    args.push(script.display().to_string());
    let stdout = call(bin_dir, "sbatch", &args)?;
    parse_job_id(&stdout).ok_or_else(|| format!("`sbatch` printed no job id: {stdout:?}"))
}

/// The state of a task as `squeue` shows it: `RUNNING`, `COMPLETED`, ... and its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskState {
    pub state: String,
    pub reason: String,
}

impl TaskState {
    /// The task has ended; no other state follows.
    pub fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "COMPLETED"
                | "FAILED"
                | "CANCELLED"
                | "TIMEOUT"
                | "NODE_FAIL"
                | "OUT_OF_MEMORY"
                | "PREEMPTED"
                | "BOOT_FAIL"
                | "DEADLINE"
                | "REVOKED"
                | "SPECIAL_EXIT"
        )
    }
}

/// The tasks of `job` that slurmctld still knows, finished ones included.
pub(crate) fn squeue(bin_dir: Option<&Path>, job: &str) -> Result<BTreeMap<usize, TaskState>, String> {
    let args = ["--noheader", "--array", "--states=all", &format!("--jobs={job}"), "--format=%K|%T|%r"];
    let stdout = call(bin_dir, "squeue", &args.map(String::from))?;
    Ok(parse_squeue(&stdout))
}

/// Lines `TASKS|STATE|REASON`, where TASKS is one array index or, for a part of an
/// array not yet split, a list such as `3-5,7` or `[3-5%2]`.
pub(crate) fn parse_squeue(stdout: &str) -> BTreeMap<usize, TaskState> {
    let mut tasks = BTreeMap::new();
    for line in stdout.lines() {
        let mut fields = line.trim().splitn(3, '|');
        let (Some(ids), Some(state)) = (fields.next(), fields.next()) else { continue };
        let reason = fields.next().unwrap_or("").trim();
        let state = TaskState {
            // `CANCELLED by 0`: the state is the first word.
            state: state.split_whitespace().next().unwrap_or("").to_string(),
            reason: if reason == "None" { String::new() } else { reason.to_string() },
        };
        let ids = ids.trim().trim_start_matches('[').trim_end_matches(']');
        let ids = ids.split('%').next().unwrap_or("");
        for part in ids.split(',') {
            let range = match part.split_once('-') {
                Some((first, last)) => first.parse::<usize>().ok().zip(last.parse::<usize>().ok()),
                None => part.parse::<usize>().ok().map(|id| (id, id)),
            };
            if let Some((first, last)) = range {
                for id in first..=last.min(first + 100_000) {
                    tasks.insert(id, state.clone());
                }
            }
        }
    }
    tasks
}

/// `scancel` of the whole array or of some of its tasks.
pub(crate) fn scancel(bin_dir: Option<&Path>, job: &str, tasks: Option<&[usize]>) -> Result<(), String> {
    let targets = match tasks {
        None => vec![job.to_string()],
        Some(tasks) => tasks.iter().map(|task| format!("{job}_{task}")).collect(),
    };
    call(bin_dir, "scancel", &targets).map(|_| ())
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_runs_each_tasks_action_with_quoted_arguments() {
        let command = ExecCommand {
            program: "/opt/my pipe/pipe".into(),
            args: vec!["--cache-dir".into(), "/tmp/it's/.pipe".into()],
        };
        let keys = [StageKey::from_bytes([1; 32]), StageKey::from_bytes([2; 32])];
        let script = job_script(&command, &keys);
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(script.contains(&format!("  0) key={} ;;\n", keys[0].to_hex())), "{script}");
        assert!(script.contains(&format!("  1) key={} ;;\n", keys[1].to_hex())), "{script}");
        assert!(
            script.ends_with("exec '/opt/my pipe/pipe' '--cache-dir' '/tmp/it'\\''s/.pipe' exec-action \"$key\"\n"),
            "{script}"
        );
    }

    #[test]
    fn sbatch_gets_every_option_explicitly() {
        let mut options = SlurmOptions::default();
        let args = sbatch_args(&options, 8, Path::new("/c/slurm/b"), Path::new("/w"));
        assert!(args.contains(&"--array=0-7".to_string()), "{args:?}");
        assert!(args.contains(&"--output=/c/slurm/b/%a.log".to_string()), "{args:?}");
        assert!(args.contains(&"--cpus-per-task=1".to_string()) && args.contains(&"--chdir=/w".to_string()));
        assert!(!args
            .iter()
            .any(|a| a.starts_with("--partition") || a.starts_with("--time") || a.starts_with("--gpus")));
        options.partition = Some("gpu".into());
        options.time = Some("00:30:00".into());
        options.cpus_per_task = 4;
        options.gpus_per_task = Some(1);
        let args = sbatch_args(&options, 1, Path::new("/d"), Path::new("/w"));
        for wanted in ["--array=0-0", "--partition=gpu", "--time=00:30:00", "--cpus-per-task=4", "--gpus-per-task=1"] {
            assert!(args.contains(&wanted.to_string()), "{wanted}: {args:?}");
        }
    }

    #[test]
    fn job_ids_and_task_states_are_parsed() {
        assert_eq!(parse_job_id("1234\n").as_deref(), Some("1234"));
        assert_eq!(parse_job_id("77;cluster-a\n").as_deref(), Some("77"));
        assert_eq!(parse_job_id("Submitted batch job 5\n"), None);
        let tasks = parse_squeue(
            "0|RUNNING|None\n1|PENDING|Resources\n[2-4%2]|PENDING|JobArrayTaskLimit\n5|CANCELLED by 0|None\n",
        );
        assert_eq!(tasks.len(), 6);
        assert_eq!(tasks[&0], TaskState { state: "RUNNING".into(), reason: String::new() });
        assert_eq!(tasks[&1].reason, "Resources");
        assert_eq!(tasks[&3].state, "PENDING");
        assert_eq!(tasks[&5].state, "CANCELLED");
        assert!(tasks[&5].is_final() && !tasks[&0].is_final());
        assert!(parse_squeue("garbage\n|\n").is_empty());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
