//! The tune stage's knobs, read once, and its members: the untuned config at the
//! trial budget, then every trial of every rung known so far.

use std::collections::BTreeMap;

use workspace::{InstanceSpec, KnobId, KnobKind, KnobValue, SpecMap, StageOutput};

use crate::ids::{knob, stage};
use crate::stages::{overfit, RecipeStage};
use crate::tune::halving::{Halving, Score};
use crate::tune::{Searchable, Space};

/// The knobs `tune` declares besides the int lists it reads for their length.
pub const TUNE_KNOBS: [KnobId; 7] = [
    knob::TUNE_TRIALS,
    knob::TUNE_SEED,
    knob::TUNE_SPACE,
    knob::TUNE_STEPS,
    knob::TUNE_HALVING,
    knob::TUNE_MIN_STEPS,
    knob::TRAIN_STEPS,
];

/// The int-list knobs the trained stage reads: a `log`/`int` draw fills the configured
/// list, so `tune` reads their values (and declares them).
pub fn list_knobs() -> Vec<KnobId> {
    let schema = crate::knobs::schema();
    overfit::Overfit::default()
        .spec()
        .knobs
        .into_iter()
        .filter(|id| schema.iter().any(|spec| spec.name == id.0 && matches!(spec.kind, KnobKind::IntList { .. })))
        .collect()
}

/// What a tune searches, read from its knobs.
#[derive(Debug, Clone)]
pub struct Setup {
    pub space: Space,
    pub trials: usize,
    pub seed: u64,
    /// Training steps of a trial at the last rung (and of the untuned run).
    pub steps: u64,
    /// `train.steps`, the plain `overfit`'s budget.
    pub train_steps: u64,
    pub halving: Option<Halving>,
}

/// A knob the stage did not get (it reads only what it declares), or a bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error("stage `tune` reads knob `{0}` it did not declare")]
    Missing(KnobId),
    #[error("{0}")]
    Invalid(String),
}

fn get(knobs: &BTreeMap<KnobId, KnobValue>, id: KnobId) -> Result<&KnobValue, SetupError> {
    knobs.get(&id).ok_or(SetupError::Missing(id))
}

fn count(knobs: &BTreeMap<KnobId, KnobValue>, id: KnobId) -> Result<u64, SetupError> {
    let value = get(knobs, id)?;
    value
        .as_i64()
        .map(|v| v.max(0) as u64)
        .ok_or_else(|| SetupError::Invalid(format!("`{id}` is {value}, not an integer")))
}

/// Why a knob of the schema cannot be searched.
fn refused(id: KnobId) -> String {
    if id == knob::TRAIN_STEPS {
        "`train.steps` is each trial's budget: set tune.steps (and tune.halving's rungs) instead".into()
    } else if id.as_str().starts_with("data.") {
        format!("`{id}` changes the data, so trials would be scored on different validation splits")
    } else {
        format!("`{id}` does not change the overfit stage's training, so every trial would be the same")
    }
}

impl Setup {
    pub fn new(knobs: &BTreeMap<KnobId, KnobValue>) -> Result<Setup, SetupError> {
        let (trials, seed) = (count(knobs, knob::TUNE_TRIALS)?, count(knobs, knob::TUNE_SEED)?);
        let (steps, train_steps) = (count(knobs, knob::TUNE_STEPS)?, count(knobs, knob::TRAIN_STEPS)?);
        let (eta, min_steps) = (count(knobs, knob::TUNE_HALVING)?, count(knobs, knob::TUNE_MIN_STEPS)?);
        let entries = get(knobs, knob::TUNE_SPACE)?;
        let entries = entries
            .as_str_list()
            .ok_or_else(|| SetupError::Invalid(format!("`tune.space` is {entries}, not a list of strings")))?;
        let lists: Vec<(KnobId, KnobValue)> =
            list_knobs().into_iter().map(|id| Ok((id, get(knobs, id)?.clone()))).collect::<Result<_, _>>()?;
        let current = |id: KnobId| lists.iter().find(|(k, _)| *k == id).map(|(_, v)| v.clone());
        let allowed: Vec<KnobId> =
            overfit::Overfit::default().spec().knobs.into_iter().filter(|id| *id != knob::TRAIN_STEPS).collect();
        let schema = crate::knobs::schema();
        let searchable = Searchable { schema: &schema, allowed: &allowed, refused: &refused, current: &current };
        let space = Space::parse(entries, &searchable).map_err(|error| SetupError::Invalid(error.to_string()))?;
        let steps = if steps == 0 { train_steps } else { steps };
        let halving = match eta {
            0 => None,
            eta => Some(Halving::new(eta, min_steps, steps).map_err(SetupError::Invalid)?),
        };
        Ok(Setup { space, trials: trials as usize, seed, steps, train_steps, halving })
    }

    /// Training steps of each rung (one rung without halving).
    pub fn rungs(&self) -> Vec<u64> {
        self.halving.as_ref().map_or_else(|| vec![self.steps], |h| h.rungs.clone())
    }

    /// The `overfit` instance of trial `trial` trained for `steps`.
    pub fn trial(&self, trial: usize, steps: u64) -> InstanceSpec {
        let mut overrides = self.space.point(self.seed, trial);
        overrides.push((knob::TRAIN_STEPS, KnobValue::Int(steps as i64)));
        InstanceSpec::new(stage::OVERFIT, overrides)
    }

    /// The untuned config at the trials' full budget: the plain `overfit` when the
    /// budget is `train.steps` (already built by the `tune` target, so free).
    pub fn untuned(&self) -> InstanceSpec {
        if self.steps == self.train_steps {
            return InstanceSpec::plain(stage::OVERFIT);
        }
        InstanceSpec::new(stage::OVERFIT, [(knob::TRAIN_STEPS, KnobValue::Int(self.steps as i64))])
    }
}

/// One trial at one rung.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialRun {
    pub trial: usize,
    pub rung: usize,
    pub steps: u64,
    /// Its index in [`Plan::members`].
    pub member: usize,
}

/// Members in the order `members()` returns them (each distinct instance once; the
/// untuned config first), and which member each trial run is.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub members: Vec<InstanceSpec>,
    pub runs: Vec<TrialRun>,
    /// Where each member is in `members` (a tune has thousands: no linear search).
    index: SpecMap<InstanceSpec, usize>,
}

impl Plan {
    fn member(&mut self, spec: InstanceSpec) -> usize {
        match self.index.get(&spec) {
            Some(at) => *at,
            None => {
                self.index.insert(spec.clone(), self.members.len());
                self.members.push(spec);
                self.members.len() - 1
            }
        }
    }

    /// Where `spec` is in `members`.
    pub fn position(&self, spec: &InstanceSpec) -> Option<usize> {
        self.index.get(spec).copied()
    }
}

/// A member output's validation score (NaN where a metric is missing: ranked last).
pub fn score(output: &StageOutput) -> Score {
    let metric = |name: &str| output.metrics.get(name).copied().unwrap_or(f64::NAN);
    Score { val_acc: metric("val_acc"), val_loss: metric("val_loss") }
}

/// Every member known so far, given the outputs found (`output`); the list only
/// grows as outputs arrive (a rung's promotions are appended once it is complete).
pub fn plan(setup: &Setup, output: &dyn Fn(&InstanceSpec) -> Option<StageOutput>) -> Plan {
    let mut plan = Plan { members: Vec::new(), runs: Vec::new(), index: SpecMap::default() };
    plan.member(setup.untuned());
    let rungs = setup.rungs();
    let trials = match &setup.halving {
        None => vec![(0..setup.trials).collect()],
        Some(halving) => {
            halving.plan(setup.trials, |trial, rung| output(&setup.trial(trial, rungs[rung])).map(|out| score(&out)))
        }
    };
    for (rung, members) in trials.iter().enumerate() {
        for &trial in members {
            let member = plan.member(setup.trial(trial, rungs[rung]));
            plan.runs.push(TrialRun { trial, rung, steps: rungs[rung], member });
        }
    }
    plan
}

/// The plan behind `members` (the outputs the engine handed over, in the order
/// `members()` returned them): replanned until no rung is added.
pub fn replan(setup: &Setup, members: &[(InstanceSpec, StageOutput)]) -> Result<Plan, String> {
    let mut current = plan(setup, &|_| None);
    loop {
        let lookup = |spec: &InstanceSpec| {
            let at = current.position(spec)?;
            members.get(at).map(|(_, output)| output.clone())
        };
        let next = plan(setup, &lookup);
        if next.members == current.members {
            break;
        }
        current = next;
    }
    if current.members.len() != members.len() {
        return Err(format!("tune planned {} members but was given {}", current.members.len(), members.len()));
    }
    Ok(current)
}
