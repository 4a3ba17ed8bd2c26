//! Runners execute actions. The build loop ([`crate::build`]) decides what runs and
//! when; a runner only turns one [`Action`] into an [`ActionOutcome`], with the
//! result in the action cache on success. [`LocalRunner`] executes in this process;
//! [`ProcessRunner`] starts `pipe exec-action KEY` per action (the seam a cluster
//! scheduler plugs into). Both give bitwise-identical artifacts.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cache::Cache;

use crate::action::{execute_and_store, Action, ActionOutcome};
use crate::recipe::{Cancel, Progress, Recipe, StageFailure};

/// Executes one action to completion (or until `cancel`).
pub trait Runner: Send + Sync {
    fn run(&self, action: &Action, progress: &dyn Progress, cancel: &Cancel) -> ActionOutcome;
}

/// Executes actions on threads of this process.
pub struct LocalRunner {
    recipe: Arc<dyn RecipeRef>,
    cache: Cache,
}

/// Shared access to the recipe (the engine owns it).
pub trait RecipeRef: Send + Sync {
    fn recipe(&self) -> &Recipe;
}

impl LocalRunner {
    pub fn new(recipe: Arc<dyn RecipeRef>, cache: Cache) -> LocalRunner {
        LocalRunner { recipe, cache }
    }
}

impl Runner for LocalRunner {
    fn run(&self, action: &Action, progress: &dyn Progress, cancel: &Cancel) -> ActionOutcome {
        execute_and_store(self.recipe.recipe(), &self.cache, action, progress, cancel)
    }
}

/// Executes each action in a child process: `PROGRAM ARGS... exec-action KEY`, which
/// reads the action from the cache queue, stores its result and prints its outcome
/// as one JSON line on stdout.
pub struct ProcessRunner {
    pub program: PathBuf,
    /// Arguments before `exec-action` (e.g. `--cache-dir DIR`).
    pub args: Vec<String>,
    pub cache: Cache,
}

impl Runner for ProcessRunner {
    fn run(&self, action: &Action, progress: &dyn Progress, cancel: &Cancel) -> ActionOutcome {
        let key = action.key();
        let failed = |message: String| ActionOutcome { key, secs: 0.0, result: Err(StageFailure::Error(message)) };
        let mut child = match Command::new(&self.program)
            .args(&self.args)
            .arg("exec-action")
            .arg(key.to_hex())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
        {
            Ok(child) => child,
            Err(error) => return failed(format!("starting {}: {error}", self.program.display())),
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
        match stdout.lines().rev().find_map(|line| serde_json::from_str::<ActionOutcome>(line).ok()) {
            Some(outcome) if outcome.key == key => outcome,
            _ => failed(format!("exec-action {} exited with {status} and no outcome", key.short())),
        }
    }
}
