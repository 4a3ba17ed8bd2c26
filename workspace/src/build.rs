//! Building targets and reporting status: the loop the CLI drives.

use std::collections::BTreeMap;

use cache::{KeyInputs, Manifest, StageKey};

use crate::db::{key_inputs, stage_key, stage_output, stage_verdicts, Database, Db, StageStatus};
use crate::knob::suggest;
use crate::recipe::{StageFailure, StageOutput, Verdict, VerdictStatus};

/// Expands target and stage names into stage ids in dependency order, upstream
/// stages included. An unknown name gets a suggestion.
pub fn resolve_targets(db: &Database, names: &[String]) -> Result<Vec<&'static str>, String> {
    let recipe = &db.engine().recipe;
    let mut wanted: Vec<&'static str> = Vec::new();
    for name in names {
        if let Some(target) = recipe.targets.iter().find(|target| target.name == name) {
            wanted.extend(target.stages.iter().copied());
        } else if let Some(spec) = recipe.spec(name) {
            wanted.push(spec.id);
        } else {
            let candidates = recipe.targets.iter().map(|t| t.name).chain(recipe.stages.iter().map(|s| s.id));
            return Err(match suggest(name, candidates) {
                Some(close) => format!("unknown target or stage `{name}`, did you mean `{close}`?"),
                None => format!(
                    "unknown target or stage `{name}` (targets: {}; stages: {})",
                    recipe.targets.iter().map(|t| t.name).collect::<Vec<_>>().join(", "),
                    recipe.stages.iter().map(|s| s.id).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    // Close over upstream stages, then keep the recipe's (topological) order.
    let mut needed: Vec<&'static str> = Vec::new();
    let mut stack = wanted;
    while let Some(id) = stack.pop() {
        if !needed.contains(&id) {
            needed.push(id);
            if let Some(spec) = recipe.spec(id) {
                stack.extend(spec.upstream.iter().copied());
            }
        }
    }
    Ok(recipe.stages.iter().map(|spec| spec.id).filter(|id| needed.contains(id)).collect())
}

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Keep building after a failed verdict or stage.
    pub keep_going: bool,
}

/// What happened to one stage in a build.
#[derive(Debug, Clone)]
pub struct StageReport {
    pub stage: &'static str,
    pub key: Option<StageKey>,
    /// `None` when the stage was skipped because an earlier one failed.
    pub status: Option<StageStatus>,
    pub secs: f64,
    pub output: Option<StageOutput>,
    pub verdicts: Vec<Verdict>,
    pub error: Option<String>,
    /// The failure was bad user input (a malformed data file): exit 2, not 1.
    pub bad_input: bool,
}

impl StageReport {
    pub fn failed(&self) -> bool {
        self.status == Some(StageStatus::Failed) || self.verdicts.iter().any(|v| v.status == VerdictStatus::Fail)
    }
}

/// Builds `stages` in order, calling `on_stage` as each finishes. Stops after the
/// first failure unless `keep_going`; later stages are reported as skipped.
pub fn build(
    db: &Database,
    stages: &[&'static str],
    options: &BuildOptions,
    mut on_stage: impl FnMut(&StageReport),
) -> Vec<StageReport> {
    let engine = db.engine();
    let mut reports: Vec<StageReport> = Vec::new();
    let mut stopped = false;
    for id in stages {
        let stage = db.inputs().stage(id);
        if stopped {
            let report = StageReport {
                stage: id,
                key: stage_key(db, stage).ok(),
                status: None,
                secs: 0.0,
                output: None,
                verdicts: Vec::new(),
                error: Some("skipped: an earlier stage failed (use --keep-going to continue)".into()),
                bad_input: false,
            };
            on_stage(&report);
            reports.push(report);
            continue;
        }
        engine.take_events();
        let result = stage_output(db, stage).clone();
        let events = engine.take_events();
        let event = events.iter().rev().find(|event| event.stage == *id);
        let (status, secs) = match (&result, event) {
            (_, Some(event)) => (event.status, event.secs),
            (Ok(_), None) => (StageStatus::Cached, 0.0),
            (Err(_), None) => (StageStatus::Failed, 0.0),
        };
        let key = stage_key(db, stage).ok();
        let report = match result {
            Ok(output) => {
                if let Some(key) = key {
                    let manifest = Manifest {
                        stage: id.to_string(),
                        key,
                        inputs: stage_key_inputs_owned(db, id),
                        artifacts: output.artifacts.clone(),
                        metrics: output.metrics.clone(),
                        secs,
                    };
                    if let Err(err) = engine.cache.out().materialize(&manifest) {
                        tracing::warn!(%err, stage = id, "could not refresh .pipe/out");
                    }
                    engine.cache.actions().set_last(&manifest).ok();
                }
                StageReport {
                    stage: id,
                    key,
                    status: Some(status),
                    secs,
                    output: Some(output),
                    verdicts: stage_verdicts(db, stage).clone(),
                    error: None,
                    bad_input: false,
                }
            }
            Err(failure) => StageReport {
                stage: id,
                key,
                status: Some(StageStatus::Failed),
                secs,
                output: None,
                verdicts: Vec::new(),
                error: Some(failure.to_string()),
                bad_input: matches!(failure, StageFailure::BadInput(_)),
            },
        };
        if report.failed() && !options.keep_going {
            stopped = true;
        }
        on_stage(&report);
        reports.push(report);
    }
    reports
}

fn stage_key_inputs_owned(db: &Database, id: &str) -> KeyInputs {
    crate::db::stage_key_inputs(db, db.inputs().stage(id))
        .clone()
        .unwrap_or_else(|_| unreachable!("stage {id} has output"))
}

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
}

#[derive(Debug, Clone)]
pub struct StatusReport {
    pub stage: &'static str,
    pub key: Option<StageKey>,
    /// `None` when cached.
    pub stale: Option<StaleReason>,
}

/// Cached-or-stale for each stage, without executing anything or loading tensors.
pub fn status(db: &Database, stages: &[&'static str]) -> Vec<StatusReport> {
    let engine = db.engine();
    let mut outputs: BTreeMap<&'static str, Option<StageOutput>> = BTreeMap::new();
    let mut reports = Vec::new();
    let device = db.inputs().device().value(db).as_str().unwrap_or("cpu").to_string();
    for id in stages {
        let spec = engine.spec(id);
        let mut upstream = BTreeMap::new();
        let mut stale_upstream = None;
        for up in &spec.upstream {
            match outputs.get(up) {
                Some(Some(output)) => {
                    upstream.insert(*up, output.clone());
                }
                _ => {
                    stale_upstream.get_or_insert(up.to_string());
                }
            }
        }
        if let Some(up) = stale_upstream {
            outputs.insert(id, None);
            reports.push(StatusReport { stage: id, key: None, stale: Some(StaleReason::UpstreamStale(up)) });
            continue;
        }
        let inputs = key_inputs(
            spec,
            |name| db.inputs().knob(name).value(db).canonical(),
            &upstream,
            |name| db.inputs().fingerprint(name).map(|input| input.hash(db)),
            &device,
        );
        let key = inputs.key();
        match engine.cache.actions().get(&key) {
            Some(manifest) => {
                outputs.insert(id, Some(StageOutput { artifacts: manifest.artifacts, metrics: manifest.metrics }));
                reports.push(StatusReport { stage: id, key: Some(key), stale: None });
            }
            None => {
                outputs.insert(id, None);
                let reason = match engine.cache.actions().last(id) {
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
                reports.push(StatusReport { stage: id, key: Some(key), stale: Some(reason) });
            }
        }
    }
    reports
}

impl std::fmt::Display for StaleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StaleReason::NeverBuilt => f.write_str("never built"),
            StaleReason::Changed(reasons) => f.write_str(&reasons.join("; ")),
            StaleReason::CacheDamaged => f.write_str("cached artifacts are missing or corrupt"),
            StaleReason::UpstreamStale(stage) => write!(f, "upstream `{stage}` is stale"),
        }
    }
}

impl From<&StageFailure> for String {
    fn from(failure: &StageFailure) -> String {
        failure.to_string()
    }
}
