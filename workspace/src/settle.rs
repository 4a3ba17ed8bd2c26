//! Settling the members of fan-in stages (trials, rungs, ensemble members) cheaply.
//!
//! A no-op build of a 1,000-trial tune meets 1,000 cached members. Each is looked up
//! in [`cache::MemberRecord`] (one file, read once) by its name and current key
//! instead of reading and decoding its action entry, its objects are verified through
//! the stat cache as a hit's are, and its copies in `.pipe/out` and its `last/` entry
//! are refreshed only when its key or output differs from the recorded one. A damaged
//! object found by a reader is re-made (the build forgets the member's record first).
//!
//! The record is read, and the objects it names are checked against the stat cache, on
//! a second thread ([`Members::prefetch`]) while the build computes the members' keys: on a no-op of a
//! 1,000-trial tune those 9,000 `fstatat` calls are a fifth of the work.

use std::thread::JoinHandle;

use cache::{ArtifactHash, DigestSet, MemberRecord, OutDir, RecordedMember, StageKey, Store};

use crate::build::{settled_now, StageReport};
use crate::db::{instance_key, instance_output, instance_verdicts, Database, Done, Instance, StageStatus};
use crate::instance::InstanceSpec;
use crate::recipe::StageOutput;

/// The member record of a build, with the objects it names verified ahead.
pub(crate) struct Members {
    out: OutDir,
    store: Store,
    pending: Option<JoinHandle<Prefetched>>,
    ready: Option<Prefetched>,
}

struct Prefetched {
    record: MemberRecord,
    /// Objects [`Store::verify`] accepted on the prefetch thread.
    verified: DigestSet<ArtifactHash>,
}

impl Prefetched {
    fn read(out: &OutDir, store: &Store) -> Prefetched {
        let record = out.members();
        let mut verified = DigestSet::default();
        verified.reserve(record.hashes().count());
        verified.extend(record.hashes().filter(|hash| store.verify(hash)).copied());
        Prefetched { record, verified }
    }
}

impl Members {
    /// The record of `out`, read when first asked for (or ahead, [`Members::prefetch`]).
    pub(crate) fn new(out: OutDir, store: Store) -> Members {
        Members { out, store, pending: None, ready: None }
    }

    /// Starts reading the record, and verifying the objects it names, on a thread of
    /// its own (once; the build calls it when it first meets members).
    pub(crate) fn prefetch(&mut self) {
        if self.pending.is_some() || self.ready.is_some() {
            return;
        }
        let (out, store) = (self.out.clone(), self.store.clone());
        self.pending =
            std::thread::Builder::new().name("pipe-members".into()).spawn(move || Prefetched::read(&out, &store)).ok();
    }

    fn prefetched(&mut self) -> &mut Prefetched {
        if let Some(handle) = self.pending.take() {
            // A panic on the prefetch thread (none is expected): read it here instead.
            self.ready = handle.join().ok();
        }
        let (out, store) = (&self.out, &self.store);
        self.ready.get_or_insert_with(|| Prefetched::read(out, store))
    }

    pub(crate) fn record(&mut self) -> &mut MemberRecord {
        &mut self.prefetched().record
    }

    /// Writes the record back if it was read and changed.
    pub(crate) fn save(&mut self) -> Result<(), cache::CacheError> {
        match (self.pending.is_some(), &mut self.ready) {
            (false, None) => Ok(()),
            (false, Some(done)) => done.record.save(),
            (true, _) => self.record().save(),
        }
    }

    /// Forgets which objects were verified ahead: one was just found damaged by a
    /// reader, so from now on every object is checked when it is looked up.
    pub(crate) fn distrust(&mut self) {
        self.prefetched().verified.clear();
    }

    /// The output recorded for member `spec` under `key`, when its objects are still
    /// in the store as they were last verified (a lost one: the member's entry is
    /// looked up, fails, and the member is re-made).
    pub(crate) fn recorded(&mut self, store: &Store, spec: &InstanceSpec, key: &StageKey) -> Option<StageOutput> {
        let Prefetched { record, verified } = self.prefetched();
        let member = record.get(&spec.name().0, key)?;
        if !member.artifacts.values().all(|artifact| verified.contains(&artifact.hash) || store.verify(&artifact.hash))
        {
            return None;
        }
        Some(StageOutput { artifacts: member.artifacts.clone(), metrics: member.metrics.clone() })
    }
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
