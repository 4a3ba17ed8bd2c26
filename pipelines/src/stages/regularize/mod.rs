//! `regularize`: the recipe's fourth step, a ladder of `overfit` instances, each one
//! change more than the rung before (`regularize.rungs`, see [`rungs`]), all early
//! stopped. The engine builds the rungs as this stage's members (in parallel with
//! `--jobs`, each cached on its own, so adding a rung at the end trains only that
//! rung); this stage reads their results and writes what each change bought
//! ([`ladder`]): `ladder.json`, `ladder.txt`, `curves.svg`, `best.toml`, and the best
//! rung's checkpoint as `checkpoint.safetensors` (the same bytes), with its
//! `val_acc`. [`setup`] holds the readers `overfit` trains with.

pub mod ladder;
pub mod rungs;
pub mod setup;

use std::collections::{BTreeMap, BTreeSet};

use workspace::{Checks, ExecError, InstanceSpec, KnobId, KnobValue, MemberLookup, StageSpec, Verdict, VerdictError};

use super::common::Cx;
use super::{RecipeStage, Run};
use crate::ids::{knob, stage};
use crate::plot::Curves;
use ladder::Metrics;
use rungs::{Ladder, Rung, VOCABULARY_KNOBS};

pub struct Regularize {
    /// The knobs a rung may change: those `overfit` reads, its upstream's included.
    trainable: BTreeSet<KnobId>,
}

impl Regularize {
    /// `trainable`: the knobs of `overfit` and of the stages upstream of it.
    pub fn new(trainable: impl IntoIterator<Item = KnobId>) -> Regularize {
        Regularize { trainable: trainable.into_iter().collect() }
    }

    /// Rung 0 and one rung per entry of `regularize.rungs`, for the stage's knobs.
    pub fn rungs(&self, knobs: &BTreeMap<KnobId, KnobValue>) -> Result<Vec<Rung>, String> {
        let rungs = knobs
            .get(&knob::REGULARIZE_RUNGS)
            .ok_or_else(|| format!("the ladder reads `{}` it did not declare", knob::REGULARIZE_RUNGS))?
            .as_str_list()
            .ok_or_else(|| format!("`{}` is not a list of strings", knob::REGULARIZE_RUNGS))?;
        let schema = crate::knobs::schema();
        Ladder { schema: &schema, trainable: &self.trainable, knobs }.rungs(rungs)
    }
}

impl RecipeStage for Regularize {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        let mut knobs = vec![knob::REGULARIZE_RUNGS, knob::REGULARIZE_SELECT];
        knobs.extend(VOCABULARY_KNOBS);
        StageSpec {
            id: stage::REGULARIZE,
            version: 2,
            doc: "a ladder of early-stopped overfit instances, one change per rung; what each change bought",
            knobs,
            checks: vec![],
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
        _known: &dyn MemberLookup,
    ) -> Result<Vec<InstanceSpec>, String> {
        Ok(rungs::members(&self.rungs(knobs)?))
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let rungs = self.rungs(cx.exec.knobs).map_err(ExecError::Failed)?;
        let select: ladder::Select = cx.choice(knob::REGULARIZE_SELECT)?;
        let members = cx.exec.members;
        let rows = ladder::rows(&rungs, members)?;
        let artifact = |output: &workspace::StageOutput, name: &str| cx.artifact("a ladder rung", output, name);
        let curves = members
            .iter()
            .map(|(_, output)| Ok(Curves::from_metrics_json(&artifact(output, "metrics.json")?)))
            .collect::<Result<Vec<_>, ExecError>>()?;
        let best = ladder::best(&rows, select);
        let (best_instance, best_output) = &members[best];
        let artifacts = vec![
            ("checkpoint.safetensors".to_string(), artifact(best_output, "checkpoint.safetensors")?),
            ("ladder.json".into(), ladder::ladder_json(&rows, best)?),
            ("ladder.txt".into(), ladder::ladder_text(&rows, best).into_bytes()),
            ("curves.svg".into(), ladder::curves_svg(&rows, &curves).into_bytes()),
            ("best.toml".into(), ladder::best_toml(&rows, best, &best_instance.overrides).into_bytes()),
        ];
        Ok(Run { artifacts, metrics: ladder::metrics(&rows, select) })
    }

    fn judge(&self, metrics: &Metrics, _checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        Ok(ladder::verdicts(metrics))
    }
}
