//! What the cache holds for one config, found without executing anything and without
//! changing the cache: each stage's key inputs (when its upstream stages are built),
//! its action entry (when built) and its verdicts under this config's thresholds.
//! `pipe diff` reads a config side this way; `pipe verify` finds what to re-execute.
//!
//! Unlike [`crate::status`], which asks the action cache as a build would (re-hashing
//! objects and moving corrupt ones aside), this only reads entries (`ActionCache::peek`):
//! a diff or a verify must not repair or hide what it is looking at.

use std::collections::BTreeMap;

use cache::{KeyInputs, Manifest, StageKey};

use crate::db::{key_inputs, Database, Db};
use crate::knob::KnobValue;
use crate::recipe::{StageOutput, Verdict};

/// One stage of a config as the cache knows it.
#[derive(Debug, Clone)]
pub struct StageSnapshot {
    pub stage: &'static str,
    /// `None` when an upstream stage is not built, so this stage's key is not known yet.
    pub inputs: Option<KeyInputs>,
    /// The action cache entry under this stage's key, when built.
    pub manifest: Option<Manifest>,
    /// Verdicts over the cached output with this config's thresholds (empty when not built).
    pub verdicts: Vec<Verdict>,
}

impl StageSnapshot {
    pub fn key(&self) -> Option<StageKey> {
        self.inputs.as_ref().map(KeyInputs::key)
    }

    pub fn output(&self) -> Option<StageOutput> {
        self.manifest
            .as_ref()
            .map(|manifest| StageOutput { artifacts: manifest.artifacts.clone(), metrics: manifest.metrics.clone() })
    }
}

/// Snapshots `stages` (in dependency order, upstream stages included, as
/// [`crate::resolve_targets`] gives them).
pub fn snapshot(db: &Database, stages: &[&'static str]) -> Vec<StageSnapshot> {
    let engine = db.engine();
    let device = db.inputs().device().value(db).as_str().unwrap_or("cpu").to_string();
    let mut outputs: BTreeMap<&'static str, StageOutput> = BTreeMap::new();
    let mut snapshots = Vec::new();
    for id in stages {
        let spec = engine.spec(id);
        let upstream: Option<BTreeMap<&'static str, StageOutput>> =
            spec.upstream.iter().map(|up| outputs.get(up).map(|output| (*up, output.clone()))).collect();
        let inputs = upstream.map(|upstream| {
            key_inputs(
                spec,
                |name| db.inputs().knob(name).value(db).canonical(),
                &upstream,
                |name| db.inputs().fingerprint(name).map(|input| input.hash(db)),
                &device,
            )
        });
        let manifest = inputs.as_ref().and_then(|inputs| engine.cache.actions().peek(&inputs.key()));
        let mut snapshot = StageSnapshot { stage: id, inputs, manifest, verdicts: Vec::new() };
        if let Some(output) = snapshot.output() {
            let checks: BTreeMap<&'static str, KnobValue> =
                spec.checks.iter().map(|name| (*name, db.inputs().knob(name).value(db).clone())).collect();
            snapshot.verdicts = engine.recipe.executor.verdicts(id, &output, &checks);
            outputs.insert(id, output);
        }
        snapshots.push(snapshot);
    }
    snapshots
}
