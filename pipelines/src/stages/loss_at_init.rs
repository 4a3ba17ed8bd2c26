//! `loss_at_init`: with the recipe's init (last-layer bias = log priors, small
//! weights) the loss over the whole training split is the label entropy.

use serde::{Deserialize, Serialize};
use serde_json::json;
use workspace::{Checks, ExecError, StageSpec, Verdict, VerdictError};

use super::common::{err, json_bytes, knobs, verdict, Cx, MODEL_KNOBS};
use super::{RecipeStage, Run};
use crate::ids::{knob, stage};
use crate::models::{Init, Model};
use crate::train::evaluate;

pub struct LossAtInit;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub loss: f64,
    pub entropy: f64,
    /// What a framework's default init gives.
    pub naive_loss: f64,
}

impl RecipeStage for LossAtInit {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::LOSS_AT_INIT,
            version: 3,
            doc: "loss at init over the whole training split vs the label entropy",
            knobs: knobs(&[&MODEL_KNOBS, &[knob::TRAIN_SEED]]),
            checks: vec![knob::LOSS_AT_INIT_TOLERANCE],
            upstream: vec![stage::DATA],
            fingerprints: vec![],
            device_dependent: true,
        }
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let data = cx.data()?;
        let train = cx.tensors(&data, &data.train)?;
        let model = cx.recipe_model(&data)?;
        model.set_training(false);
        let (loss, _) = evaluate(&model, &train).map_err(err("loss at init"))?;
        let naive = cx.model_spec(&data)?.build(&Init::Naive, cx.seed()?, &cx.device).map_err(err("naive init"))?;
        naive.set_training(false);
        let (naive_loss, _) = evaluate(&naive, &train).map_err(err("naive loss"))?;
        let priors = data.train_priors();
        let entropy: f64 = priors.iter().filter(|p| **p > 0.0).map(|p| -p * p.ln()).sum();
        let report = json!({ "loss": loss, "entropy": entropy, "naive_loss": naive_loss, "priors": priors });
        Ok(Run {
            artifacts: vec![("init.json".into(), json_bytes(&report)?)],
            metrics: Metrics { loss, entropy, naive_loss },
        })
    }

    fn judge(&self, m: &Metrics, checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        let (loss, entropy, tolerance) = (m.loss, m.entropy, checks.f64(knob::LOSS_AT_INIT_TOLERANCE)?);
        Ok(vec![verdict(
            "loss_at_init",
            (loss - entropy).abs() <= tolerance,
            loss,
            entropy,
            format!(
                "loss at init {loss:.4}, expected the label entropy {entropy:.4} +/- {tolerance} (a naive init gives {:.4})",
                m.naive_loss
            ),
            "initialise the last layer to predict the class priors: bias = log priors, small weights",
        )])
    }
}
