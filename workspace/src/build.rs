//! Plan, then run: the loop the CLI drives.
//!
//! Salsa answers, for every instance of the target, its key and whether the cache
//! holds a result, without executing anything. Each instance whose upstream results
//! are known and whose own result is missing becomes an [`Action`] handed to the
//! runner; up to `jobs` actions run at once, dispatched in recipe order. A finished
//! action's result is fed back into its instance's salsa slot, which unblocks its
//! dependents. After the first failure (a stage error or a failed verdict) nothing new
//! starts and running actions are cancelled, unless `keep_going`.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use cache::{KeyInputs, StageKey};

use crate::action::{Action, ActionOutcome, MemberOutput};
use crate::db::{
    instance_key_inputs, instance_members, instance_output, resolved_knobs, Blocked, Database, Db, Done, Instance,
    StageStatus,
};
use crate::instance::InstanceSpec;
use crate::recipe::{Cancel, StageFailure, StageOutput};
use crate::report::settled_now;
use crate::runner::Runner;

#[derive(Clone, Default)]
pub struct BuildOptions {
    /// Keep building after a failed verdict or stage.
    pub keep_going: bool,
    /// How many actions may run at once (at least 1).
    pub jobs: usize,
    /// Set by Ctrl-C: stop dispatching, abandon running actions, return.
    pub interrupt: Cancel,
}

/// The result of [`build`].
pub struct BuildResult {
    /// One report per instance, in recipe order.
    pub reports: Vec<StageReport>,
    /// Ctrl-C stopped the build.
    pub interrupted: bool,
}

/// The action for `instance`, whose key inputs are known.
pub fn action_for(db: &Database, instance: Instance, inputs: &KeyInputs) -> Action {
    let spec = instance.spec(db);
    let engine = db.engine();
    let stage = engine.stage(spec.stage.0).spec();
    let upstream = stage
        .upstream
        .iter()
        .filter_map(|up| {
            let output = instance_output(db, Instance::new(db, engine.upstream_of(spec, *up))).as_ref()?;
            Some((up.0.to_string(), output.clone()))
        })
        .collect();
    let members = match instance_members(db, instance) {
        Ok(members) => {
            members.iter().filter_map(|(member, output)| Some(MemberOutput::new(member, output.clone()?))).collect()
        }
        Err(_) => Vec::new(),
    };
    Action {
        name: spec.name().0,
        inputs: inputs.clone(),
        knobs: resolved_knobs(db, spec, &stage.knobs)
            .into_iter()
            .map(|(id, value)| (id.0.to_string(), value))
            .collect(),
        upstream,
        members,
        base_dir: engine.base_dir.clone(),
        device: crate::db::device_name(db),
    }
}

/// What [`build`] tells its caller as it goes.
#[derive(Debug, Clone, Copy)]
pub enum BuildEvent<'a> {
    /// An instance settled (cached, ran, failed or skipped).
    Settled(&'a StageReport),
    /// The build now waits for running actions: what the caller buffered of the
    /// instances settled so far should be shown (a no-op's thousand members settle in
    /// one burst, and a write per line was a tenth of it).
    Waiting,
}

/// Builds `instances` (in recipe order, as [`resolve_targets`] gives them), calling
/// `on_stage` as each instance is settled and before each wait for running actions.
pub fn build(
    db: &mut Database,
    instances: &[InstanceSpec],
    options: &BuildOptions,
    runner: Arc<dyn Runner>,
    mut on_stage: impl FnMut(BuildEvent<'_>),
) -> BuildResult {
    let mut instances: Vec<InstanceSpec> = instances.to_vec();
    // Instances met later are only members of a fan-in stage (trials, rungs): their
    // failed verdicts are judged by that stage, so only a failed execution stops the build.
    let targeted = instances.len();
    let stops = |index: usize, report: &StageReport| {
        !options.keep_going && (report.status == Some(StageStatus::Failed) || (index < targeted && report.failed()))
    };
    let mut handles: Vec<Instance> = instances.iter().map(|spec| db.register(spec)).collect();
    // Members settle through their record (crate::settle): no entry reads on a no-op.
    let mut members = crate::settle::Members::new(db.engine().cache.out(), db.engine().cache.store().clone());
    members.prefetch();
    // Every instance of the build -> its index.
    let mut present: crate::instance::SpecMap<InstanceSpec, usize> =
        instances.iter().enumerate().map(|(index, spec)| (spec.clone(), index)).collect();
    // Instances found blocked -> what they waited for: asked again only once one of
    // those settled (a tune is not re-listed while its trials are still unsettled).
    let mut blocked: HashMap<usize, Vec<InstanceSpec>> = HashMap::new();
    let stop = Cancel::default();
    let (sender, receiver) = mpsc::channel::<ActionOutcome>();
    // Keys whose result another claimant of the shared remote produced.
    let fetched: Arc<std::sync::Mutex<HashSet<StageKey>>> = Arc::default();
    let mut reports: HashMap<usize, StageReport> = HashMap::new();
    // key -> indices of the instances waiting for it (equal keys are one action).
    let mut running: HashMap<StageKey, Vec<usize>> = HashMap::new();
    let mut failed_names: HashSet<String> = HashSet::new();
    // Instances re-executed because an object they wrote was found damaged.
    let mut healed: HashSet<usize> = HashSet::new();
    let mut healing: HashSet<cache::ArtifactHash> = HashSet::new();
    // Keys of instances found missing from the cache (index -> key).
    let mut known: HashMap<usize, StageKey> = HashMap::new();
    let mut stopped = false;
    let mut interrupted = false;
    let jobs = options.jobs.max(1);
    loop {
        if options.interrupt.is_cancelled() {
            interrupted = true;
            stop.cancel();
            break;
        }
        // Only as many new actions as there are free slots are built per pass; an
        // instance's key, once known, is final for this build (its upstream results
        // are set once), so later passes do not ask salsa again.
        let free = jobs.saturating_sub(running.len());
        let settled_before = reports.len();
        let mut ready: Vec<(usize, Action)> = Vec::new();
        let mut ready_keys: HashSet<StageKey> = HashSet::new();
        let mut discovered: Vec<InstanceSpec> = Vec::new();
        // Members found cached in this pass, settled after it (see `settle_members`).
        let mut hits: Vec<(usize, Done)> = Vec::new();
        if members.pending() {
            // The members' keys first (memoized: the loop below reads them again), so
            // the record's thread has its time before the first member is looked up.
            let todo: Vec<Instance> = (targeted..handles.len())
                .filter(|index| {
                    !reports.contains_key(index) && !known.contains_key(index) && !blocked.contains_key(index)
                })
                .map(|index| handles[index])
                .collect();
            member_keys(db, &todo);
        }
        for index in 0..handles.len() {
            let instance = &handles[index];
            if stopped || reports.contains_key(&index) {
                continue;
            }
            let unmoved = |waiting: &Vec<InstanceSpec>| {
                waiting.iter().all(|spec| present.get(spec).is_some_and(|at| !reports.contains_key(at)))
            };
            if !known.contains_key(&index) && blocked.get(&index).is_some_and(unmoved) {
                continue;
            }
            let key = match known.get(&index) {
                Some(key) => *key,
                None => match instance_key_inputs(db, *instance).as_ref().map(|_| ()).map_err(Clone::clone) {
                    Err(Blocked::Invalid(message)) => {
                        let report = StageReport {
                            status: Some(StageStatus::Failed),
                            error: Some(message),
                            bad_input: true,
                            ..StageReport::skipped(&instances[index], None, "")
                        };
                        failed_names.insert(report.name.0.clone());
                        stopped |= !options.keep_going;
                        on_stage(BuildEvent::Settled(&report));
                        reports.insert(index, report);
                        continue;
                    }
                    Err(Blocked::Waiting(waiting)) => {
                        if let Some(failed) = waiting.iter().find(|spec| failed_names.contains(&spec.name().0)) {
                            let report = StageReport {
                                status: Some(StageStatus::Failed),
                                error: Some(StageFailure::Upstream(failed.name().0).to_string()),
                                ..StageReport::skipped(&instances[index], None, "")
                            };
                            failed_names.insert(report.name.0.clone());
                            on_stage(BuildEvent::Settled(&report));
                            reports.insert(index, report);
                        } else {
                            // Members (and their upstream) met for the first time.
                            discovered.extend(waiting.iter().filter(|spec| !present.contains_key(spec)).cloned());
                            blocked.insert(index, waiting);
                        }
                        continue;
                    }
                    Ok(()) => {
                        let Some(key) = crate::db::instance_key(db, *instance) else { continue };
                        let member = index >= targeted && !healed.contains(&index);
                        let cached = match instance_output(db, *instance).clone() {
                            Some(output) => Some(output),
                            None => member
                                .then(|| {
                                    let store = db.engine().cache.store();
                                    members.recorded(store, &instances[index], &key)
                                })
                                .flatten()
                                .or_else(|| {
                                    db.engine()
                                        .cache
                                        .actions()
                                        .get_output(&key)
                                        .map(|(artifacts, metrics)| StageOutput::new(artifacts, metrics))
                                }),
                        };
                        if let Some(output) = cached {
                            if member {
                                hits.push((index, Done { key, output }));
                                continue;
                            }
                            db.set_settled(*instance, Done { key, output }, false);
                            let report = settled_now(db, *instance, StageStatus::Cached, 0.0);
                            stopped |= stops(index, &report);
                            on_stage(BuildEvent::Settled(&report));
                            reports.insert(index, report);
                            continue;
                        }
                        known.insert(index, key);
                        key
                    }
                },
            };
            if let Some(waiting) = running.get_mut(&key) {
                if !waiting.contains(&index) {
                    waiting.push(index);
                }
            } else if ready.len() < free && ready_keys.insert(key) {
                if let Ok(inputs) = instance_key_inputs(db, *instance) {
                    let inputs = inputs.clone();
                    ready.push((index, action_for(db, *instance, &inputs)));
                }
            }
        }
        let settled = match hits.is_empty() {
            true => Vec::new(),
            false => crate::settle::settle_members(db, &handles, hits, members.record()),
        };
        for (index, report) in settled {
            stopped |= stops(index, &report);
            on_stage(BuildEvent::Settled(&report));
            reports.insert(index, report);
        }
        let rescan = !stopped && !discovered.is_empty();
        if rescan {
            let new: Vec<InstanceSpec> =
                closure(db, discovered).into_iter().filter(|spec| !present.contains_key(spec)).collect();
            present.reserve(new.len());
            for (offset, spec) in new.iter().enumerate() {
                present.insert(spec.clone(), handles.len() + offset);
            }
            handles.extend(db.register_all(&new));
            instances.extend(new);
        }
        if stopped {
            stop.cancel();
            ready.clear();
        }
        for (index, action) in ready {
            let key = action.key();
            running.insert(key, vec![index]);
            dispatch(db, action, runner.clone(), stop.clone(), sender.clone(), fetched.clone());
        }
        if rescan {
            // Plan the newly met instances before waiting for anything.
            continue;
        }
        if running.is_empty() {
            if reports.len() > settled_before && !stopped {
                // Instances settled from the cache this pass (members found cached):
                // a fan-in stage listed before them can now compute its key.
                continue;
            }
            break;
        }
        // Wait for one action to finish, watching for Ctrl-C.
        on_stage(BuildEvent::Waiting);
        let outcome = loop {
            match receiver.recv_timeout(Duration::from_millis(50)) {
                Ok(outcome) => break Some(outcome),
                Err(mpsc::RecvTimeoutError::Timeout) if options.interrupt.is_cancelled() => break None,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            }
        };
        let Some(outcome) = outcome else { continue };
        let status = match fetched.lock().map(|mut keys| keys.remove(&outcome.key)) {
            Ok(true) => StageStatus::Cached,
            _ => StageStatus::Ran,
        };
        // Every instance with this key gets the result (equal keys are one action).
        let mut waiting = running.remove(&outcome.key).unwrap_or_default();
        for (index, key) in &known {
            if *key == outcome.key && !reports.contains_key(index) && !waiting.contains(index) {
                waiting.push(*index);
            }
        }
        waiting.sort_unstable();
        db.engine().cache.queue().remove(&outcome.key);
        if let Err(StageFailure::DamagedInput { hash, message }) = &outcome.result {
            // An upstream object went bad after its entry was served (bit rot under an
            // unchanged mtime): forget the instances that wrote it, so the next pass
            // looks them up again (the verified lookup quarantines the object and
            // misses), re-executes them, then the instances that read it. Once each.
            let writers: Vec<usize> = reports
                .iter()
                .filter(|(_, report)| {
                    report.output.as_ref().is_some_and(|out| out.artifacts.values().any(|a| a.hash == *hash))
                })
                .map(|(index, _)| *index)
                .collect();
            let being_healed = healing.contains(hash) && writers.is_empty();
            if being_healed {
                // Another reader met the same object first; its writer is running again.
                for index in waiting {
                    known.remove(&index);
                }
                continue;
            }
            if !writers.is_empty() && writers.iter().all(|index| !healed.contains(index)) {
                healing.insert(*hash);
                let names: Vec<String> = writers.iter().map(|index| instances[*index].name().0).collect();
                tracing::warn!(
                    "{message}: re-executing `{}`, then `{}`",
                    names.join("`, `"),
                    outcome_name(&waiting, &instances)
                );
                for index in writers {
                    healed.insert(index);
                    members.distrust();
                    members.record().forget(&instances[index].name().0);
                    db.set_result(handles[index], None);
                    reports.remove(&index);
                    known.remove(&index);
                }
                for index in waiting {
                    known.remove(&index);
                }
                continue;
            }
        }
        for index in waiting {
            let instance = handles[index];
            let report = match &outcome.result {
                Ok(output) => {
                    db.set_settled(instance, Done { key: outcome.key, output: output.clone() }, index >= targeted);
                    if instance_key_inputs(db, instance).is_err() {
                        continue;
                    }
                    match index >= targeted {
                        true => crate::settle::settled_member(db, instance, status, outcome.secs, members.record()),
                        false => settled_now(db, instance, status, outcome.secs),
                    }
                }
                Err(StageFailure::Cancelled) => {
                    StageReport::skipped(&instances[index], Some(outcome.key), "cancelled: an earlier stage failed")
                }
                Err(failure) => {
                    failed_names.insert(instances[index].name().0);
                    StageReport {
                        status: Some(StageStatus::Failed),
                        secs: outcome.secs,
                        error: Some(failure.to_string()),
                        bad_input: matches!(failure, StageFailure::BadInput(_)),
                        ..StageReport::skipped(&instances[index], Some(outcome.key), "")
                    }
                }
            };
            stopped |= stops(index, &report);
            on_stage(BuildEvent::Settled(&report));
            reports.insert(index, report);
        }
    }
    if !interrupted && !stopped && handles.len() > targeted {
        // Entries of members this build did not meet (an earlier count or space) go.
        let names: HashSet<&str> = reports.values().map(|report| report.name.0.as_str()).collect();
        members.record().retain(|name| names.contains(name));
    }
    if let Err(err) = members.save() {
        tracing::warn!(%err, "could not save the member record in .pipe/out");
    }
    if interrupted {
        // Give running actions a moment to notice; whatever they were doing is abandoned.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !running.is_empty() && std::time::Instant::now() < deadline {
            if let Ok(outcome) = receiver.recv_timeout(Duration::from_millis(50)) {
                running.remove(&outcome.key);
                db.engine().cache.queue().remove(&outcome.key);
            }
        }
        for key in running.keys() {
            db.engine().cache.queue().remove(key);
        }
    }
    let recipe_position = |index: &usize| db.engine().recipe.position(instances[*index].stage);
    let mut order: Vec<usize> = (0..handles.len()).collect();
    order.sort_by_key(|index| (recipe_position(index), *index));
    let reports = order
        .into_iter()
        .map(|index| match reports.remove(&index) {
            Some(report) => report,
            None => {
                let why = if interrupted {
                    "interrupted"
                } else {
                    "skipped: an earlier stage failed (use --keep-going to continue)"
                };
                let key = instance_key_inputs(db, handles[index]).as_ref().ok().map(KeyInputs::key);
                let report = StageReport::skipped(&instances[index], key, why);
                if !interrupted {
                    on_stage(BuildEvent::Settled(&report));
                }
                report
            }
        })
        .collect();
    BuildResult { reports, interrupted }
}

/// The keys of `members`, computed on two threads when there are many (a no-op of a
/// 1,000-trial tune: a thousand keys of their own, each a megabyte-free but
/// non-trivial hash): salsa shares the memos between the two handles of the
/// database, and a key is a pure function of its inputs, so the order does not matter.
fn member_keys(db: &Database, members: &[Instance]) {
    const PARALLEL_FROM: usize = 64;
    let keys = |db: &Database, part: &[Instance]| {
        part.iter().for_each(|instance| {
            crate::db::instance_key(db, *instance);
        })
    };
    if members.len() < PARALLEL_FROM {
        return keys(db, members);
    }
    let (first, second) = members.split_at(members.len() / 2);
    let other = db.clone();
    std::thread::scope(|scope| {
        let spawned =
            std::thread::Builder::new().name("pipe-keys".into()).spawn_scoped(scope, move || keys(&other, second));
        keys(db, first);
        if spawned.is_err() {
            keys(db, second);
        }
    });
}

/// The first instance waiting for an outcome, for messages.
fn outcome_name(waiting: &[usize], instances: &[InstanceSpec]) -> String {
    waiting.first().map(|index| instances[*index].name().0).unwrap_or_default()
}

/// Runs `action` on a thread, once it holds the action's claim on the shared remote;
/// when another claimant executes it meanwhile, its result is used instead and the
/// key goes into `fetched` (reported as cached).
fn dispatch(
    db: &Database,
    action: Action,
    runner: Arc<dyn Runner>,
    stop: Cancel,
    sender: mpsc::Sender<ActionOutcome>,
    fetched: Arc<std::sync::Mutex<HashSet<StageKey>>>,
) {
    let engine = db.engine();
    if let Err(error) = engine.cache.queue().put(&action.key(), &action.to_json()) {
        tracing::warn!(%error, "could not queue the action");
    }
    let progress = engine.progress.action(&action.name);
    let actions = engine.cache.actions().clone();
    std::thread::spawn(move || {
        let key = action.key();
        let outcome = match actions.claim(&key, &action.name, &|| stop.is_cancelled()) {
            cache::remote::Claimed::Run(claim) => {
                let outcome = runner.run(&action, progress.as_ref(), &stop);
                drop(claim);
                outcome
            }
            cache::remote::Claimed::Done(manifest) => {
                fetched.lock().map(|mut keys| keys.insert(key)).ok();
                let output = StageOutput::new(manifest.artifacts, manifest.metrics);
                ActionOutcome { key, secs: 0.0, result: Ok(output) }
            }
            cache::remote::Claimed::Cancelled => ActionOutcome { key, secs: 0.0, result: Err(StageFailure::Cancelled) },
        };
        sender.send(outcome).ok();
    });
}

pub use crate::plan::{cached_reports, plan, status, Lookup, Planned, StaleReason, StatusReport};
pub use crate::report::StageReport;
pub use crate::targets::{closure, resolve_targets};
