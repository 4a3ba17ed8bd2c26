//! `beats_baselines`: the trained model's validation loss against the dumb baselines
//! (and the human agreement beside it). A comparison is a stage because a verdict
//! sees only its own stage's output.

use serde::{Deserialize, Serialize};
use workspace::{Checks, ExecError, StageSpec, Verdict, VerdictError, VerdictStatus};

use super::common::{json_bytes, Cx};
use super::{diagnosis, dumb_baselines, flat, human_baseline, overfit, RecipeStage, Run};
use crate::ids::{knob, stage};

pub struct BeatsBaselines;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub model_val_loss: f64,
    pub model_val_acc: f64,
    pub majority_val_loss: f64,
    pub majority_val_acc: f64,
    pub linear_val_loss: f64,
    pub linear_val_acc: f64,
    /// The model's training loss and its loss at step 0, and `train.lr`, for the hint.
    pub model_train_loss: f64,
    pub model_init_loss: f64,
    pub lr: f64,
    /// Only when `data.human_labels` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub human_acc: Option<f64>,
}

impl RecipeStage for BeatsBaselines {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::BEATS_BASELINES,
            version: 2,
            doc: "the trained model against the dumb (and human) baselines on validation",
            knobs: vec![knob::TRAIN_LR],
            checks: vec![knob::DUMB_BASELINES_FAIL],
            upstream: vec![stage::DUMB_BASELINES, stage::HUMAN_BASELINE, stage::OVERFIT],
            fingerprints: vec![],
            device_dependent: false,
        }
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let lr = cx.f64(knob::TRAIN_LR)?;
        let model: overfit::Metrics = cx.upstream_metrics(stage::OVERFIT)?;
        let dumb: dumb_baselines::Metrics = cx.upstream_metrics(stage::DUMB_BASELINES)?;
        let human: human_baseline::Metrics = cx.upstream_metrics(stage::HUMAN_BASELINE)?;
        let metrics = Metrics {
            model_val_loss: model.val_loss,
            model_val_acc: model.val_acc,
            majority_val_loss: dumb.majority_val_loss,
            majority_val_acc: dumb.majority_val_acc,
            linear_val_loss: dumb.linear_val_loss,
            linear_val_acc: dumb.linear_val_acc,
            model_train_loss: model.train_loss,
            model_init_loss: model.first_train_loss,
            lr,
            human_acc: if human.provided == 1.0 { human.human_acc } else { None },
        };
        // The artifact is the flat metric map (sorted names), as it always was.
        let bytes = json_bytes(&flat::to_map(&metrics)?)?;
        Ok(Run { artifacts: vec![("comparison.json".into(), bytes)], metrics })
    }

    fn judge(&self, m: &Metrics, checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        let warn_or_fail =
            if checks.bool(knob::DUMB_BASELINES_FAIL)? { VerdictStatus::Fail } else { VerdictStatus::Warn };
        let baselines =
            [("majority", m.majority_val_loss, m.majority_val_acc), ("linear", m.linear_val_loss, m.linear_val_acc)];
        Ok(baselines
            .into_iter()
            .map(|(baseline, base, base_acc)| {
                let model = m.model_val_loss;
                let pass = model < base;
                Verdict {
                    check: format!("beats_{baseline}"),
                    status: if pass { VerdictStatus::Pass } else { warn_or_fail },
                    value: model,
                    expected: base,
                    message: format!(
                        "validation loss {model:.4} (acc {:.4}), want below the {baseline} baseline's {base:.4} (acc {base_acc:.4})",
                        m.model_val_acc
                    ),
                    hint: (!pass).then(|| {
                        diagnosis::likely_cause(m.lr, m.model_init_loss, Some(m.model_train_loss), model)
                            .unwrap_or_else(|| "the model does not beat a dumb baseline on validation and does not fit its training split either: do the labels depend on the inputs? check what enters the net and the loss".to_string())
                    }),
                }
            })
            .collect())
    }
}
