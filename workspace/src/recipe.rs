//! What a recipe plugs into the engine: stage specs, targets, the executor that runs
//! a stage, and the verdicts it judges. The engine is generic over these, so it can
//! be tested with fake stages and no candle.

use std::collections::BTreeMap;

use cache::{ArtifactRef, Metrics, Store};
use serde::Serialize;

use crate::knob::{KnobSpec, KnobValue};

/// One unit of recipe work with a stable id.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub id: &'static str,
    /// Bumped when the stage's code changes what it writes.
    pub version: u32,
    pub doc: &'static str,
    /// Knobs the stage reads: exactly these go into its key.
    pub knobs: Vec<&'static str>,
    /// Threshold knobs its verdicts read: never in its key.
    pub checks: Vec<&'static str>,
    /// Stages whose artifacts it reads.
    pub upstream: Vec<&'static str>,
    /// External input fingerprints it reads (e.g. `dataset`).
    pub fingerprints: Vec<&'static str>,
    /// Whether results depend on the device class (training stages).
    pub device_dependent: bool,
}

/// A name a user builds: a set of stages.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: &'static str,
    pub doc: &'static str,
    pub stages: Vec<&'static str>,
}

/// A stage's result as salsa sees it: content only (hashes, metrics), never keys or
/// timings, so an unchanged result is backdated and dependents do not re-run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StageOutput {
    pub artifacts: BTreeMap<String, ArtifactRef>,
    pub metrics: Metrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictStatus {
    Pass,
    Warn,
    Fail,
}

/// The outcome of one recipe check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub check: String,
    pub status: VerdictStatus,
    pub value: f64,
    pub expected: f64,
    /// One sentence a person can act on.
    pub message: String,
    /// What to try when it does not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// A stage that could not produce its artifacts. Never cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageFailure {
    /// An upstream stage failed, so this one could not run.
    Upstream(String),
    /// The stage itself failed.
    Error(String),
    /// The stage's input (a data file) is malformed.
    BadInput(String),
}

impl std::fmt::Display for StageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageFailure::Upstream(stage) => write!(f, "upstream stage `{stage}` failed"),
            StageFailure::Error(message) | StageFailure::BadInput(message) => f.write_str(message),
        }
    }
}

/// Progress of long work (training steps); the CLI draws a bar, tests ignore it.
pub trait Progress: Send + Sync {
    fn begin(&self, _stage: &str, _total: u64) {}
    fn advance(&self, _done: u64, _message: &str) {}
    fn end(&self) {}
}

/// A [`Progress`] that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {}

/// Everything a stage execution may read.
pub struct ExecContext<'a> {
    pub spec: &'a StageSpec,
    /// Values of exactly the knobs in `spec.knobs`.
    pub knobs: &'a BTreeMap<&'static str, KnobValue>,
    /// Outputs of the stages in `spec.upstream`.
    pub upstream: &'a BTreeMap<&'static str, StageOutput>,
    pub store: &'a Store,
    pub device: &'a str,
    pub progress: &'a dyn Progress,
}

impl ExecContext<'_> {
    pub fn knob(&self, name: &str) -> Result<&KnobValue, ExecError> {
        self.knobs.get(name).ok_or_else(|| {
            ExecError::Failed(format!("stage `{}` reads knob `{name}` it did not declare", self.spec.id))
        })
    }

    /// The verified bytes of artifact `name` of upstream stage `stage`.
    pub fn artifact(&self, stage: &str, name: &str) -> Result<Vec<u8>, ExecError> {
        let output = self
            .upstream
            .get(stage)
            .ok_or_else(|| ExecError::Failed(format!("stage `{}` reads `{stage}` it did not declare", self.spec.id)))?;
        let artifact = output
            .artifacts
            .get(name)
            .ok_or_else(|| ExecError::Failed(format!("stage `{stage}` has no artifact `{name}`")))?;
        self.store.get(&artifact.hash).map_err(|err| ExecError::Failed(err.to_string()))
    }
}

/// What an execution produces: artifact files (name with extension -> bytes) and metrics.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub artifacts: Vec<(String, Vec<u8>)>,
    pub metrics: Metrics,
}

/// Why a stage execution failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The stage broke (a NaN loss, an I/O error).
    #[error("{0}")]
    Failed(String),
    /// The user's input is wrong (a malformed data file): a usage error, exit 2.
    #[error("{0}")]
    BadInput(String),
}

/// Runs stages and judges their results. Implemented by `pipelines` (and by fakes in tests).
pub trait Executor: Send + Sync {
    fn execute(&self, ctx: &ExecContext<'_>) -> Result<ExecOutput, ExecError>;

    /// Verdicts of `stage` over its output and threshold knobs. Must be cheap: no training.
    fn verdicts(&self, stage: &str, output: &StageOutput, checks: &BTreeMap<&'static str, KnobValue>) -> Vec<Verdict>;
}

/// A complete recipe: knob schema, stages in dependency order, targets, executor.
pub struct Recipe {
    pub schema: Vec<KnobSpec>,
    pub stages: Vec<StageSpec>,
    pub targets: Vec<Target>,
    pub executor: Box<dyn Executor>,
}

impl Recipe {
    pub fn spec(&self, id: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|spec| spec.id == id)
    }
}
