//! What the cache holds for one config, found without executing anything and without
//! changing the cache: each instance's key inputs (when its upstream instances are
//! built), its action entry (when built) and its verdicts under this config's
//! thresholds. `pipe diff` reads a config side this way; `pipe verify` finds what to
//! re-execute.
//!
//! Unlike [`crate::status`], which asks the action cache as a build would (re-hashing
//! objects and moving corrupt ones aside), this only reads entries (`ActionCache::peek`):
//! a diff or a verify must not repair or hide what it is looking at.

use cache::{KeyInputs, Manifest, StageKey};

use crate::build::{plan, Lookup};
use crate::db::{instance_verdicts, Database};
use crate::instance::{InstanceName, InstanceSpec};
use crate::recipe::{StageId, StageOutput, Verdict};

/// One instance of a config as the cache knows it.
#[derive(Debug, Clone)]
pub struct StageSnapshot {
    pub instance: InstanceSpec,
    pub name: InstanceName,
    pub stage: StageId,
    /// `None` when an upstream instance is not built, so this key is not known yet.
    pub inputs: Option<KeyInputs>,
    /// The action cache entry under this instance's key, when built.
    pub manifest: Option<Manifest>,
    /// Verdicts over the cached output with this config's thresholds (empty when not built).
    pub verdicts: Vec<Verdict>,
}

impl StageSnapshot {
    pub fn key(&self) -> Option<StageKey> {
        self.inputs.as_ref().map(KeyInputs::key)
    }

    pub fn output(&self) -> Option<StageOutput> {
        self.manifest.as_ref().map(|manifest| StageOutput::new(manifest.artifacts.clone(), manifest.metrics.clone()))
    }
}

/// Snapshots `instances` (in recipe order, upstream included, as
/// [`crate::resolve_targets`] gives them).
pub fn snapshot(db: &mut Database, instances: &[InstanceSpec]) -> Vec<StageSnapshot> {
    plan(db, instances, Lookup::Peek)
        .into_iter()
        .map(|planned| {
            let instance = db.register(&planned.instance);
            let verdicts =
                if planned.manifest.is_some() { instance_verdicts(db, instance).clone() } else { Vec::new() };
            StageSnapshot {
                name: planned.instance.name(),
                stage: planned.instance.stage,
                instance: planned.instance,
                inputs: planned.inputs.ok(),
                manifest: planned.manifest,
                verdicts,
            }
        })
        .collect()
}
