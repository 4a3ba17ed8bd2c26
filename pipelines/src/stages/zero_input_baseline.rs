//! `zero_input_baseline`: the same short training on real and on all-zero inputs
//! (same seed); a model that uses its inputs does better on the real ones.

use serde::{Deserialize, Serialize};
use serde_json::json;
use workspace::{Checks, ExecError, StageSpec, Verdict, VerdictError};

use super::common::{err, json_bytes, knobs, train_err, verdict, Cx, MODEL_KNOBS, OPTIM_KNOBS};
use super::{diagnosis, flat, RecipeStage, Run};
use crate::data::Prepared;
use crate::ids::{knob, stage};
use crate::train::{evaluate, Batches, SplitTensors, Trainer};

pub struct ZeroInputBaseline;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub real_val_loss: f64,
    pub real_val_acc: f64,
    pub zero_val_loss: f64,
    pub zero_val_acc: f64,
    /// The loss the recipe's init starts from: the entropy of the training labels.
    pub label_entropy: f64,
    /// `train.lr`, for the hint.
    pub lr: f64,
}

impl RecipeStage for ZeroInputBaseline {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::ZERO_INPUT_BASELINE,
            version: 3,
            doc: "the same short training on real and on all-zero inputs",
            knobs: knobs(&[&MODEL_KNOBS, &OPTIM_KNOBS, &[knob::TRAIN_BATCH_SIZE, knob::ZERO_INPUT_STEPS]]),
            checks: vec![knob::ZERO_INPUT_MARGIN],
            upstream: vec![stage::DATA],
            fingerprints: vec![],
            device_dependent: true,
        }
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let data = cx.data()?;
        let steps = cx.count(knob::ZERO_INPUT_STEPS)?;
        let (train, val) = (cx.tensors(&data, &data.train)?, cx.tensors(&data, &data.val)?);
        cx.exec.progress.begin(stage::ZERO_INPUT_BASELINE.as_str(), 2 * steps as u64);
        let real = (train.head(train.len).map_err(err("split"))?, val.head(val.len).map_err(err("split"))?);
        let (real_val_loss, real_val_acc) = train_and_evaluate(cx, &data, &real, steps, 0, "real")?;
        let zero = (train.zeroed().map_err(err("zeros"))?, val.zeroed().map_err(err("zeros"))?);
        let (zero_val_loss, zero_val_acc) = train_and_evaluate(cx, &data, &zero, steps, steps, "zero")?;
        cx.exec.progress.end();
        let label_entropy = data.train_priors().iter().filter(|p| **p > 0.0).map(|p| -p * p.ln()).sum();
        let lr = cx.f64(knob::TRAIN_LR)?;
        let metrics = Metrics { real_val_loss, real_val_acc, zero_val_loss, zero_val_acc, label_entropy, lr };
        let report = json!({ "steps": steps, "results": flat::to_map(&metrics)? });
        Ok(Run { artifacts: vec![("baseline.json".into(), json_bytes(&report)?)], metrics })
    }

    fn judge(&self, m: &Metrics, checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        let (real, zero, margin) = (m.real_val_loss, m.zero_val_loss, checks.f64(knob::ZERO_INPUT_MARGIN)?);
        let mut verdict = verdict(
            "zero_input_baseline",
            zero - real >= margin,
            zero - real,
            margin,
            format!(
                "validation loss {real:.4} on real inputs vs {zero:.4} on all-zero inputs: real inputs must be at \
                 least {margin} lower"
            ),
            "the model does not use its inputs: check what enters the net (normalisation, a detached or zeroed tensor, shuffled labels)",
        );
        if verdict.hint.is_some() {
            if let Some(cause) = diagnosis::likely_cause(m.lr, m.label_entropy, None, real) {
                verdict.hint = Some(cause);
            }
        }
        Ok(vec![verdict])
    }
}

/// Trains a fresh recipe model for `steps` on `(train, val).0`, returns the
/// validation (loss, acc). `offset` and `run` only label progress.
fn train_and_evaluate(
    cx: &Cx<'_, '_>,
    data: &Prepared,
    (train, val): &(SplitTensors, SplitTensors),
    steps: usize,
    offset: usize,
    run: &str,
) -> Result<(f64, f64), ExecError> {
    let batch_size = cx.count(knob::TRAIN_BATCH_SIZE)?;
    let model = cx.recipe_model(data)?;
    let mut trainer = Trainer::new(&model, &cx.optim()?).map_err(train_err)?;
    let mut batches = Batches::new(train, batch_size, cx.seed()?, "train");
    for step in 0..steps {
        cx.exec.check_cancelled()?;
        let (x, y) = batches.next_batch().map_err(err("batch"))?;
        trainer.step(&x, &y).map_err(train_err)?;
        if step % 50 == 0 {
            cx.exec.progress.advance((offset + step) as u64, run);
        }
    }
    model.set_training(false);
    evaluate(&model, val).map_err(err("evaluate"))
}
