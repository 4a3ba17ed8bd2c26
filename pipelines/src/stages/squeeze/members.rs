//! Which models `squeeze` ensembles (`squeeze.members`): k seeds of the configuration,
//! k seeds of the best rung of the `regularize` ladder, or the k best trials of
//! `tune`. Either way each member is an ordinary cached `overfit` instance, so a
//! changed member retrains alone.
//!
//! With `"regularize"`, `squeeze` lists the ladder's rungs until all are known, then
//! the best rung (chosen as `regularize` chooses it: [`ladder::best`]) and that rung
//! under `train.seed + 1`, `+ 2`, ...: the best rung itself is member 0, so the ladder's
//! training is reused.
//!
//! With `"tune"`, `squeeze` reads the tune's knobs (they are in its key, as are the
//! members' artifacts) and lists every trial of the tune's plan (rung by rung, as
//! `tune` does) until all are known, then only the k best: trials at a later halving
//! rung first, then by validation accuracy, loss and trial index, the order `tune`
//! ranks by, so the choice never depends on finish order or `--jobs`.

use std::collections::{BTreeMap, HashSet};

use workspace::{ExecError, InstanceSpec, KnobId, KnobValue, MemberLookup};

use crate::ids::{knob, stage};
use crate::stages::common::Cx;
use crate::stages::regularize::rungs::VOCABULARY_KNOBS;
use crate::stages::regularize::{ladder, Regularize};
use crate::stages::tune::plan::{list_knobs, plan, score, Setup};

/// `squeeze.members`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberSource {
    /// `overfit` under `train.seed`, `train.seed + 1`, ...
    Seeds,
    /// The `squeeze.k` best trials of `tune`.
    Tune,
    /// The best rung of `regularize` under `train.seed`, `train.seed + 1`, ...
    Regularize,
}

impl workspace::ChoiceKnob for MemberSource {
    const OPTIONS: &'static [&'static str] = &["seeds", "tune", "regularize"];

    fn from_index(index: usize) -> MemberSource {
        [MemberSource::Seeds, MemberSource::Tune, MemberSource::Regularize][index]
    }
}

/// The tune's knobs `squeeze` declares (`train.steps` it declares anyway).
pub const TUNE_KNOBS: [KnobId; 6] =
    [knob::TUNE_TRIALS, knob::TUNE_SEED, knob::TUNE_SPACE, knob::TUNE_STEPS, knob::TUNE_HALVING, knob::TUNE_MIN_STEPS];

fn int(knobs: &BTreeMap<KnobId, KnobValue>, id: KnobId) -> Result<i64, String> {
    knobs.get(&id).and_then(KnobValue::as_i64).ok_or(format!("`{id}` is not an integer"))
}

/// The members for the stage's knobs and the member outputs known so far; `ladder`
/// builds the rungs for `"regularize"`.
pub fn members(
    knobs: &BTreeMap<KnobId, KnobValue>,
    known: &dyn MemberLookup,
    ladder: &Regularize,
) -> Result<Vec<InstanceSpec>, String> {
    let k = int(knobs, knob::SQUEEZE_K)?;
    let source = knobs.get(&knob::SQUEEZE_MEMBERS).and_then(KnobValue::as_str);
    match source.and_then(<MemberSource as workspace::ChoiceKnob>::parse) {
        Some(MemberSource::Seeds) => seeds(&[], k, int(knobs, knob::TRAIN_SEED)?),
        Some(MemberSource::Tune) => best_trials(knobs, known, k as usize),
        Some(MemberSource::Regularize) => best_rung_seeds(knobs, known, ladder, k),
        None => Err(format!("`{}` is {source:?}, not one of seeds, tune, regularize", knob::SQUEEZE_MEMBERS)),
    }
}

/// `overfit[overrides]` (under its own seed), then the same with
/// `train.seed = seed + i` for i in 1..k, where `seed` is the seed `overrides` set, or
/// else `default_seed`.
fn seeds(overrides: &[(KnobId, KnobValue)], k: i64, default_seed: i64) -> Result<Vec<InstanceSpec>, String> {
    let own_seed = overrides.iter().find(|(id, _)| *id == knob::TRAIN_SEED).and_then(|(_, value)| value.as_i64());
    let seed = own_seed.unwrap_or(default_seed);
    (0..k)
        .map(|i| {
            let seed = seed.checked_add(i).ok_or(format!("`{}` + {i} overflows", knob::TRAIN_SEED))?;
            // Member 0 keeps the overrides as they are (the same instance, its name
            // and cache entry); later ones add their seed (later entries win).
            let reseeded = (i > 0).then_some((knob::TRAIN_SEED, KnobValue::Int(seed)));
            Ok(InstanceSpec::new(stage::OVERFIT, overrides.iter().cloned().chain(reseeded)))
        })
        .collect()
}

/// Every rung of the ladder while any is unknown; then the best rung under k seeds.
fn best_rung_seeds(
    knobs: &BTreeMap<KnobId, KnobValue>,
    known: &dyn MemberLookup,
    ladder: &Regularize,
    k: i64,
) -> Result<Vec<InstanceSpec>, String> {
    let rungs = ladder.rungs(knobs)?;
    let instances = crate::stages::regularize::rungs::members(&rungs);
    let mut results = Vec::with_capacity(instances.len());
    for instance in &instances {
        match known.output(instance) {
            Some(output) => results.push((instance.clone(), output)),
            None => return Ok(instances),
        }
    }
    let rows = ladder::rows(&rungs, &results).map_err(|error| error.to_string())?;
    let select = knobs.get(&knob::REGULARIZE_SELECT).and_then(KnobValue::as_str);
    let select = select
        .and_then(<ladder::Select as workspace::ChoiceKnob>::parse)
        .ok_or(format!("`{}` is {select:?}, not one of val_loss, val_acc", knob::REGULARIZE_SELECT))?;
    let best = &instances[ladder::best(&rows, select)];
    seeds(&best.overrides, k, int(knobs, knob::TRAIN_SEED)?)
}

/// Every trial of the tune while any is unknown; then the `k` best, best first.
fn best_trials(
    knobs: &BTreeMap<KnobId, KnobValue>,
    known: &dyn MemberLookup,
    k: usize,
) -> Result<Vec<InstanceSpec>, String> {
    let setup = Setup::new(knobs).map_err(|error| error.to_string())?;
    if k > setup.trials {
        return Err(format!(
            "`{}` = {k} asks for more members than the tune has trials (`{}` = {})",
            knob::SQUEEZE_K,
            knob::TUNE_TRIALS,
            setup.trials
        ));
    }
    let plan = plan(&setup, &|spec| known.output(spec));
    let mut scored = Vec::with_capacity(plan.runs.len());
    for run in &plan.runs {
        let member = &plan.members[run.member];
        match known.output(member) {
            Some(output) => scored.push((run, score(&output))),
            // Not all trials are known: list them all, so the engine builds them.
            None => return Ok(plan.runs.iter().map(|run| plan.members[run.member].clone()).collect()),
        }
    }
    scored.sort_by(|(a, sa), (b, sb)| b.rung.cmp(&a.rung).then(sa.rank(sb)).then(a.trial.cmp(&b.trial)));
    let mut seen = HashSet::new();
    Ok(scored
        .into_iter()
        .filter(|(run, _)| seen.insert(run.trial))
        .take(k)
        .map(|(run, _)| plan.members[run.member].clone())
        .collect())
}

/// The knobs `run` does not otherwise need: read (so a missing one is named), and the
/// tune's or the ladder's parsed when it is the source.
pub fn check_source_knobs(cx: &Cx<'_, '_>, source: MemberSource, ladder: &Regularize) -> Result<(), ExecError> {
    let ladder_knobs = [knob::REGULARIZE_RUNGS, knob::REGULARIZE_SELECT];
    for id in TUNE_KNOBS.into_iter().chain(list_knobs()).chain(ladder_knobs).chain(VOCABULARY_KNOBS) {
        cx.exec.knob(id)?;
    }
    match source {
        MemberSource::Tune => {
            Setup::new(cx.exec.knobs).map_err(|error| ExecError::Failed(error.to_string()))?;
        }
        MemberSource::Regularize => {
            ladder.rungs(cx.exec.knobs).map_err(ExecError::Failed)?;
            let _: ladder::Select = cx.choice(knob::REGULARIZE_SELECT)?;
        }
        MemberSource::Seeds => {}
    }
    Ok(())
}
