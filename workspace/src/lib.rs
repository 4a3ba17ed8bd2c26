//! `workspace`: pipe's engine. Knobs, input fingerprints and result slots are salsa
//! inputs; tracked queries compute each stage instance's key and cached result
//! without executing anything; the build loop turns missing results into actions and
//! hands them to a runner.
//!
//! Invariant: no candle here. What a stage does is behind [`recipe::Stage`], so the
//! engine is tested with fake stages.

pub mod action;
pub mod build;
pub mod config;
pub mod db;
pub mod instance;
pub mod knob;
pub mod plan;
pub mod recipe;
mod report;
pub mod resume;
pub mod runner;
mod settle;
pub mod snapshot;
mod targets;
pub mod verify;

pub use action::{execute_and_store, run_action, Action, ActionOutcome, MemberOutput};
pub use build::{
    build, cached_reports, closure, plan, resolve_targets, status, BuildEvent, BuildOptions, BuildResult, Lookup,
    Planned, StageReport, StaleReason, StatusReport,
};
pub use config::{Config, ConfigError};
pub use db::{Blocked, Database, Db, StageStatus};
pub use instance::{parse_instance, InstanceName, InstanceSpec, SpecBuild, SpecHasher, SpecMap, SpecSet};
pub use knob::{ChoiceKnob, Float, KnobId, KnobKind, KnobSpec, KnobValue};
pub use recipe::{
    Cancel, Checks, ExecContext, ExecError, ExecOutput, MemberLookup, NoProgress, NothingKnown, Progress, ProgressSink,
    Recipe, Stage, StageFailure, StageId, StageOutput, StageSpec, Target, Verdict, VerdictError, VerdictStatus,
};
pub use resume::{checkpoint_every, resume_point, CacheResume, NoResume, Resume};
pub use runner::{ExecCommand, LocalRunner, ProcessRunner, RecipeRef, Runner, SlurmEvents, SlurmOptions, SlurmRunner};
pub use snapshot::{snapshot, StageSnapshot};
pub use verify::{verify_stage, ArtifactCheck, StageCheck};

#[cfg(test)]
mod tests;
