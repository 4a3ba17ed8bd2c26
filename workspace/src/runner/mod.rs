//! Runners execute actions. The build loop ([`crate::build`]) decides what runs and
//! when; a runner only turns one [`Action`] into an [`ActionOutcome`], with the
//! result in the action cache on success. [`LocalRunner`] executes in this process;
//! [`ProcessRunner`] starts `pipe exec-action KEY` per action; [`SlurmRunner`]
//! submits the actions that become ready together as one Slurm job array whose
//! tasks run `pipe exec-action KEY`. All give bitwise-identical artifacts.

mod process;
mod slurm;
mod slurm_cmd;
#[cfg(test)]
mod slurm_tests;

use std::path::PathBuf;
use std::sync::Arc;

use cache::Cache;

use crate::action::{execute_and_store, Action, ActionOutcome};
use crate::recipe::{Cancel, Progress, Recipe};

pub use process::ProcessRunner;
pub use slurm::{SlurmEvents, SlurmOptions, SlurmRunner};

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

/// How to start `pipe exec-action KEY` for a queued action: this executable and the
/// global options it needs (`--cache-dir DIR`, `--device`, ...).
#[derive(Debug, Clone)]
pub struct ExecCommand {
    pub program: PathBuf,
    /// Arguments before `exec-action`.
    pub args: Vec<String>,
}

/// The outcome `pipe exec-action KEY` printed in `output` (its stdout, or a Slurm
/// task's log, where warnings may come between): the last line that is the outcome
/// of `key`.
pub(crate) fn outcome_in(output: &str, key: &cache::StageKey) -> Option<ActionOutcome> {
    output
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<ActionOutcome>(line).ok())
        .find(|outcome| outcome.key == *key)
}
