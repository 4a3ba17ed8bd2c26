//! The plan without a build: each instance's key and cached entry, found without
//! executing anything (`pipe status`, `show`, `report`, `diff`, `verify`). Members of
//! fan-in stages are planned as they are met, before the stage itself.

use cache::{KeyInputs, Manifest, StageKey};

use crate::build::closure;
use crate::db::{instance_key_inputs, instance_members, Blocked, Database, Db, Done, StageStatus};
use crate::instance::{InstanceName, InstanceSpec};
use crate::recipe::{StageId, StageOutput};
use crate::report::{settled, StageReport};

/// Why a stage is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleReason {
    NeverBuilt,
    /// Knob or input changes since the latest build, in words.
    Changed(Vec<String>),
    /// The cached entry exists under the same key but its objects are missing or corrupt.
    CacheDamaged,
    /// An upstream stage is stale, so this key cannot be known yet.
    UpstreamStale(String),
    /// The stage's members cannot be listed (a configuration error).
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct StatusReport {
    pub name: InstanceName,
    pub stage: StageId,
    pub key: Option<StageKey>,
    /// `None` when cached.
    pub stale: Option<StaleReason>,
}

/// How the plan reads the action cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Verify every object (moving damaged ones aside), as a build does.
    Verified,
    /// Read the entry as it is, changing nothing (`pipe diff`, `pipe verify`).
    Peek,
}

/// One instance as the cache knows it, found without executing anything.
#[derive(Debug, Clone)]
pub struct Planned {
    pub instance: InstanceSpec,
    /// `Err` says which upstream instances or members have no result, or why the
    /// members cannot be listed.
    pub inputs: Result<KeyInputs, Blocked>,
    pub manifest: Option<Manifest>,
}

/// Walks `instances` in order, filling each one's salsa slot from the action cache.
/// Members of fan-in stages are planned as they are met, before the stage itself.
pub fn plan(db: &mut Database, instances: &[InstanceSpec], lookup: Lookup) -> Vec<Planned> {
    let mut planned: Vec<Planned> = Vec::with_capacity(instances.len());
    let mut queue: std::collections::VecDeque<InstanceSpec> = instances.iter().cloned().collect();
    let mut present: crate::instance::SpecSet<InstanceSpec> = instances.iter().cloned().collect();
    while let Some(spec) = queue.pop_front() {
        let instance = db.register(&spec);
        // Every member is planned (and listed) too, with or without a result.
        let mut needed: Vec<InstanceSpec> = match instance_members(db, instance) {
            Ok(members) => members.iter().map(|(member, _)| member.clone()).collect(),
            Err(_) => Vec::new(),
        };
        if let Err(Blocked::Waiting(waiting)) = instance_key_inputs(db, instance) {
            needed.extend(waiting.iter().cloned());
        }
        {
            let new: Vec<InstanceSpec> = needed.into_iter().filter(|spec| !present.contains(spec)).collect();
            if !new.is_empty() {
                // Plan the members (and their upstream) first, then this instance again.
                queue.push_front(spec);
                for member in closure(db, new).into_iter().rev() {
                    if present.insert(member.clone()) {
                        queue.push_front(member);
                    }
                }
                continue;
            }
        }
        let inputs = instance_key_inputs(db, instance).clone();
        let mut manifest = None;
        if let Ok(inputs) = &inputs {
            let key = inputs.key();
            let actions = db.engine().cache.actions();
            manifest = match lookup {
                Lookup::Verified => actions.get(&key),
                Lookup::Peek => actions.peek(&key),
            };
            let done = manifest.as_ref().map(|manifest| Done {
                key,
                output: StageOutput::new(manifest.artifacts.clone(), manifest.metrics.clone()),
            });
            db.set_result(instance, done);
        }
        planned.push(Planned { instance: spec, inputs, manifest });
    }
    planned
}

/// Cached-or-stale for each instance, without executing anything or loading tensors.
pub fn status(db: &mut Database, instances: &[InstanceSpec]) -> Vec<StatusReport> {
    let engine_actions = db.engine().cache.actions().clone();
    plan(db, instances, Lookup::Verified)
        .into_iter()
        .map(|planned| {
            let name = planned.instance.name();
            let (key, stale) = match (&planned.inputs, &planned.manifest) {
                (Err(Blocked::Invalid(message)), _) => (None, Some(StaleReason::Invalid(message.clone()))),
                (Err(Blocked::Waiting(waiting)), _) => {
                    let first = waiting.first().map(|spec| spec.name().0).unwrap_or_default();
                    (None, Some(StaleReason::UpstreamStale(first)))
                }
                (Ok(inputs), Some(_)) => (Some(inputs.key()), None),
                (Ok(inputs), None) => {
                    let reason = match engine_actions.last(name.as_str()) {
                        None => StaleReason::NeverBuilt,
                        Some(last) => {
                            let reasons = inputs.explain_change(&last);
                            if reasons.is_empty() {
                                StaleReason::CacheDamaged
                            } else {
                                StaleReason::Changed(reasons)
                            }
                        }
                    };
                    (Some(inputs.key()), Some(reason))
                }
            };
            StatusReport { name, stage: planned.instance.stage, key, stale }
        })
        .collect()
}

impl std::fmt::Display for StaleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StaleReason::NeverBuilt => f.write_str("never built"),
            StaleReason::Changed(reasons) => f.write_str(&reasons.join("; ")),
            StaleReason::CacheDamaged => f.write_str("cached artifacts are missing or corrupt"),
            StaleReason::UpstreamStale(stage) => write!(f, "upstream `{stage}` is stale"),
            StaleReason::Invalid(message) => f.write_str(message),
        }
    }
}

/// Reports of instances that are all cached, answered from the action cache (for
/// `pipe show` and `pipe report`); `None` when one is not.
pub fn cached_reports(db: &mut Database, instances: &[InstanceSpec]) -> Option<Vec<StageReport>> {
    let planned = plan(db, instances, Lookup::Verified);
    let mut reports = Vec::new();
    for planned in planned {
        let inputs = planned.inputs.ok()?;
        planned.manifest.as_ref()?;
        let instance = db.register(&planned.instance);
        reports.push(settled(db, instance, &inputs, StageStatus::Cached, 0.0));
    }
    Some(reports)
}
