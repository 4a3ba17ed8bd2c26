//! Actions: everything one stage execution needs, as plain data. The plan turns each
//! instance without a cached result into an [`Action`]; it is stored in the cache
//! queue before it runs, so another process (`pipe exec-action KEY`) or another
//! machine can execute it. [`run_action`] executes one against the store;
//! [`store_result`] records its artifacts and, last, its manifest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cache::{ArtifactRef, Cache, KeyInputs, Manifest, StageKey, Store};
use serde::{Deserialize, Serialize};

use crate::instance::InstanceSpec;
use crate::knob::{KnobId, KnobValue};
use crate::recipe::{Cancel, ExecContext, ExecOutput, Progress, Recipe, StageFailure, StageId, StageOutput};
use crate::resume::{CacheResume, Resume};

/// One stage execution, fully described.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// The instance's name (`overfit[train.lr=0.001]`), for output only.
    pub name: String,
    /// What the key is made of (stage id and version, knobs, upstream hashes, device).
    pub inputs: KeyInputs,
    /// The typed values of the knobs the stage reads, with the instance's overrides.
    pub knobs: BTreeMap<String, KnobValue>,
    /// The outputs of the upstream stages it reads, by stage id.
    pub upstream: BTreeMap<String, StageOutput>,
    /// The member instances of a fan-in stage and their outputs, in the stage's order.
    #[serde(default)]
    pub members: Vec<MemberOutput>,
    /// The directory of `pipe.toml`, where relative data paths start (not in the key).
    pub base_dir: PathBuf,
    /// The device to run on (`cpu`, `cuda`); in the key only for device-dependent stages.
    pub device: String,
}

/// A member instance of a fan-in action, as plain data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberOutput {
    pub stage: String,
    pub overrides: Vec<(String, KnobValue)>,
    pub output: StageOutput,
}

impl MemberOutput {
    pub fn new(spec: &InstanceSpec, output: StageOutput) -> MemberOutput {
        MemberOutput {
            stage: spec.stage.0.to_string(),
            overrides: spec.overrides.iter().map(|(knob, value)| (knob.0.to_string(), value.clone())).collect(),
            output,
        }
    }

    /// Back to an instance of `recipe` (the ids become the recipe's own constants).
    fn resolve(&self, recipe: &Recipe) -> Result<(InstanceSpec, StageOutput), StageFailure> {
        let unknown = |what: &str| StageFailure::Error(format!("the action names unknown {what}"));
        let stage = recipe.spec(&self.stage).ok_or_else(|| unknown(&format!("stage `{}`", self.stage)))?.id;
        let mut overrides = Vec::new();
        for (name, value) in &self.overrides {
            let knob = recipe
                .schema
                .iter()
                .find(|spec| spec.name == name)
                .ok_or_else(|| unknown(&format!("knob `{name}`")))?;
            overrides.push((knob.id(), value.clone()));
        }
        Ok((InstanceSpec::new(stage, overrides), self.output.clone()))
    }
}

impl Action {
    pub fn key(&self) -> StageKey {
        self.inputs.key()
    }

    pub fn stage(&self) -> &str {
        &self.inputs.stage
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Action, String> {
        serde_json::from_slice(bytes).map_err(|error| format!("unreadable action: {error}"))
    }
}

/// The outcome of a finished action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub key: StageKey,
    pub secs: f64,
    pub result: Result<StageOutput, StageFailure>,
}

/// Executes `action` with the recipe's stage, writing nothing.
pub fn run_action(
    recipe: &Recipe,
    store: &Store,
    action: &Action,
    progress: &dyn Progress,
    cancel: &Cancel,
    resume: &dyn Resume,
) -> Result<ExecOutput, StageFailure> {
    let stage = recipe
        .stage(action.stage())
        .ok_or_else(|| StageFailure::Error(format!("this pipe has no stage `{}`", action.stage())))?;
    let spec = stage.spec();
    let mut knobs: BTreeMap<KnobId, KnobValue> = BTreeMap::new();
    for id in &spec.knobs {
        let value = action
            .knobs
            .get(id.0)
            .ok_or_else(|| StageFailure::Error(format!("the action of `{}` lacks knob `{id}`", action.name)))?;
        knobs.insert(*id, value.clone());
    }
    let mut upstream: BTreeMap<StageId, StageOutput> = BTreeMap::new();
    for id in &spec.upstream {
        let output = action
            .upstream
            .get(id.0)
            .ok_or_else(|| StageFailure::Error(format!("the action of `{}` lacks upstream `{id}`", action.name)))?;
        upstream.insert(*id, output.clone());
    }
    let members =
        action.members.iter().map(|member| member.resolve(recipe)).collect::<Result<Vec<_>, StageFailure>>()?;
    let ctx = ExecContext {
        spec,
        knobs: &knobs,
        upstream: &upstream,
        members: &members,
        store,
        device: &action.device,
        progress,
        cancel,
        resume,
    };
    let _span = tracing::info_span!("stage", id = %action.name).entered();
    tracing::info!(key = %action.key().short(), "executing");
    let output = stage.execute(&ctx)?;
    if let Some((name, value)) = output.metrics.iter().find(|(_, value)| !value.is_finite()) {
        return Err(StageFailure::Error(format!("metric `{name}` is {value}, not a finite number")));
    }
    Ok(output)
}

/// Stores the artifacts of `output`, then its manifest (last, so a manifest never
/// names a missing object). Nothing is stored when the build was cancelled.
pub fn store_result(
    cache: &Cache,
    action: &Action,
    output: ExecOutput,
    secs: f64,
    cancel: &Cancel,
) -> Result<StageOutput, StageFailure> {
    let mut artifacts = BTreeMap::new();
    for (name, bytes) in &output.artifacts {
        let hash = cache.store().put(bytes).map_err(|err| StageFailure::Error(err.to_string()))?;
        artifacts.insert(name.clone(), ArtifactRef { hash, bytes: bytes.len() as u64 });
    }
    if cancel.is_cancelled() {
        return Err(StageFailure::Cancelled);
    }
    let manifest = Manifest {
        stage: action.name.clone(),
        key: action.key(),
        inputs: action.inputs.clone(),
        artifacts: artifacts.clone(),
        metrics: output.metrics.clone(),
        secs,
    };
    cache.actions().put(&manifest).map_err(|err| StageFailure::Error(format!("recording the result: {err}")))?;
    Ok(StageOutput::new(artifacts, output.metrics))
}

/// Runs `action` and stores its result: what a runner does for one action.
pub fn execute_and_store(
    recipe: &Recipe,
    cache: &Cache,
    action: &Action,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> ActionOutcome {
    let started = std::time::Instant::now();
    let resume = CacheResume::new(cache, &action.inputs);
    let result = run_action(recipe, cache.store(), action, progress, cancel, &resume).and_then(|output| {
        let secs = started.elapsed().as_secs_f64();
        store_result(cache, action, output, secs, cancel)
    });
    ActionOutcome { key: action.key(), secs: started.elapsed().as_secs_f64(), result }
}
