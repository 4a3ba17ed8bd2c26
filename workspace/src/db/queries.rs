//! The tracked queries over the database's inputs: an instance's resolved knobs, its
//! members, key inputs and key, whether that key has a result, and its verdicts. They
//! are pure: nothing here executes a stage.

use std::collections::BTreeMap;

use cache::{ArtifactHash, KeyInputs, KnobName, KnobValueText, StageKey};

use super::{Blocked, Db, Instance, Knob};
use crate::instance::InstanceSpec;
use crate::knob::{KnobId, KnobValue};
use crate::recipe::{Checks, Stage, StageOutput, Verdict, VerdictStatus};

/// The values of `ids` for `spec`: its override where it has one, else the config's.
pub(crate) fn resolved_knobs(db: &dyn Db, spec: &InstanceSpec, ids: &[KnobId]) -> BTreeMap<KnobId, KnobValue> {
    ids.iter()
        .map(|id| {
            let value = match spec.override_of(*id) {
                Some(value) => value.clone(),
                None => db.inputs().knob(*id).value(db).clone(),
            };
            (*id, value)
        })
        .collect()
}

pub(crate) fn device_name(db: &dyn Db) -> String {
    db.inputs().device().value(db).as_str().unwrap_or("cpu").to_string()
}

/// The members of a fan-in instance (with its overrides added), as its stage lists
/// them now. Empty for a stage without members. Apart from [`instance_members`] so
/// that settling the members (a new output each) does not list them again: a stage
/// whose list reads no output (a tune without halving) plans its thousand trials once.
#[salsa::tracked(returns(ref))]
pub fn instance_member_specs(db: &dyn Db, instance: Instance) -> Result<Vec<InstanceSpec>, String> {
    let spec = instance.spec(db);
    let engine = db.engine();
    let stage = engine.stage(spec.stage.0);
    let declared = stage.member_stages();
    if declared.is_empty() {
        return Ok(Vec::new());
    }
    let knobs = resolved_knobs(db, spec, &stage.spec().knobs);
    let lookup = Lookup { db, parent: spec };
    let members = stage.members(&knobs, &lookup)?;
    let mut resolved: Vec<InstanceSpec> = Vec::with_capacity(members.len());
    // Each distinct member once (a hash set: a tune lists thousands).
    let mut seen: crate::instance::SpecSet<InstanceSpec> =
        crate::instance::SpecSet::with_capacity_and_hasher(members.len(), Default::default());
    for member in &members {
        if !declared.contains(&member.stage) {
            return Err(format!(
                "stage `{}` lists a member of stage `{}`, which it does not declare (a bug in the stage)",
                spec.stage, member.stage
            ));
        }
        let full = engine.member_of(spec, member);
        if seen.insert(full.clone()) {
            resolved.push(full);
        }
    }
    Ok(resolved)
}

/// The members of a fan-in instance ([`instance_member_specs`]) and the outputs known
/// for them. Empty for a stage without members.
#[salsa::tracked(returns(ref))]
pub fn instance_members(db: &dyn Db, instance: Instance) -> Result<Vec<(InstanceSpec, Option<StageOutput>)>, String> {
    let specs = instance_member_specs(db, instance).as_ref().map_err(Clone::clone)?;
    let lookup = Lookup { db, parent: instance.spec(db) };
    Ok(specs.iter().map(|full| (full.clone(), lookup.full_output(full))).collect())
}

/// Member outputs for [`Stage::members`], read through salsa. An instance not yet
/// registered has no output; reading the registry generation makes salsa ask again
/// once the build registers it.
struct Lookup<'a> {
    db: &'a dyn Db,
    parent: &'a InstanceSpec,
}

impl Lookup<'_> {
    fn full_output(&self, full: &InstanceSpec) -> Option<StageOutput> {
        match self.db.inputs().try_slot(full) {
            Some(_) => instance_output(self.db, Instance::new(self.db, full.clone())).clone(),
            None => {
                if let Some(registry) = self.db.inputs().registry {
                    registry.generation(self.db);
                }
                None
            }
        }
    }
}

impl crate::recipe::MemberLookup for Lookup<'_> {
    fn output(&self, member: &InstanceSpec) -> Option<StageOutput> {
        self.full_output(&self.db.engine().member_of(self.parent, member))
    }
}

/// The inputs of an instance's key: the stage, the resolved values of the knobs it
/// reads, its upstream and member artifact hashes, its input fingerprints and the
/// device class. Never executes anything: an upstream instance or member without a
/// result blocks the key.
#[salsa::tracked(returns(ref))]
pub fn instance_key_inputs(db: &dyn Db, instance: Instance) -> Result<KeyInputs, Blocked> {
    let spec = instance.spec(db);
    let stage = db.engine().stage(spec.stage.0).spec();
    let mut upstream = BTreeMap::new();
    let mut waiting = Vec::new();
    for up in &stage.upstream {
        let up_spec = db.engine().upstream_of(spec, *up);
        let output = match db.inputs().try_slot(&up_spec) {
            Some(_) => instance_output(db, Instance::new(db, up_spec.clone())).clone(),
            None => {
                if let Some(registry) = db.inputs().registry {
                    registry.generation(db);
                }
                None
            }
        };
        match output {
            Some(output) => {
                upstream.insert(*up, output);
            }
            None => waiting.push(up_spec),
        }
    }
    // A stage without members (a trial) does not ask: one query less per trial.
    let members: &[(InstanceSpec, Option<StageOutput>)] = if db.engine().stage(spec.stage.0).member_stages().is_empty()
    {
        &[]
    } else {
        instance_members(db, instance).as_ref().map_err(|message| Blocked::Invalid(message.clone()))?
    };
    waiting.extend(members.iter().filter(|(_, output)| output.is_none()).map(|(member, _)| member.clone()));
    if !waiting.is_empty() {
        return Err(Blocked::Waiting(waiting));
    }
    let knobs = knob_texts(db, spec);
    let fingerprints: BTreeMap<String, ArtifactHash> = stage
        .fingerprints
        .iter()
        .map(|name| {
            let hash = db.inputs().fingerprint(name).map_or(ArtifactHash::of(b""), |input| input.hash(db));
            (name.to_string(), hash)
        })
        .collect();
    let mut inputs = key_inputs(stage, knobs, &upstream, fingerprints, &device_name(db));
    // A fan-in stage's key names every member artifact (a 1,000-trial tune: 9,000):
    // gathered, then built into the map in one go (sorted once), not inserted one by one.
    let mut entries: Vec<(String, ArtifactHash)> =
        Vec::with_capacity(members.iter().filter_map(|(_, output)| output.as_ref()).map(|o| o.artifacts.len()).sum());
    for (member, output) in members {
        if let Some(output) = output {
            // The member's name once, not once per artifact.
            let mut prefix = member.name().0;
            prefix.push('/');
            for (name, artifact) in output.artifacts.iter() {
                let mut entry = String::with_capacity(prefix.len() + name.len());
                entry.push_str(&prefix);
                entry.push_str(name);
                entries.push((entry, artifact.hash));
            }
        }
    }
    if !entries.is_empty() {
        // `collect` sorts stably and keeps the last of equal names (none are expected),
        // as inserting them in this order did.
        inputs.upstream = std::mem::take(&mut inputs.upstream).into_iter().chain(entries).collect();
    }
    Ok(inputs)
}

/// The canonical text of a knob's configured value, computed once per value: each of
/// a thousand trials reads some 36 knobs, nearly all at the config's value.
#[salsa::tracked(returns(ref))]
pub(crate) fn knob_text(db: &dyn Db, knob: Knob) -> KnobValueText {
    knob.value(db).canonical().into()
}

/// The canonical texts of the knobs `spec`'s stage reads (its override where it has one,
/// else the config's value, as [`knob_text`] holds it), by knob name: a stage key's
/// knobs. An instance with overrides starts from its plain stage's texts
/// ([`config_knob_texts`], one query read instead of one per knob) and replaces its
/// overrides. Names are the schema's and texts shared, so this copies no string.
pub(crate) fn knob_texts(db: &dyn Db, spec: &InstanceSpec) -> BTreeMap<KnobName, KnobValueText> {
    if spec.overrides.is_empty() {
        let ids = &db.engine().stage(spec.stage.0).spec().knobs;
        return ids.iter().map(|id| (KnobName::Borrowed(id.0), knob_text(db, db.inputs().knob(*id)).clone())).collect();
    }
    let mut texts = config_knob_texts(db, Instance::new(db, InstanceSpec::plain(spec.stage))).clone();
    for (id, value) in &spec.overrides {
        if let Some(text) = texts.get_mut(id.0) {
            *text = value.canonical().into();
        }
    }
    texts
}

/// [`knob_texts`] of a plain stage (`plain` has no overrides): what each of its
/// instances' key texts start from.
#[salsa::tracked(returns(ref))]
pub(crate) fn config_knob_texts(db: &dyn Db, plain: Instance) -> BTreeMap<KnobName, KnobValueText> {
    knob_texts(db, plain.spec(db))
}

/// The inputs of a stage's key from the canonical texts of its knobs ([`knob_texts`])
/// and its upstream outputs.
pub(crate) fn key_inputs(
    stage: &crate::recipe::StageSpec,
    knobs: BTreeMap<KnobName, KnobValueText>,
    upstream: &BTreeMap<crate::recipe::StageId, StageOutput>,
    fingerprints: BTreeMap<String, ArtifactHash>,
    device: &str,
) -> KeyInputs {
    KeyInputs {
        stage: stage.id.0.to_string(),
        stage_version: stage.version,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        knobs,
        upstream: upstream
            .iter()
            .flat_map(|(stage, output)| {
                output.artifacts.iter().map(move |(name, artifact)| {
                    let mut entry = String::with_capacity(stage.0.len() + 1 + name.len());
                    entry.push_str(stage.0);
                    entry.push('/');
                    entry.push_str(name);
                    (entry, artifact.hash)
                })
            })
            .collect(),
        fingerprints,
        device: if stage.device_dependent { device.to_string() } else { "any".to_string() },
        dtype: "f32".to_string(),
    }
}

/// The key of an instance, when its upstream instances have results. Tracked, so
/// the hash (of thousands of member artifacts, for a fan-in stage) is computed once
/// per change of its inputs, not at each reader.
#[salsa::tracked(returns(copy))]
pub fn instance_key(db: &dyn Db, instance: Instance) -> Option<StageKey> {
    instance_key_inputs(db, instance).as_ref().ok().map(KeyInputs::key)
}

/// An instance's output, when its slot holds a result for its current key.
#[salsa::tracked(returns(ref))]
pub fn instance_output(db: &dyn Db, instance: Instance) -> Option<StageOutput> {
    let key = instance_key(db, instance)?;
    match db.inputs().slot(instance.spec(db)).result(db) {
        Some(done) if done.key == key => Some(done.output.clone()),
        _ => None,
    }
}

/// The verdicts of an instance: a cheap query over its output and its threshold
/// knobs (with its overrides). Empty while it has no output.
#[salsa::tracked(returns(ref))]
pub fn instance_verdicts(db: &dyn Db, instance: Instance) -> Vec<Verdict> {
    let spec = instance.spec(db);
    let stage = db.engine().stage(spec.stage.0);
    let Some(output) = instance_output(db, instance) else { return Vec::new() };
    let checks = &stage.spec().checks;
    if !spec.overrides.iter().any(|(id, _)| checks.contains(id)) {
        // A trial overrides training knobs, not thresholds: its stage's values, read once.
        let plain = Instance::new(db, InstanceSpec::plain(spec.stage));
        return judge(stage.as_ref(), output, config_check_values(db, plain));
    }
    judge(stage.as_ref(), output, &resolved_knobs(db, spec, checks))
}

/// The threshold knobs of a plain stage (`plain` has no overrides), as the config
/// sets them: what the verdicts of its instances read unless they override one.
#[salsa::tracked(returns(ref))]
fn config_check_values(db: &dyn Db, plain: Instance) -> BTreeMap<KnobId, KnobValue> {
    let spec = plain.spec(db);
    resolved_knobs(db, spec, &db.engine().stage(spec.stage.0).spec().checks)
}

/// A stage's verdicts, with an undecodable output or undeclared threshold as a failed verdict.
pub(crate) fn judge(stage: &dyn Stage, output: &StageOutput, checks: &BTreeMap<KnobId, KnobValue>) -> Vec<Verdict> {
    let id = stage.spec().id;
    stage.verdicts(output, &Checks::new(id, checks)).unwrap_or_else(|error| {
        vec![Verdict {
            check: format!("{id}_metrics"),
            status: VerdictStatus::Fail,
            value: f64::NAN,
            expected: f64::NAN,
            message: format!("the verdicts of `{id}` cannot be computed: {error}"),
            hint: Some("this is a bug in the stage; please report it".into()),
        }]
    })
}
