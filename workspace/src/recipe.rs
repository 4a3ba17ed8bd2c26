//! What a recipe plugs into the engine: the [`Stage`] trait (spec, execute, verdicts),
//! targets, and the context an execution sees. The engine is generic over these, so
//! it is tested with fake stages and no candle.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cache::{ArtifactRef, Metrics, Store};
use serde::{Deserialize, Serialize};

use crate::instance::InstanceSpec;
use crate::knob::{KnobId, KnobSpec, KnobValue};

/// A stage's stable id (`overfit`). Recipes declare each as a constant.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageId(pub &'static str);

impl StageId {
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for StageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Debug for StageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`", self.0)
    }
}

/// What a stage reads and how it is keyed.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub id: StageId,
    /// Bumped when the stage's code changes what it writes.
    pub version: u32,
    pub doc: &'static str,
    /// Knobs the stage reads: exactly these go into its key.
    pub knobs: Vec<KnobId>,
    /// Threshold knobs its verdicts read: never in its key.
    pub checks: Vec<KnobId>,
    /// Stages whose artifacts it reads.
    pub upstream: Vec<StageId>,
    /// External input fingerprints it reads (e.g. `dataset`).
    pub fingerprints: Vec<&'static str>,
    /// Whether results depend on the device class (training stages).
    pub device_dependent: bool,
}

/// One unit of recipe work: its spec, how to execute it, and its verdicts.
pub trait Stage: Send + Sync {
    fn spec(&self) -> &StageSpec;

    /// Produces the stage's artifacts and metrics. Reads only what the spec declares.
    fn execute(&self, ctx: &ExecContext<'_>) -> Result<ExecOutput, ExecError>;

    /// Verdicts over the stage's output and its threshold knobs. Cheap: never trains.
    fn verdicts(&self, output: &StageOutput, checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError>;

    /// The stages whose instances [`Stage::members`] may return (they come earlier in
    /// the recipe); their knobs count as read by this stage for overrides.
    fn member_stages(&self) -> Vec<StageId> {
        Vec::new()
    }

    /// Instances this stage reads besides its upstream stages: ladder rungs, tuning
    /// trials, ensemble members. `knobs` are the values of the stage's declared knobs
    /// for this instance; `known` answers the output of a member that has one. The
    /// engine adds this instance's own overrides to each member, builds them, puts
    /// their artifact hashes into this stage's key and asks again as results arrive,
    /// so a stage may return more members once it has seen some (successive halving).
    /// The stage runs when every member it returns has an output. An `Err` is a
    /// configuration error (exit 2): name the knob and what is wrong.
    fn members(
        &self,
        _knobs: &BTreeMap<KnobId, KnobValue>,
        _known: &dyn MemberLookup,
    ) -> Result<Vec<InstanceSpec>, String> {
        Ok(Vec::new())
    }
}

/// What [`Stage::members`] may ask of results found so far.
pub trait MemberLookup {
    /// The output of `member` (before the engine adds the parent's overrides), when
    /// it has one.
    fn output(&self, member: &InstanceSpec) -> Option<StageOutput>;
}

/// A lookup that knows nothing (every member is still to be built).
pub struct NothingKnown;

impl MemberLookup for NothingKnown {
    fn output(&self, _member: &InstanceSpec) -> Option<StageOutput> {
        None
    }
}

/// A name a user builds: a set of stages, and of stage instances (e.g. `evaluate`
/// scoring the model of `regularize`).
#[derive(Debug, Clone)]
pub struct Target {
    pub name: &'static str,
    pub doc: &'static str,
    pub stages: Vec<StageId>,
    pub instances: Vec<InstanceSpec>,
}

impl Target {
    pub fn new(name: &'static str, doc: &'static str, stages: Vec<StageId>) -> Target {
        Target { name, doc, stages, instances: Vec::new() }
    }

    /// Adds an instance (a stage under overrides) to the target.
    pub fn with(mut self, instance: InstanceSpec) -> Target {
        self.instances.push(instance);
        self
    }

    /// Everything the target builds, before its upstream instances are added.
    pub fn wanted(&self) -> Vec<InstanceSpec> {
        self.stages.iter().map(|id| InstanceSpec::plain(*id)).chain(self.instances.iter().cloned()).collect()
    }
}

/// A stage's result as salsa sees it: content only (hashes, metrics), never keys or
/// timings, so an unchanged result is backdated and dependents do not re-run. Both
/// maps are shared (`Arc`): a tune's output is copied into every query and report
/// that reads it, a thousand members' outputs into the tune's.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StageOutput {
    pub artifacts: Arc<BTreeMap<String, ArtifactRef>>,
    pub metrics: Arc<Metrics>,
}

impl StageOutput {
    pub fn new(artifacts: BTreeMap<String, ArtifactRef>, metrics: Metrics) -> StageOutput {
        StageOutput { artifacts: Arc::new(artifacts), metrics: Arc::new(metrics) }
    }
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

/// Why a stage's verdicts could not be computed (its metrics do not decode, or it
/// read a threshold it did not declare). The engine turns it into a failed verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VerdictError(pub String);

/// The threshold knobs a stage's verdicts may read.
pub struct Checks<'a> {
    pub(crate) stage: StageId,
    pub(crate) values: &'a BTreeMap<KnobId, KnobValue>,
}

impl<'a> Checks<'a> {
    pub fn new(stage: StageId, values: &'a BTreeMap<KnobId, KnobValue>) -> Checks<'a> {
        Checks { stage, values }
    }

    pub fn value(&self, id: KnobId) -> Result<&KnobValue, VerdictError> {
        self.values
            .get(&id)
            .ok_or_else(|| VerdictError(format!("stage `{}` reads threshold `{id}` it did not declare", self.stage)))
    }

    pub fn f64(&self, id: KnobId) -> Result<f64, VerdictError> {
        self.value(id)?.as_f64().ok_or_else(|| VerdictError(format!("threshold `{id}` is not a number")))
    }

    pub fn bool(&self, id: KnobId) -> Result<bool, VerdictError> {
        self.value(id)?.as_bool().ok_or_else(|| VerdictError(format!("threshold `{id}` is not a boolean")))
    }
}

/// A stage that could not produce its artifacts. Never cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageFailure {
    /// An upstream stage failed, so this one could not run.
    Upstream(String),
    /// The stage itself failed.
    Error(String),
    /// The stage's input (a data file) is malformed.
    BadInput(String),
    /// The build was interrupted or stopped while the stage ran; nothing was kept.
    Cancelled,
    /// An input object was missing or corrupt: the stage that wrote it runs again.
    DamagedInput { hash: cache::ArtifactHash, message: String },
}

impl std::fmt::Display for StageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageFailure::Upstream(stage) => write!(f, "upstream stage `{stage}` failed"),
            StageFailure::Error(message) | StageFailure::BadInput(message) => f.write_str(message),
            StageFailure::Cancelled => f.write_str("cancelled"),
            StageFailure::DamagedInput { message, .. } => f.write_str(message),
        }
    }
}

/// Progress of long work (training steps) in one running action; the CLI draws it,
/// tests ignore it. Several actions may run at once, each with its own handle.
pub trait Progress: Send + Sync {
    fn begin(&self, _stage: &str, _total: u64) {}
    fn advance(&self, _done: u64, _message: &str) {}
    fn end(&self) {}
}

/// Hands each running action its own [`Progress`].
pub trait ProgressSink: Send + Sync {
    fn action(&self, name: &str) -> Box<dyn Progress>;
}

/// A [`Progress`] that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {}

impl ProgressSink for NoProgress {
    fn action(&self, _name: &str) -> Box<dyn Progress> {
        Box::new(NoProgress)
    }
}

/// Set when the build is interrupted (Ctrl-C) or stops after a failure: running
/// actions should return [`ExecError::Cancelled`] at their next check.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Everything a stage execution may read.
pub struct ExecContext<'a> {
    pub spec: &'a StageSpec,
    /// Values of exactly the knobs in `spec.knobs`, with the instance's overrides.
    pub knobs: &'a BTreeMap<KnobId, KnobValue>,
    /// Outputs of the stages in `spec.upstream`.
    pub upstream: &'a BTreeMap<StageId, StageOutput>,
    /// The member instances [`Stage::members`] returned (with this instance's
    /// overrides added) and their outputs, in the order it returned them.
    pub members: &'a [(InstanceSpec, StageOutput)],
    pub store: &'a Store,
    pub device: &'a str,
    pub progress: &'a dyn Progress,
    pub cancel: &'a Cancel,
    /// Saved states this execution may continue from or add to (training stages).
    pub resume: &'a dyn crate::resume::Resume,
}

impl ExecContext<'_> {
    pub fn knob(&self, id: KnobId) -> Result<&KnobValue, ExecError> {
        self.knobs
            .get(&id)
            .ok_or_else(|| ExecError::Failed(format!("stage `{}` reads knob `{id}` it did not declare", self.spec.id)))
    }

    /// The output of upstream stage `stage`.
    pub fn upstream(&self, stage: StageId) -> Result<&StageOutput, ExecError> {
        self.upstream
            .get(&stage)
            .ok_or_else(|| ExecError::Failed(format!("stage `{}` reads `{stage}` it did not declare", self.spec.id)))
    }

    /// The verified bytes of artifact `name` of upstream stage `stage`.
    pub fn artifact(&self, stage: StageId, name: &str) -> Result<Vec<u8>, ExecError> {
        let artifact = self
            .upstream(stage)?
            .artifacts
            .get(name)
            .ok_or_else(|| ExecError::Failed(format!("stage `{stage}` has no artifact `{name}`")))?;
        self.read(&artifact.hash)
    }

    /// The verified bytes of an object an upstream stage or member wrote. A missing or
    /// corrupt object is [`ExecError::DamagedInput`]: the build re-executes the stage
    /// that wrote it, then this one.
    pub fn read(&self, hash: &cache::ArtifactHash) -> Result<Vec<u8>, ExecError> {
        self.store.get(hash).map_err(|err| match err {
            cache::CacheError::Corrupt { .. } | cache::CacheError::Missing { .. } => {
                ExecError::DamagedInput { hash: *hash, message: err.to_string() }
            }
            other => ExecError::Failed(other.to_string()),
        })
    }

    /// `Err(Cancelled)` once the build was interrupted; long loops call it each step.
    pub fn check_cancelled(&self) -> Result<(), ExecError> {
        if self.cancel.is_cancelled() {
            Err(ExecError::Cancelled)
        } else {
            Ok(())
        }
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
    /// The build was cancelled while the stage ran.
    #[error("cancelled")]
    Cancelled,
    /// An input object (an upstream artifact) is missing or corrupt in the store.
    #[error("{message}")]
    DamagedInput { hash: cache::ArtifactHash, message: String },
}

impl From<ExecError> for StageFailure {
    fn from(error: ExecError) -> StageFailure {
        match error {
            ExecError::Failed(message) => StageFailure::Error(message),
            ExecError::BadInput(message) => StageFailure::BadInput(message),
            ExecError::Cancelled => StageFailure::Cancelled,
            ExecError::DamagedInput { hash, message } => StageFailure::DamagedInput { hash, message },
        }
    }
}

/// A complete recipe: knob schema, stages in recipe (dependency) order, targets.
pub struct Recipe {
    pub schema: Vec<KnobSpec>,
    pub stages: Vec<Arc<dyn Stage>>,
    pub targets: Vec<Target>,
}

impl Recipe {
    pub fn stage(&self, id: &str) -> Option<&Arc<dyn Stage>> {
        self.stages.iter().find(|stage| stage.spec().id.0 == id)
    }

    pub fn spec(&self, id: &str) -> Option<&StageSpec> {
        self.stage(id).map(|stage| stage.spec())
    }

    /// Position of a stage in recipe order.
    pub fn position(&self, id: StageId) -> usize {
        self.stages.iter().position(|stage| stage.spec().id == id).unwrap_or(usize::MAX)
    }

    /// Knobs read by `id` or by any stage upstream of it: the only overrides that can
    /// change its key.
    pub fn transitive_knobs(&self, id: StageId) -> std::collections::BTreeSet<KnobId> {
        let mut knobs = std::collections::BTreeSet::new();
        let mut stack = vec![id];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(stage) = self.stage(id.0) {
                let spec = stage.spec();
                knobs.extend(spec.knobs.iter().copied());
                stack.extend(spec.upstream.iter().copied());
                stack.extend(stage.member_stages());
            }
        }
        knobs
    }

    /// Problems that make the recipe ill-formed: duplicate ids, knobs or thresholds
    /// missing from the schema, upstream stages that do not exist or come later,
    /// targets naming unknown stages. Empty for a well-formed recipe.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let in_schema = |id: &KnobId| self.schema.iter().any(|spec| spec.name == id.0);
        for (index, stage) in self.stages.iter().enumerate() {
            let spec = stage.spec();
            if self.stages[..index].iter().any(|earlier| earlier.spec().id == spec.id) {
                problems.push(format!("stage `{}` is declared twice", spec.id));
            }
            for knob in spec.knobs.iter().chain(&spec.checks) {
                if !in_schema(knob) {
                    problems.push(format!("stage `{}` declares knob `{knob}`, which is not in the schema", spec.id));
                }
            }
            for knob in &spec.checks {
                if spec.knobs.contains(knob) {
                    problems.push(format!("stage `{}` declares `{knob}` both as a knob and a threshold", spec.id));
                }
            }
            for up in spec.upstream.iter().chain(&stage.member_stages()) {
                match self.stages.iter().position(|s| s.spec().id == *up) {
                    None => problems.push(format!("stage `{}` reads unknown stage `{up}`", spec.id)),
                    Some(at) if at >= index => {
                        problems.push(format!("stage `{}` reads `{up}`, which comes later in the recipe", spec.id))
                    }
                    Some(_) => {}
                }
            }
        }
        for target in &self.targets {
            for stage in target.stages.iter().chain(target.instances.iter().map(|instance| &instance.stage)) {
                if self.spec(stage.0).is_none() {
                    problems.push(format!("target `{}` names unknown stage `{stage}`", target.name));
                }
            }
        }
        problems
    }
}
