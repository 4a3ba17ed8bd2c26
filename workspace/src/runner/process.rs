//! [`ProcessRunner`]: one `pipe exec-action KEY` child process per action.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use cache::Cache;

use super::{outcome_in, ExecCommand, Runner};
use crate::action::{Action, ActionOutcome};
use crate::recipe::{Cancel, Progress, StageFailure};

/// Executes each action in a child process: `PROGRAM ARGS... exec-action KEY`, which
/// reads the action from the cache queue, stores its result and prints its outcome
/// as one JSON line on stdout.
pub struct ProcessRunner {
    pub command: ExecCommand,
    pub cache: Cache,
}

impl Runner for ProcessRunner {
    fn run(&self, action: &Action, progress: &dyn Progress, cancel: &Cancel) -> ActionOutcome {
        let key = action.key();
        let failed = |message: String| ActionOutcome { key, secs: 0.0, result: Err(StageFailure::Error(message)) };
        let mut child = match Command::new(&self.command.program)
            .args(&self.command.args)
            .arg("exec-action")
            .arg(key.to_hex())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
        {
            Ok(child) => child,
            Err(error) => return failed(format!("starting {}: {error}", self.command.program.display())),
        };
        progress.begin(&action.name, 0);
        let status = loop {
            if cancel.is_cancelled() {
                child.kill().ok();
                child.wait().ok();
                progress.end();
                return ActionOutcome { key, secs: 0.0, result: Err(StageFailure::Cancelled) };
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(error) => return failed(format!("waiting for exec-action: {error}")),
            }
        };
        progress.end();
        let mut stdout = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            pipe.read_to_string(&mut stdout).ok();
        }
        outcome_in(&stdout, &key)
            .unwrap_or_else(|| failed(format!("exec-action {} exited with {status} and no outcome", key.short())))
    }
}
