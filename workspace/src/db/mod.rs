//! The salsa database. Knobs, input fingerprints and each instance's result slot are
//! inputs (one per knob, so salsa's own edges say which stage read which knob);
//! instances are interned. The tracked queries are pure: they compute an instance's
//! key inputs, whether its current key has a result, and its verdicts. Nothing here
//! executes a stage: the plan ([`crate::plan`]) turns missing results into actions
//! and a [`crate::runner::Runner`] executes them; finished actions are fed back into
//! the slots, so dependents see them and an unchanged output is backdated.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use cache::{ArtifactHash, Cache, StageKey};
use salsa::Setter;

use crate::config::Config;
use crate::instance::{InstanceName, InstanceSpec};
use crate::knob::{KnobId, KnobValue};
use crate::recipe::{NoProgress, ProgressSink, Recipe, Stage, StageId, StageOutput};

mod queries;

#[cfg(test)]
pub(crate) use queries::judge;
pub(crate) use queries::{device_name, resolved_knobs};
pub use queries::{instance_key, instance_key_inputs, instance_members, instance_output, instance_verdicts};

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

/// A stage under overrides, interned: equal specs are one instance.
#[salsa::interned(unsafe(no_lifetime), revisions = usize::MAX, debug)]
pub struct Instance {
    #[returns(ref)]
    pub spec: InstanceSpec,
}

/// The result known for an instance: the key it was obtained under and its output.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub key: StageKey,
    pub output: StageOutput,
}

/// Where the cache or a runner puts an instance's result.
#[salsa::input(debug)]
pub struct Slot {
    #[returns(ref)]
    pub result: Option<Done>,
}

/// Why an instance's key cannot be computed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// Upstream or member instances without a result (at least one).
    Waiting(Vec<InstanceSpec>),
    /// The stage's members cannot be listed: a configuration error, in words.
    Invalid(String),
}

impl Blocked {
    /// The first instance waited for, for messages.
    pub fn first(&self) -> Option<&InstanceSpec> {
        match self {
            Blocked::Waiting(waiting) => waiting.first(),
            Blocked::Invalid(_) => None,
        }
    }
}

/// Counts registrations of new instances, so a member lookup that found an instance
/// unregistered is asked again once it is.
#[salsa::input(debug)]
pub struct Registry {
    #[returns(copy)]
    pub generation: u64,
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

/// The parts of the database that never change in a session.
pub struct Engine {
    pub recipe: Recipe,
    pub cache: Cache,
    pub progress: Arc<dyn ProgressSink>,
    /// The directory relative data paths start from (recorded in actions).
    pub base_dir: std::path::PathBuf,
    /// (query, key) of every `WillExecute` event, for tests.
    /// (Its own `Arc`: salsa's event callback holds it, not the engine, so the engine
    /// stays uniquely owned until a runner clones it and `set_progress` can replace
    /// the progress sink.)
    executed: Arc<Mutex<Vec<(salsa::IngredientIndex, salsa::Id)>>>,
    /// [`Recipe::transitive_knobs`] of each stage asked for, computed once: a tune
    /// normalizes thousands of members and their upstream instances.
    transitive: Mutex<HashMap<StageId, Arc<BTreeSet<KnobId>>>>,
}

impl Engine {
    pub fn stage(&self, id: &str) -> &Arc<dyn Stage> {
        self.recipe.stage(id).unwrap_or_else(|| panic!("stage `{id}` is not part of the recipe"))
    }

    fn transitive(&self, stage: StageId) -> Arc<BTreeSet<KnobId>> {
        let mut known = self.transitive.lock().unwrap_or_else(|e| e.into_inner());
        known.entry(stage).or_insert_with(|| Arc::new(self.recipe.transitive_knobs(stage))).clone()
    }

    /// [`InstanceSpec::upstream`], with the recipe's knob sets computed once.
    pub fn upstream_of(&self, spec: &InstanceSpec, upstream: StageId) -> InstanceSpec {
        spec.upstream_in(upstream, &self.transitive(upstream))
    }

    /// [`InstanceSpec::member_in`] with the member stage's knob set, computed once.
    pub fn member_of(&self, parent: &InstanceSpec, member: &InstanceSpec) -> InstanceSpec {
        parent.member_in(member, &self.transitive(member.stage))
    }
}

/// The event callback that records salsa's `WillExecute` events for
/// [`Database::take_executed`], in this crate's tests only: salsa builds and hands over
/// an event for every read and validation when a callback is installed, a few percent
/// of a no-op build of a large tune.
#[cfg(test)]
fn event_log(engine: &Engine) -> Option<Box<dyn Fn(salsa::Event) + Send + Sync + 'static>> {
    let log = engine.executed.clone();
    Some(Box::new(move |event: salsa::Event| {
        if let salsa::EventKind::WillExecute { database_key } = event.kind {
            let entry = (database_key.ingredient_index(), database_key.key_index());
            log.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
        }
    }))
}

#[cfg(not(test))]
fn event_log(_: &Engine) -> Option<Box<dyn Fn(salsa::Event) + Send + Sync + 'static>> {
    None
}

/// The knob under which the device class is an input (not a user knob).
const DEVICE_KNOB: KnobId = KnobId("@device");

/// Handles of the salsa inputs.
pub struct Inputs {
    knobs: BTreeMap<KnobId, Knob>,
    fingerprints: BTreeMap<String, Fingerprint>,
    /// One slot per registered instance (created outside queries, before any query
    /// can ask for it).
    slots: Mutex<crate::instance::SpecMap<InstanceSpec, Slot>>,
    /// salsa id -> name of every registered instance, to read salsa's events.
    names: Mutex<HashMap<salsa::Id, InstanceName>>,
    registry: Option<Registry>,
}

#[salsa::db]
pub trait Db: salsa::Database {
    fn engine(&self) -> &Engine;
    fn inputs(&self) -> &Inputs;
}

#[salsa::db]
#[derive(Clone)]
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
        let engine = Arc::new(Engine {
            recipe,
            cache,
            progress: Arc::new(NoProgress),
            base_dir: config
                .file
                .as_ref()
                .and_then(|file| file.parent())
                .map(std::path::Path::to_path_buf)
                .unwrap_or_else(|| std::path::PathBuf::from(".")),
            executed: Arc::default(),
            transitive: Mutex::default(),
        });
        let storage = salsa::Storage::new(event_log(&engine));
        let mut db = Database { storage, engine, inputs: Arc::new(Inputs::empty()) };
        let mut knobs: BTreeMap<KnobId, Knob> = db
            .engine
            .recipe
            .schema
            .iter()
            .map(|spec| {
                let value = config.get(spec.name).cloned().unwrap_or_else(|| spec.default.clone());
                (spec.id(), Knob::builder(value).durability(salsa::Durability::HIGH).new(&db))
            })
            .collect();
        let fingerprints = fingerprints
            .into_iter()
            .map(|(name, hash)| (name, Fingerprint::builder(hash).durability(salsa::Durability::HIGH).new(&db)))
            .collect();
        let device = KnobValue::Str(device.to_string());
        knobs.insert(DEVICE_KNOB, Knob::builder(device).durability(salsa::Durability::HIGH).new(&db));
        let registry = Some(Registry::new(&db, 0));
        db.inputs =
            Arc::new(Inputs { knobs, fingerprints, slots: Mutex::default(), names: Mutex::default(), registry });
        db
    }

    /// Replaces the progress reporter (the CLI's progress bars). Call it before
    /// anything shares the engine (a runner); it says whether it could.
    pub fn set_progress(&mut self, progress: Arc<dyn ProgressSink>) -> bool {
        match Arc::get_mut(&mut self.engine) {
            Some(engine) => {
                engine.progress = progress;
                true
            }
            None => {
                tracing::warn!("the engine is shared already: progress is not shown");
                false
            }
        }
    }

    /// Sets every knob whose value differs from `config`; unchanged knobs keep
    /// their revision, so nothing that reads them re-runs.
    pub fn apply_config(&mut self, config: &Config) {
        let inputs = self.inputs.clone();
        for (id, knob) in &inputs.knobs {
            if let Some(value) = config.get(id.0) {
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

    /// Registers `spec` and every instance upstream of it; returns its handle.
    /// (Members are registered as the build meets them: see [`Blocked::Waiting`].)
    pub fn register(&mut self, spec: &InstanceSpec) -> Instance {
        self.register_all(std::slice::from_ref(spec))[0]
    }

    /// [`Database::register`] of each of `specs`, telling salsa of new instances once.
    pub fn register_all(&mut self, specs: &[InstanceSpec]) -> Vec<Instance> {
        let engine = self.engine.clone();
        let recipe = &engine.recipe;
        let mut stack: Vec<InstanceSpec> = specs.to_vec();
        let mut added = false;
        // Sized once: a tune registers its thousand members in one call.
        self.inputs.slots.lock().unwrap_or_else(|e| e.into_inner()).reserve(specs.len());
        while let Some(next) = stack.pop() {
            let mut slots = self.inputs.slots.lock().unwrap_or_else(|e| e.into_inner());
            if slots.contains_key(&next) {
                continue;
            }
            slots.insert(next.clone(), Slot::new(self, None));
            drop(slots);
            added = true;
            let instance = Instance::new(self, next.clone());
            let id = salsa::plumbing::AsId::as_id(&instance);
            // Only this crate's tests read salsa's events (a name formatted per
            // instance costs a 1,000-trial no-op a few percent).
            if cfg!(test) {
                self.inputs.names.lock().unwrap_or_else(|e| e.into_inner()).insert(id, next.name());
            }
            if let Some(stage) = recipe.spec(next.stage.0) {
                stack.extend(stage.upstream.iter().map(|up| engine.upstream_of(&next, *up)));
            }
        }
        if added {
            if let Some(registry) = self.inputs.registry {
                let generation = registry.generation(self);
                registry.set_generation(self).to(generation + 1);
            }
        }
        specs.iter().map(|spec| Instance::new(self, spec.clone())).collect()
    }

    /// Whether `spec` has a slot (was registered).
    pub fn is_registered(&self, spec: &InstanceSpec) -> bool {
        self.inputs.slots.lock().unwrap_or_else(|e| e.into_inner()).contains_key(spec)
    }

    /// Records `done` as the result of `instance` (a cache hit or a finished action).
    /// Setting the same value again changes nothing, so nothing re-runs.
    pub fn set_result(&mut self, instance: Instance, done: Option<Done>) {
        let slot = self.inputs.slot(instance.spec(self));
        if slot.result(self) != &done {
            slot.set_result(self).to(done);
        }
    }

    /// [`Database::set_result`] of a finished or cached instance. Durability is
    /// salsa's shortcut: a query reading only inputs of durability D is re-checked
    /// without walking its edges while no input of durability >= D changed. Knobs and
    /// fingerprints are HIGH (set once per process), the results of the build's own
    /// targets MEDIUM, those of members LOW: settling a thousand trials one by one
    /// then leaves every member's key query, which reads the knobs and the targets'
    /// results only, valid at a glance.
    pub(crate) fn set_settled(&mut self, instance: Instance, done: Done, member: bool) {
        let slot = self.inputs.slot(instance.spec(self));
        let done = Some(done);
        if slot.result(self) != &done {
            let durability = if member { salsa::Durability::LOW } else { salsa::Durability::MEDIUM };
            slot.set_result(self).with_durability(durability).to(done);
        }
    }

    /// Instance names whose query `query` (e.g. `instance_key_inputs`) salsa executed
    /// since the last call, from salsa's `WillExecute` events (recorded in this crate's
    /// tests only; elsewhere always empty).
    pub fn take_executed(&self, query: &str) -> Vec<String> {
        let log = std::mem::take(&mut *self.engine.executed.lock().unwrap_or_else(|e| e.into_inner()));
        let names = self.inputs.names.lock().unwrap_or_else(|e| e.into_inner());
        log.into_iter()
            .filter(|(ingredient, _)| salsa::Database::ingredient_debug_name(self, *ingredient) == query)
            .filter_map(|(_, id)| names.get(&id).map(|name| name.0.clone()))
            .collect()
    }
}

impl Inputs {
    fn empty() -> Inputs {
        Inputs {
            knobs: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
            slots: Mutex::default(),
            names: Mutex::default(),
            registry: None,
        }
    }

    pub fn knob(&self, id: KnobId) -> Knob {
        *self.knobs.get(&id).unwrap_or_else(|| panic!("knob `{id}` is not part of the schema"))
    }

    pub fn fingerprint(&self, name: &str) -> Option<Fingerprint> {
        self.fingerprints.get(name).copied()
    }

    pub fn device(&self) -> Knob {
        self.knob(DEVICE_KNOB)
    }

    fn try_slot(&self, spec: &InstanceSpec) -> Option<Slot> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).get(spec).copied()
    }

    fn slot(&self, spec: &InstanceSpec) -> Slot {
        *self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(spec)
            .unwrap_or_else(|| panic!("instance `{}` was not registered before it was queried", spec.name()))
    }
}

impl crate::runner::RecipeRef for Engine {
    fn recipe(&self) -> &Recipe {
        &self.recipe
    }
}

impl Database {
    /// The engine, shared with runner threads.
    pub fn engine_arc(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    /// A runner that executes actions on threads of this process.
    pub fn local_runner(&self) -> crate::runner::LocalRunner {
        crate::runner::LocalRunner::new(self.engine.clone(), self.engine.cache.clone())
    }
}
