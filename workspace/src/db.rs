//! The salsa database: knobs and input fingerprints are inputs (one per knob, so
//! salsa's own edges say which stage read which knob); stages are tracked queries
//! that compute their key, look in the action cache and execute only on a miss.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cache::{ArtifactHash, ArtifactRef, Cache, KeyInputs, Manifest, StageKey};
use salsa::Setter;

use crate::config::Config;
use crate::knob::KnobValue;
use crate::recipe::{
    ExecContext, ExecError, NoProgress, Progress, Recipe, StageFailure, StageOutput, StageSpec, Verdict,
};

/// One knob's value.
#[salsa::input(debug)]
pub struct Knob {
    #[returns(ref)]
    pub value: KnobValue,
}

/// The content fingerprint of an external input (a dataset).
#[salsa::input(debug)]
pub struct Fingerprint {
    #[returns(copy)]
    pub hash: ArtifactHash,
}

/// A stage, by id; the argument of the stage queries.
#[salsa::input(debug)]
pub struct Stage {
    #[returns(ref)]
    pub id: String,
}

/// How a stage was obtained in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageStatus {
    Ran,
    Cached,
    Failed,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Ran => "ran",
            StageStatus::Cached => "cached",
            StageStatus::Failed => "failed",
        }
    }
}

/// Side record of what a stage query did (timings must stay out of query values).
#[derive(Debug, Clone)]
pub struct StageEvent {
    pub stage: String,
    pub status: StageStatus,
    pub secs: f64,
}

/// The parts of the database that never change in a session.
pub struct Engine {
    pub recipe: Recipe,
    pub cache: Cache,
    pub progress: Arc<dyn Progress>,
    events: Mutex<Vec<StageEvent>>,
    executed: Arc<Mutex<Vec<(String, salsa::Id)>>>,
}

impl Engine {
    pub fn spec(&self, id: &str) -> &StageSpec {
        self.recipe.spec(id).unwrap_or_else(|| panic!("stage `{id}` is not part of the recipe"))
    }

    fn record(&self, event: StageEvent) {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }

    /// Drains the stage events recorded since the last call.
    pub fn take_events(&self) -> Vec<StageEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Handles of the salsa inputs, created once per database.
pub struct Inputs {
    knobs: BTreeMap<&'static str, Knob>,
    fingerprints: BTreeMap<String, Fingerprint>,
    stages: BTreeMap<&'static str, Stage>,
}

/// The knob name under which the device class is an input (not a user knob).
const DEVICE_KNOB: &str = "@device";

#[salsa::db]
pub trait Db: salsa::Database {
    fn engine(&self) -> &Engine;
    fn inputs(&self) -> &Inputs;
}

#[salsa::db]
pub struct Database {
    storage: salsa::Storage<Self>,
    engine: Arc<Engine>,
    inputs: Arc<Inputs>,
}

#[salsa::db]
impl salsa::Database for Database {}

#[salsa::db]
impl Db for Database {
    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn inputs(&self) -> &Inputs {
        &self.inputs
    }
}

impl Database {
    /// A database over `recipe` with every knob set from `config`.
    /// `fingerprints` are the content hashes of external inputs (the dataset).
    pub fn new(
        recipe: Recipe,
        cache: Cache,
        config: &Config,
        fingerprints: BTreeMap<String, ArtifactHash>,
        device: &str,
    ) -> Database {
        let executed: Arc<Mutex<Vec<(String, salsa::Id)>>> = Arc::default();
        let log = executed.clone();
        let storage = salsa::Storage::new(Some(Box::new(move |event: salsa::Event| {
            if let salsa::EventKind::WillExecute { database_key } = event.kind {
                let text = format!("{database_key:?}");
                let query = text.split('(').next().unwrap_or_default().to_string();
                log.lock().unwrap_or_else(|e| e.into_inner()).push((query, database_key.key_index()));
            }
        })));
        let engine = Engine { recipe, cache, progress: Arc::new(NoProgress), events: Mutex::default(), executed };
        let mut db = Database { storage, engine: Arc::new(engine), inputs: Arc::new(Inputs::empty()) };
        let mut knobs: BTreeMap<&'static str, Knob> = db
            .engine
            .recipe
            .schema
            .iter()
            .map(|spec| {
                let value = config.get(spec.name).cloned().unwrap_or_else(|| spec.default.clone());
                (spec.name, Knob::new(&db, value))
            })
            .collect();
        let fingerprints = fingerprints.into_iter().map(|(name, hash)| (name, Fingerprint::new(&db, hash))).collect();
        let stages =
            db.engine.recipe.stages.iter().map(|spec| (spec.id, Stage::new(&db, spec.id.to_string()))).collect();
        knobs.insert(DEVICE_KNOB, Knob::new(&db, KnobValue::Str(device.to_string())));
        db.inputs = Arc::new(Inputs { knobs, fingerprints, stages });
        db
    }

    /// Replaces the progress reporter (the CLI's progress bar).
    pub fn set_progress(&mut self, progress: Arc<dyn Progress>) {
        if let Some(engine) = Arc::get_mut(&mut self.engine) {
            engine.progress = progress;
        }
    }

    /// Sets every knob whose value differs from `config`; unchanged knobs keep
    /// their revision, so nothing that reads them re-runs.
    pub fn apply_config(&mut self, config: &Config) {
        let inputs = self.inputs.clone();
        for (name, knob) in &inputs.knobs {
            if let Some(value) = config.get(name) {
                if knob.value(self) != value {
                    knob.set_value(self).to(value.clone());
                }
            }
        }
    }

    pub fn set_fingerprint(&mut self, name: &str, hash: ArtifactHash) {
        let inputs = self.inputs.clone();
        if let Some(input) = inputs.fingerprints.get(name) {
            if input.hash(self) != hash {
                input.set_hash(self).to(hash);
            }
        }
    }

    /// Names of the stages whose query `query` salsa executed since the last call
    /// (from salsa's `WillExecute` events).
    pub fn take_executed(&self, query: &str) -> Vec<String> {
        let log = std::mem::take(&mut *self.engine.executed.lock().unwrap_or_else(|e| e.into_inner()));
        log.into_iter()
            .filter(|(name, _)| name == query)
            .filter_map(|(_, id)| {
                self.inputs
                    .stages
                    .iter()
                    .find(|(_, stage)| salsa::plumbing::AsId::as_id(*stage) == id)
                    .map(|(name, _)| name.to_string())
            })
            .collect()
    }
}

impl Inputs {
    fn empty() -> Inputs {
        Inputs { knobs: BTreeMap::new(), fingerprints: BTreeMap::new(), stages: BTreeMap::new() }
    }

    pub fn stage(&self, id: &str) -> Stage {
        *self.stages.get(id).unwrap_or_else(|| panic!("stage `{id}` is not part of the recipe"))
    }

    pub fn knob(&self, name: &str) -> Knob {
        *self.knobs.get(name).unwrap_or_else(|| panic!("knob `{name}` is not part of the schema"))
    }

    pub fn fingerprint(&self, name: &str) -> Option<Fingerprint> {
        self.fingerprints.get(name).copied()
    }

    pub fn device(&self) -> Knob {
        self.knob(DEVICE_KNOB)
    }
}

/// The inputs of `stage`'s key, given how to read knobs and upstream outputs.
pub(crate) fn key_inputs(
    spec: &StageSpec,
    knob: impl Fn(&str) -> String,
    upstream: &BTreeMap<&'static str, StageOutput>,
    fingerprint: impl Fn(&str) -> Option<ArtifactHash>,
    device: &str,
) -> KeyInputs {
    KeyInputs {
        stage: spec.id.to_string(),
        stage_version: spec.version,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        knobs: spec.knobs.iter().map(|name| (name.to_string(), knob(name))).collect(),
        upstream: upstream
            .iter()
            .flat_map(|(stage, output)| {
                output.artifacts.iter().map(move |(name, artifact)| (format!("{stage}/{name}"), artifact.hash))
            })
            .collect(),
        fingerprints: spec
            .fingerprints
            .iter()
            .map(|name| (name.to_string(), fingerprint(name).unwrap_or(ArtifactHash::of(b""))))
            .collect(),
        device: if spec.device_dependent { device.to_string() } else { "any".to_string() },
        dtype: "f32".to_string(),
    }
}

fn upstream_outputs(db: &dyn Db, spec: &StageSpec) -> Result<BTreeMap<&'static str, StageOutput>, StageFailure> {
    let mut outputs = BTreeMap::new();
    for upstream in &spec.upstream {
        match stage_output(db, db.inputs().stage(upstream)) {
            Ok(output) => {
                outputs.insert(*upstream, output.clone());
            }
            Err(_) => return Err(StageFailure::Upstream(upstream.to_string())),
        }
    }
    Ok(outputs)
}

/// The values of the knobs `spec` reads, as an execution sees them.
pub(crate) fn stage_knobs(db: &dyn Db, spec: &StageSpec) -> BTreeMap<&'static str, KnobValue> {
    spec.knobs.iter().map(|name| (*name, db.inputs().knob(name).value(db).clone())).collect()
}

pub(crate) fn device_name(db: &dyn Db) -> String {
    db.inputs().device().value(db).as_str().unwrap_or("cpu").to_string()
}

/// The inputs of a stage's key: the knobs it reads, its upstream artifact hashes,
/// its input fingerprints and the device class.
#[salsa::tracked(returns(ref))]
pub fn stage_key_inputs(db: &dyn Db, stage: Stage) -> Result<KeyInputs, StageFailure> {
    let spec = db.engine().spec(stage.id(db));
    let upstream = upstream_outputs(db, spec)?;
    let device = device_name(db);
    Ok(key_inputs(
        spec,
        |name| db.inputs().knob(name).value(db).canonical(),
        &upstream,
        |name| db.inputs().fingerprint(name).map(|input| input.hash(db)),
        &device,
    ))
}

/// The key of a stage (errors when an upstream stage failed).
pub fn stage_key(db: &dyn Db, stage: Stage) -> Result<StageKey, StageFailure> {
    stage_key_inputs(db, stage).as_ref().map(KeyInputs::key).map_err(Clone::clone)
}

/// A stage's artifacts and metrics: from the action cache on a hit, else executed.
#[salsa::tracked(returns(ref))]
pub fn stage_output(db: &dyn Db, stage: Stage) -> Result<StageOutput, StageFailure> {
    let engine = db.engine();
    let spec = engine.spec(stage.id(db));
    let _span = tracing::info_span!("stage", id = spec.id).entered();
    let inputs = stage_key_inputs(db, stage).clone()?;
    let key = inputs.key();
    if let Some(manifest) = engine.cache.actions().get(&key) {
        tracing::debug!(key = %key.short(), "action cache hit");
        engine.record(StageEvent { stage: spec.id.to_string(), status: StageStatus::Cached, secs: 0.0 });
        return Ok(StageOutput { artifacts: manifest.artifacts, metrics: manifest.metrics });
    }
    tracing::info!(key = %key.short(), "executing");
    let started = Instant::now();
    let upstream = upstream_outputs(db, spec)?;
    let knobs = stage_knobs(db, spec);
    let device = device_name(db);
    let ctx = ExecContext {
        spec,
        knobs: &knobs,
        upstream: &upstream,
        store: engine.cache.store(),
        device: &device,
        progress: engine.progress.as_ref(),
    };
    let result = engine.recipe.executor.execute(&ctx).map_err(|err| match err {
        ExecError::Failed(message) => StageFailure::Error(message),
        ExecError::BadInput(message) => StageFailure::BadInput(message),
    });
    let result = result.and_then(|output| {
        if let Some((name, value)) = output.metrics.iter().find(|(_, value)| !value.is_finite()) {
            return Err(StageFailure::Error(format!("metric `{name}` is {value}, not a finite number")));
        }
        let mut artifacts = BTreeMap::new();
        for (name, bytes) in &output.artifacts {
            let hash = engine.cache.store().put(bytes).map_err(|err| StageFailure::Error(err.to_string()))?;
            artifacts.insert(name.clone(), ArtifactRef { hash, bytes: bytes.len() as u64 });
        }
        Ok(StageOutput { artifacts, metrics: output.metrics })
    });
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(output) => {
            let manifest = Manifest {
                stage: spec.id.to_string(),
                key,
                inputs,
                artifacts: output.artifacts.clone(),
                metrics: output.metrics.clone(),
                secs,
            };
            if let Err(err) = engine.cache.actions().put(&manifest) {
                tracing::warn!(%err, "could not record the action cache entry");
            }
            engine.record(StageEvent { stage: spec.id.to_string(), status: StageStatus::Ran, secs });
            Ok(output)
        }
        Err(failure) => {
            engine.record(StageEvent { stage: spec.id.to_string(), status: StageStatus::Failed, secs });
            Err(failure)
        }
    }
}

/// The verdicts of a stage: a cheap query over its output and its threshold knobs.
#[salsa::tracked(returns(ref))]
pub fn stage_verdicts(db: &dyn Db, stage: Stage) -> Vec<Verdict> {
    let spec = db.engine().spec(stage.id(db));
    let Ok(output) = stage_output(db, stage) else { return Vec::new() };
    let checks: BTreeMap<&'static str, KnobValue> =
        spec.checks.iter().map(|name| (*name, db.inputs().knob(name).value(db).clone())).collect();
    db.engine().recipe.executor.verdicts(spec.id, output, &checks)
}
