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
//! a second thread ([`Members::prefetch`]) while the build computes the members' keys
//! (each object is checked once, by whichever thread reaches it first): on a no-op of a
//! 1,000-trial tune those 9,000 `fstatat` calls are a fifth of the work.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use cache::{ArtifactHash, DigestHasher, MemberRecord, OutDir, RecordedMember, StageKey, Store};

use crate::db::{instance_key, instance_output, instance_verdicts, Database, Done, Instance, StageStatus};
use crate::instance::InstanceSpec;
use crate::recipe::StageOutput;
use crate::report::{settled_now, StageReport};

/// The member record of a build, and the checks of the objects it names, shared with
/// the thread that reads it.
pub(crate) struct Members {
    out: OutDir,
    store: Store,
    /// The record and its checks, once the thread has read it.
    pending: Option<Receiver<(MemberRecord, Arc<Checks>)>>,
    ready: Option<(MemberRecord, Arc<Checks>)>,
    /// Whether the build asked for the record (a build without members never waits for it).
    asked: bool,
    /// False once a reader found a damaged object: checks made earlier are not trusted.
    trust: bool,
}

const UNKNOWN: u8 = 0;
const GOOD: u8 = 1;
const BAD: u8 = 2;

/// [`Store::verify`] of each object the record names, made once by whichever thread
/// gets to it first: the record's thread goes from the last object down while the
/// build looks members up from the first.
pub(crate) struct Checks {
    at: HashMap<ArtifactHash, usize, BuildHasherDefault<DigestHasher>>,
    hashes: Vec<ArtifactHash>,
    states: Vec<AtomicU8>,
}

impl Checks {
    fn of(record: &MemberRecord) -> Checks {
        let mut at = HashMap::with_capacity_and_hasher(record.hashes().count(), BuildHasherDefault::default());
        let mut hashes = Vec::with_capacity(at.capacity());
        for hash in record.hashes() {
            at.entry(*hash).or_insert_with(|| {
                hashes.push(*hash);
                hashes.len() - 1
            });
        }
        let states = hashes.iter().map(|_| AtomicU8::new(UNKNOWN)).collect();
        Checks { at, hashes, states }
    }

    fn check_at(&self, store: &Store, index: usize) -> bool {
        match self.states[index].load(Ordering::Acquire) {
            GOOD => true,
            BAD => false,
            _ => {
                let good = store.verify(&self.hashes[index]);
                self.states[index].store(if good { GOOD } else { BAD }, Ordering::Release);
                good
            }
        }
    }

    fn check(&self, store: &Store, hash: &ArtifactHash) -> bool {
        match self.at.get(hash) {
            Some(&index) => self.check_at(store, index),
            None => store.verify(hash),
        }
    }
}

impl Members {
    /// The record of `out`, read when first asked for (or ahead, [`Members::prefetch`]).
    pub(crate) fn new(out: OutDir, store: Store) -> Members {
        Members { out, store, pending: None, ready: None, asked: false, trust: true }
    }

    /// Starts reading the record, then checking the objects it names, on a thread of
    /// its own (once, when the build starts). The thread hands the record over as soon
    /// as it is read and goes on checking; it only reads, so a build that never needed
    /// it leaves it to end with the process.
    pub(crate) fn prefetch(&mut self) {
        if self.pending.is_some() || self.ready.is_some() {
            return;
        }
        let (out, store) = (self.out.clone(), self.store.clone());
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new().name("pipe-members".into()).spawn(move || {
            let record = out.members();
            let checks = Arc::new(Checks::of(&record));
            if sender.send((record, checks.clone())).is_err() {
                return;
            }
            for index in (0..checks.hashes.len()).rev() {
                checks.check_at(&store, index);
            }
        });
        if spawned.is_ok() {
            self.pending = Some(receiver);
        }
    }

    /// Whether the record is still being read.
    pub(crate) fn pending(&self) -> bool {
        self.pending.is_some()
    }

    fn prefetched(&mut self) -> &mut (MemberRecord, Arc<Checks>) {
        self.asked = true;
        if let Some(receiver) = self.pending.take() {
            // A thread that ended without a record (none is expected): read it here instead.
            self.ready = receiver.recv().ok();
        }
        let out = &self.out;
        self.ready.get_or_insert_with(|| {
            let record = out.members();
            let checks = Arc::new(Checks::of(&record));
            (record, checks)
        })
    }

    pub(crate) fn record(&mut self) -> &mut MemberRecord {
        &mut self.prefetched().0
    }

    /// Writes the record back if the build used it and changed it.
    pub(crate) fn save(&mut self) -> Result<(), cache::CacheError> {
        match self.asked {
            true => self.record().save(),
            false => Ok(()),
        }
    }

    /// Forgets the checks made ahead: one object was just found damaged by a reader,
    /// so from now on every object is checked when it is looked up.
    pub(crate) fn distrust(&mut self) {
        self.trust = false;
    }

    /// The output recorded for member `spec` under `key`, when its objects are still
    /// in the store as they were last verified (a lost one: the member's entry is
    /// looked up, fails, and the member is re-made).
    pub(crate) fn recorded(&mut self, store: &Store, spec: &InstanceSpec, key: &StageKey) -> Option<StageOutput> {
        let trust = self.trust;
        let (record, checks) = self.prefetched();
        let member = record.get(&spec.name().0, key)?;
        let good = |hash: &ArtifactHash| match trust {
            true => checks.check(store, hash),
            false => store.verify(hash),
        };
        if !member.artifacts.values().all(|artifact| good(&artifact.hash)) {
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
                member: true,
            };
        }
    }
    let report = StageReport { member: true, ..settled_now(db, instance, status, secs) };
    let key = report.key;
    if let (Some(output), Some(key)) = (&report.output, key) {
        let member = RecordedMember { key, artifacts: output.artifacts.clone(), metrics: output.metrics.clone() };
        record.insert(&name.0, member);
    }
    report
}
