//! `workspace`: pipe's salsa database. Knobs are inputs, stages are tracked queries
//! that compute a key, consult the action cache and execute only on a miss.
//!
//! Invariant: no candle here. What a stage does is behind [`recipe::Executor`],
//! so the engine is tested with fake stages.

pub mod build;
pub mod config;
pub mod db;
pub mod knob;
pub mod recipe;
pub mod snapshot;
pub mod verify;

pub use build::{build, resolve_targets, status, BuildOptions, StageReport, StaleReason, StatusReport};
pub use config::{Config, ConfigError};
pub use db::{Database, Db, StageEvent, StageStatus};
pub use knob::{Float, KnobKind, KnobSpec, KnobValue};
pub use recipe::{
    ExecContext, ExecError, ExecOutput, Executor, NoProgress, Progress, Recipe, StageFailure, StageOutput, StageSpec,
    Target, Verdict, VerdictStatus,
};
pub use snapshot::{snapshot, StageSnapshot};
pub use verify::{verify_stage, ArtifactCheck, StageCheck};

#[cfg(test)]
mod tests;
