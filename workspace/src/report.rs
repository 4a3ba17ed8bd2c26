//! What the build says of each instance: [`StageReport`], and the report of an
//! instance that has a result ([`settled`]), which also refreshes its copies in
//! `.pipe/out` and its `last/` entry.

use cache::{KeyInputs, Manifest, StageKey};

use crate::db::{instance_key_inputs, instance_output, instance_verdicts, Database, Db, Instance, StageStatus};
use crate::instance::{InstanceName, InstanceSpec};
use crate::recipe::{StageId, StageOutput, Verdict, VerdictStatus};

/// What happened to one instance in a build.
#[derive(Debug, Clone)]
pub struct StageReport {
    /// The instance's name (the stage id when it has no overrides).
    pub name: InstanceName,
    pub stage: StageId,
    pub key: Option<StageKey>,
    /// `None` when the stage was skipped because an earlier one failed.
    pub status: Option<StageStatus>,
    pub secs: f64,
    pub output: Option<StageOutput>,
    pub verdicts: Vec<Verdict>,
    pub error: Option<String>,
    /// The failure was bad user input (a malformed data file): exit 2, not 1.
    pub bad_input: bool,
    /// A member of a fan-in stage (a trial, a rung, an ensemble member) that the build
    /// met through it: its failed verdicts are that stage's to judge (a diverged trial
    /// is a finding of the search), so they do not fail the build. Set when it settled.
    pub member: bool,
}

impl StageReport {
    pub fn failed(&self) -> bool {
        self.status == Some(StageStatus::Failed) || self.verdicts.iter().any(|v| v.status == VerdictStatus::Fail)
    }

    /// Whether this report fails the build: a failed execution, or a failed verdict
    /// of an instance that is not a member ([`StageReport::member`]).
    pub fn fails_build(&self) -> bool {
        self.status == Some(StageStatus::Failed) || (!self.member && self.failed())
    }

    pub(crate) fn skipped(instance: &InstanceSpec, key: Option<StageKey>, why: &str) -> StageReport {
        StageReport {
            name: instance.name(),
            stage: instance.stage,
            key,
            status: None,
            secs: 0.0,
            output: None,
            verdicts: Vec::new(),
            error: Some(why.to_string()),
            bad_input: false,
            member: false,
        }
    }
}

/// [`settled`] with the instance's current key inputs (it has a result, so they are known).
pub(crate) fn settled_now(db: &Database, instance: Instance, status: StageStatus, secs: f64) -> StageReport {
    match instance_key_inputs(db, instance) {
        Ok(inputs) => settled(db, instance, inputs, status, secs),
        Err(_) => StageReport::skipped(instance.spec(db), None, "its inputs are not known"),
    }
}

/// The report of an instance with a result: refreshes `.pipe/out` and `last/`.
pub(crate) fn settled(
    db: &Database,
    instance: Instance,
    inputs: &KeyInputs,
    status: StageStatus,
    secs: f64,
) -> StageReport {
    let spec = instance.spec(db);
    let output = instance_output(db, instance).clone();
    let engine = db.engine();
    let key = crate::db::instance_key(db, instance).unwrap_or_else(|| inputs.key());
    if let Some(output) = &output {
        let manifest = Manifest {
            stage: spec.name().0,
            key,
            inputs: inputs.clone(),
            artifacts: (*output.artifacts).clone(),
            metrics: (*output.metrics).clone(),
            secs,
        };
        if let Err(err) = engine.cache.out().materialize(&manifest) {
            tracing::warn!(%err, stage = %manifest.stage, "could not refresh .pipe/out");
        }
        // `last/` explains staleness later; rewrite it (an fsync) only when it changed.
        if !engine.cache.actions().last_is(&manifest.stage, &key, inputs) {
            engine.cache.actions().set_last(&manifest).ok();
        }
    }
    StageReport {
        name: spec.name(),
        stage: spec.stage,
        key: Some(key),
        status: Some(status),
        secs,
        output,
        verdicts: instance_verdicts(db, instance).clone(),
        error: None,
        bad_input: false,
        member: false,
    }
}
