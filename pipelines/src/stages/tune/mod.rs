//! `tune`: random search as cached trials (the recipe's fifth step).
//!
//! Each trial is an `overfit` instance under the trial's knob values and
//! `train.steps` (see [`crate::tune`] for the space and the sampler), returned by
//! `members()`; the engine builds them (in parallel with `--jobs`) and keys each by its
//! resolved knobs, so a trial already trained (by an earlier, smaller tune, an
//! interrupted one, or another project sharing the cache) is a cache hit. The first
//! member is the untuned config at the trials' budget: the plain `overfit` when
//! `tune.steps` is `train.steps` (the default), so it costs no extra training.
//!
//! With `tune.halving = eta` ([`crate::tune::halving`]), members come rung by rung:
//! rung 0 first, then, once all of a rung is known, the best `1/eta` of it again at the
//! next rung's `train.steps`.
//!
//! `run` reads the members' outputs and writes the tables, `best.toml`, the charts,
//! the knob importance ([`crate::tune::importance`], on rung 0, where every trial had
//! the same budget) and the best trial's checkpoint (the same bytes, so `evaluate` can
//! score it). Verdicts: the best trial beats the untuned config on validation, and no
//! best value lies in the outer `checks.tune.edge` share of its searched range.

mod charts;
pub mod plan;
mod tables;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use workspace::{
    Checks, ExecError, InstanceSpec, KnobId, KnobValue, MemberLookup, StageSpec, Verdict, VerdictError, VerdictStatus,
};

use super::common::{json_bytes, Cx};
use super::{RecipeStage, Run};
use crate::ids::{knob, stage};
use crate::tune::halving::ranked;
use crate::tune::importance::{bin, bins, explained, Importance};
use crate::tune::Dist;
use plan::{list_knobs, replan, score, Setup, TUNE_KNOBS};
use tables::{best_toml, trials_csv, trials_json, Row, Summary};

pub struct Tune;

/// Prefix of the metrics that place the best value of a range knob in its range.
const POSITION: &str = "position:";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// The best trial's validation accuracy and loss (at the last rung).
    pub val_acc: f64,
    pub val_loss: f64,
    pub best_trial: f64,
    pub best_steps: f64,
    pub trials: f64,
    pub untuned_val_acc: f64,
    pub untuned_val_loss: f64,
    /// `position:<knob>`: where the best value of each range knob lies in its searched
    /// range, 0 at the low end, 1 at the high end (log space for `log`).
    #[serde(flatten)]
    pub positions: BTreeMap<String, f64>,
}

fn setup(knobs: &BTreeMap<KnobId, KnobValue>) -> Result<Setup, String> {
    Setup::new(knobs).map_err(|error| error.to_string())
}

impl RecipeStage for Tune {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        let mut knobs: Vec<KnobId> = TUNE_KNOBS.to_vec();
        knobs.extend(list_knobs());
        StageSpec {
            id: stage::TUNE,
            version: 1,
            doc: "random search: overfit trials over tune.space; tables, charts, importance, best checkpoint",
            knobs,
            checks: vec![knob::TUNE_EDGE],
            upstream: vec![],
            fingerprints: vec![],
            device_dependent: false,
        }
    }

    fn member_stages(&self) -> Vec<workspace::StageId> {
        vec![stage::OVERFIT]
    }

    fn members(
        &self,
        knobs: &BTreeMap<KnobId, KnobValue>,
        known: &dyn MemberLookup,
    ) -> Result<Vec<InstanceSpec>, String> {
        let setup = setup(knobs)?;
        Ok(plan::plan(&setup, &|spec| known.output(spec)).members)
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let setup = setup(cx.exec.knobs).map_err(ExecError::Failed)?;
        let members = cx.exec.members;
        let plan = replan(&setup, members).map_err(ExecError::Failed)?;
        let rows: Vec<Row> = plan
            .runs
            .iter()
            .map(|run| Row {
                trial: run.trial,
                rung: run.rung,
                steps: run.steps,
                knobs: setup.space.point(setup.seed, run.trial),
                output: members[run.member].1.clone(),
            })
            .collect();
        let untuned = Row { trial: 0, rung: 0, steps: setup.steps, knobs: vec![], output: members[0].1.clone() };
        let last_rung = rows.iter().map(|r| r.rung).max();
        let finalists: Vec<(usize, crate::tune::halving::Score)> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| Some(r.rung) == last_rung)
            .map(|(i, r)| (i, score(&r.output)))
            .collect();
        // `ranked` breaks ties by the first element: rows are in trial order per rung.
        let best = ranked(&finalists).first().map(|&i| &rows[i]).ok_or_else(|| {
            ExecError::Failed("tune.trials is 0: there is no trial to pick (set tune.trials to at least 1)".into())
        })?;
        let shares = importance(&setup, &rows);
        let mut metrics = Metrics {
            val_acc: best.metric("val_acc"),
            val_loss: best.metric("val_loss"),
            best_trial: best.trial as f64,
            best_steps: best.steps as f64,
            trials: setup.trials as f64,
            untuned_val_acc: untuned.metric("val_acc"),
            untuned_val_loss: untuned.metric("val_loss"),
            positions: BTreeMap::new(),
        };
        for (dim, (_, value)) in setup.space.dims.iter().zip(&best.knobs) {
            if let (Some(position), false) = (dim.position(value), matches!(dim.dist, Dist::Choice(_))) {
                metrics.positions.insert(format!("{POSITION}{}", dim.knob), position);
            }
        }
        let checkpoint = cx.artifact(&format!("trial {}", best.trial), &best.output, "checkpoint.safetensors")?;
        let entries = cx.exec.knob(knob::TUNE_SPACE)?.as_str_list().unwrap_or_default();
        let rungs = setup.rungs();
        let summary =
            Summary { space: entries, seed: setup.seed, rungs: &rungs, untuned: &untuned, best, importance: &shares };
        let knob_ids: Vec<KnobId> = setup.space.dims.iter().map(|d| d.knob).collect();
        let artifacts = vec![
            ("trials.json".to_string(), json_bytes(&trials_json(&rows, &summary))?),
            ("trials.csv".to_string(), trials_csv(&rows, &knob_ids).into_bytes()),
            ("best.toml".to_string(), best_toml(best, setup.trials).into_bytes()),
            (
                "scatter.svg".to_string(),
                charts::scatter(&setup.space.dims, &rows, &rungs, metrics.untuned_val_acc).into_bytes(),
            ),
            ("importance.svg".to_string(), charts::importance(&shares, setup.trials).into_bytes()),
            ("checkpoint.safetensors".to_string(), checkpoint),
        ];
        Ok(Run { artifacts, metrics })
    }

    fn judge(&self, m: &Metrics, checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        let edge = checks.f64(knob::TUNE_EDGE)?;
        let best = crate::tune::halving::Score { val_acc: m.val_acc, val_loss: m.val_loss };
        let untuned = crate::tune::halving::Score { val_acc: m.untuned_val_acc, val_loss: m.untuned_val_loss };
        let beats = best.rank(&untuned).is_lt();
        let mut verdicts = vec![Verdict {
            check: "beats_untuned".into(),
            status: if beats { VerdictStatus::Pass } else { VerdictStatus::Warn },
            value: m.val_acc,
            expected: m.untuned_val_acc,
            message: format!(
                "best trial {} has val_acc {:.4} (val_loss {:.4}); the untuned config {:.4} ({:.4})",
                m.best_trial, m.val_acc, m.val_loss, m.untuned_val_acc, m.untuned_val_loss
            ),
            hint: (!beats).then(|| {
                "no trial beats the untuned config: search around it (narrow tune.space to its values), add trials, or search other knobs".to_string()
            }),
        }];
        for (name, &position) in &m.positions {
            let Some(knob) = name.strip_prefix(POSITION) else { continue };
            let side = if position > 1.0 - edge {
                Some("upward")
            } else if position < edge {
                Some("downward")
            } else {
                None
            };
            verdicts.push(Verdict {
                check: format!("range:{knob}"),
                status: if side.is_some() { VerdictStatus::Warn } else { VerdictStatus::Pass },
                value: position,
                expected: edge,
                message: format!(
                    "the best {knob} lies at {:.0}% of its searched range (warn within {:.0}% of either end)",
                    position * 100.0,
                    edge * 100.0
                ),
                hint: side.map(|side| format!("widen the range of {knob} {side}: the optimum may lie outside it")),
            });
        }
        Ok(verdicts)
    }
}

/// Each knob's importance over the rung-0 results (every trial, the same budget).
fn importance(setup: &Setup, rows: &[Row]) -> Vec<(KnobId, Importance)> {
    let first: Vec<&Row> = rows.iter().filter(|r| r.rung == 0).collect();
    let values: Vec<f64> = first.iter().map(|r| r.metric("val_acc")).collect();
    setup
        .space
        .dims
        .iter()
        .enumerate()
        .map(|(d, dim)| {
            let count = bins(first.len());
            let groups: Vec<usize> = first
                .iter()
                .map(|row| {
                    let value = &row.knobs[d].1;
                    match &dim.dist {
                        Dist::Choice(options) => options.iter().position(|o| o == value).unwrap_or(0),
                        _ => bin(dim.position(value).unwrap_or(0.0), count),
                    }
                })
                .collect();
            (dim.knob, explained(&groups, &values))
        })
        .collect()
}

#[cfg(test)]
mod tests;
