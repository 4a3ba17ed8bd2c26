//! Settling the members of fan-in stages (trials, rungs, ensemble members) cheaply.
//!
//! A no-op build of a 1,000-trial tune meets 1,000 cached members. Each is looked up
//! in [`cache::MemberRecord`] (one file, read once) by its name and current key
//! instead of reading and decoding its action entry, its objects are verified through
//! the stat cache as a hit's are, and its copies in `.pipe/out` and its `last/` entry
//! are refreshed only when its key or output differs from the recorded one. A damaged
//! object found by a reader is re-made (the build forgets the member's record first).

use cache::{MemberRecord, RecordedMember, StageKey};

use crate::build::{settled_now, StageReport};
use crate::db::{instance_key, instance_output, instance_verdicts, Database, Done, Instance, StageStatus};
use crate::instance::InstanceSpec;
use crate::recipe::StageOutput;

/// The output recorded for member `spec` under `key`, when its objects are still in
/// the store as they were last verified (a lost one: the member's entry is looked up,
/// fails, and the member is re-made).
pub(crate) fn recorded(
    record: &MemberRecord,
    store: &cache::Store,
    spec: &InstanceSpec,
    key: &StageKey,
) -> Option<StageOutput> {
    let member = record.get(&spec.name().0, key)?;
    if !member.artifacts.values().all(|artifact| store.verify(&artifact.hash)) {
        return None;
    }
    Some(StageOutput { artifacts: member.artifacts.clone(), metrics: member.metrics.clone() })
}

/// Sets the results of the members found cached in one pass of the build loop, then
/// settles them ([`settled_member`]). Each set is a new salsa revision: settling
/// between sets would re-verify every member's shared upstream queries once per
/// member (a 1,000-trial tune: a million edge checks); in a row, once.
pub(crate) fn settle_members(
    db: &mut Database,
    handles: &[Instance],
    hits: Vec<(usize, Done)>,
    record: &mut MemberRecord,
) -> Vec<(usize, StageReport)> {
    let indices: Vec<usize> = hits.iter().map(|(index, _)| *index).collect();
    for (index, done) in hits {
        db.set_settled(handles[index], done, true);
    }
    indices
        .into_iter()
        .map(|index| (index, settled_member(db, handles[index], StageStatus::Cached, 0.0, record)))
        .collect()
}

/// [`settled`] for a member: out/ and last/ are left alone when the record already
/// holds this key and output; otherwise they are refreshed and the record updated.
pub(crate) fn settled_member(
    db: &Database,
    instance: Instance,
    status: StageStatus,
    secs: f64,
    record: &mut MemberRecord,
) -> StageReport {
    let spec = instance.spec(db);
    let name = spec.name();
    if let (Some(key), Some(output)) = (instance_key(db, instance), instance_output(db, instance)) {
        let unchanged = record
            .get(&name.0, &key)
            .is_some_and(|member| member.artifacts == output.artifacts && member.metrics == output.metrics);
        if unchanged {
            return StageReport {
                name,
                stage: spec.stage,
                key: Some(key),
                status: Some(status),
                secs,
                output: Some(output.clone()),
                verdicts: instance_verdicts(db, instance).clone(),
                error: None,
                bad_input: false,
            };
        }
    }
    let report = settled_now(db, instance, status, secs);
    let key = report.key;
    if let (Some(output), Some(key)) = (&report.output, key) {
        let member = RecordedMember { key, artifacts: output.artifacts.clone(), metrics: output.metrics.clone() };
        record.insert(&name.0, member);
    }
    report
}
