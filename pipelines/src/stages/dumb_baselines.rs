//! `dumb_baselines`: the majority class (the training priors) and softmax regression,
//! their validation loss and accuracy.

use serde::{Deserialize, Serialize};
use workspace::{Checks, ExecError, StageSpec, Verdict, VerdictError};

use super::common::{err, json_bytes, train_err, Cx};
use super::{flat, RecipeStage, Run};
use crate::data::Prepared;
use crate::ids::{knob, stage};
use crate::models::{Activation, Init, Mlp, MlpSpec};
use crate::train::{evaluate, Batches, OptimSpec, OptimizerKind, Trainer};

pub struct DumbBaselines;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub majority_val_loss: f64,
    pub majority_val_acc: f64,
    pub linear_val_loss: f64,
    pub linear_val_acc: f64,
}

impl RecipeStage for DumbBaselines {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::DUMB_BASELINES,
            version: 2,
            doc: "majority class and softmax regression on the same splits",
            knobs: vec![knob::DUMB_BASELINES_STEPS, knob::DUMB_BASELINES_LR, knob::TRAIN_SEED, knob::TRAIN_BATCH_SIZE],
            checks: vec![],
            upstream: vec![stage::DATA],
            fingerprints: vec![],
            device_dependent: true,
        }
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let data = cx.data()?;
        let (majority_val_loss, majority_val_acc) = majority(&data);
        let (linear_val_loss, linear_val_acc) = linear(cx, &data)?;
        let metrics = Metrics { majority_val_loss, majority_val_acc, linear_val_loss, linear_val_acc };
        // The artifact is the flat metric map (sorted names), as it always was.
        let bytes = json_bytes(&flat::to_map(&metrics)?)?;
        Ok(Run { artifacts: vec![("baselines.json".into(), bytes)], metrics })
    }

    fn judge(&self, _metrics: &Metrics, _checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        Ok(Vec::new())
    }
}

/// The best input-independent predictor, the training priors: validation (loss, acc).
fn majority(data: &Prepared) -> (f64, f64) {
    let priors = data.train_priors();
    let n_val = data.val.len().max(1) as f64;
    let majority_class =
        priors.iter().enumerate().fold((0, 0.0), |best, (c, &p)| if p > best.1 { (c, p) } else { best }).0;
    let loss = data.val.y.iter().map(|&y| -priors[y as usize].max(1e-12).ln()).sum::<f64>() / n_val;
    let acc = data.val.y.iter().filter(|&&y| y as usize == majority_class).count() as f64 / n_val;
    (loss, acc)
}

/// Softmax regression trained with Adam (explicit knobs): validation (loss, acc).
fn linear(cx: &Cx<'_, '_>, data: &Prepared) -> Result<(f64, f64), ExecError> {
    let (lr, steps) = (cx.f64(knob::DUMB_BASELINES_LR)?, cx.int(knob::DUMB_BASELINES_STEPS)?);
    let (batch_size, seed) = (cx.count(knob::TRAIN_BATCH_SIZE)?, cx.seed()?);
    let spec =
        MlpSpec { n_in: data.n_features(), hidden: vec![], n_out: data.n_classes(), activation: Activation::Relu };
    let log_priors = data.train_priors().iter().map(|p| p.max(1e-12).ln() as f32).collect();
    let model = Mlp::new(&spec, &Init::Recipe { log_priors }, seed, &cx.device).map_err(err("init"))?;
    let optim = OptimSpec { kind: OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, lr, weight_decay: 0.0 };
    let (train, val) = (cx.tensors(data, &data.train)?, cx.tensors(data, &data.val)?);
    let mut trainer = Trainer::new(&model, &optim).map_err(train_err)?;
    let mut batches = Batches::new(&train, batch_size, seed, "dumb_baselines/linear");
    for _ in 0..steps {
        cx.exec.check_cancelled()?;
        let (x, y) = batches.next_batch().map_err(err("batch"))?;
        trainer.step(&x, &y).map_err(train_err)?;
    }
    evaluate(&model, &val).map_err(err("evaluate"))
}
