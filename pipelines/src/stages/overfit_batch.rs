//! `overfit_batch`: fixed tiny batches (`checks.overfit_batch.size`) trained to a
//! near-zero loss; a model that cannot memorise them has a bug.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use workspace::{Checks, ExecError, StageSpec, Verdict, VerdictError};

use super::common::{argmax, err, json_bytes, knobs, train_err, verdict, Cx, MODEL_KNOBS, OPTIM_KNOBS};
use super::{RecipeStage, Run};
use crate::data::Prepared;
use crate::ids::{knob, stage};
use crate::models::Model;
use crate::render::{charts_svg, is_image, tiles_at, Panel, Scale, Series, PALETTE};
use crate::train::{evaluate, SplitTensors, Trainer};

pub struct OverfitBatch;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub target_loss: f64,
    /// `size_{n}_loss` and `size_{n}_steps` for each batch size n.
    #[serde(flatten)]
    pub sizes: BTreeMap<String, f64>,
}

#[derive(Serialize)]
struct BatchExample {
    /// Index in the raw dataset.
    index: u32,
    label: u32,
    predicted: u32,
    prob_label: f64,
}

#[derive(Serialize)]
struct BatchResult {
    size: usize,
    steps: usize,
    final_loss: f64,
    losses: Vec<f64>,
    examples: Vec<BatchExample>,
}

impl RecipeStage for OverfitBatch {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::OVERFIT_BATCH,
            version: 4,
            doc: "overfit fixed tiny batches to near-zero loss",
            knobs: knobs(&[
                &MODEL_KNOBS,
                &OPTIM_KNOBS,
                &[knob::OVERFIT_BATCH_SIZE, knob::OVERFIT_BATCH_TARGET_LOSS, knob::OVERFIT_BATCH_MAX_STEPS],
            ]),
            checks: vec![],
            upstream: vec![stage::DATA],
            fingerprints: vec![],
            device_dependent: true,
        }
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let sizes = cx.int_list(knob::OVERFIT_BATCH_SIZE)?.to_vec();
        let target = cx.f64(knob::OVERFIT_BATCH_TARGET_LOSS)?;
        let max_steps = cx.count(knob::OVERFIT_BATCH_MAX_STEPS)?;
        let data = cx.data()?;
        let train = cx.tensors(&data, &data.train)?;
        let mut metrics = Metrics { target_loss: target, sizes: BTreeMap::new() };
        let mut results = Vec::new();
        for size in sizes {
            let result = overfit_one(cx, &data, &train, size as usize, target, max_steps)?;
            metrics.sizes.insert(format!("size_{}_loss", result.size), result.final_loss);
            metrics.sizes.insert(format!("size_{}_steps", result.size), result.steps as f64);
            results.push(result);
        }
        let mut artifacts = vec![
            ("predictions.json".into(), json_bytes(&results)?),
            ("loss.svg".into(), loss_chart(&results).into_bytes()),
        ];
        if let Some(picture) = batch_picture(&data, &results) {
            artifacts.push(("batch.png".into(), picture));
        }
        Ok(Run { artifacts, metrics })
    }

    fn judge(&self, m: &Metrics, _checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        let target = m.target_loss;
        let mut sizes: Vec<(usize, f64)> = m
            .sizes
            .iter()
            .filter_map(|(name, value)| {
                let size = name.strip_prefix("size_")?.strip_suffix("_loss")?.parse().ok()?;
                Some((size, *value))
            })
            .collect();
        sizes.sort_by_key(|(size, _)| *size);
        sizes
            .into_iter()
            .map(|(size, loss)| {
                let steps = m
                    .sizes
                    .get(&format!("size_{size}_steps"))
                    .ok_or_else(|| VerdictError(format!("stage `{}` has no metric `size_{size}_steps`", stage::OVERFIT_BATCH)))?;
                Ok(verdict(
                    &format!("overfit_batch[{size}]"),
                    loss < target,
                    loss,
                    target,
                    format!("a fixed batch of {size} reached loss {loss:.2e} in {steps} steps (target < {target:.0e})"),
                    "a model that cannot memorise a tiny batch has a bug: check labels vs outputs, the loss, gradient flow, train.lr",
                ))
            })
            .collect()
    }
}

/// Trains a fresh recipe model on the first `size` training examples until the loss
/// is below `target` or `max_steps`, and records its predictions on them.
fn overfit_one(
    cx: &Cx<'_, '_>,
    data: &Prepared,
    train: &SplitTensors,
    size: usize,
    target: f64,
    max_steps: usize,
) -> Result<BatchResult, ExecError> {
    let batch = train.head(size).map_err(err("batch"))?;
    let model = cx.recipe_model(data)?;
    let mut trainer = Trainer::new(&model, &cx.optim()?).map_err(train_err)?;
    cx.exec.progress.begin(&format!("overfit_batch[{size}]"), max_steps as u64);
    let mut losses = Vec::new();
    let mut loss = f64::INFINITY;
    while trainer.step < max_steps {
        cx.exec.check_cancelled()?;
        loss = trainer.step(&batch.x, &batch.y).map_err(train_err)? as f64;
        losses.push(loss);
        if loss < target {
            break;
        }
        if trainer.step % 50 == 0 {
            cx.exec.progress.advance(trainer.step as u64, &format!("loss {loss:.2e}"));
        }
    }
    cx.exec.progress.end();
    // The loss after the last step, measured on the same batch.
    model.set_training(false);
    let (final_loss, _) = evaluate(&model, &batch).map_err(err("evaluate"))?;
    let final_loss = if loss < target { loss } else { final_loss };
    let logits = model.forward(&batch.x).map_err(err("forward"))?;
    let probs = candle_nn::ops::softmax(&logits, 1).map_err(err("softmax"))?;
    let probs: Vec<Vec<f32>> = probs.to_vec2().map_err(err("probs"))?;
    let labels = &data.train.y[..batch.len];
    let examples = probs
        .iter()
        .zip(labels)
        .zip(&data.train.index)
        .map(|((row, &label), &index)| BatchExample {
            index,
            label,
            predicted: argmax(row),
            prob_label: row[label as usize] as f64,
        })
        .collect();
    Ok(BatchResult { size, steps: trainer.step, final_loss, losses, examples })
}

/// Loss per step, one curve per batch size.
fn loss_chart(results: &[BatchResult]) -> String {
    let curves: Vec<Series> = results
        .iter()
        .enumerate()
        .map(|(i, r)| Series {
            name: format!("batch of {}", r.size),
            color: PALETTE[i % PALETTE.len()],
            points: r.losses.iter().enumerate().map(|(step, &loss)| (step as f64 + 1.0, loss)).collect(),
        })
        .collect();
    charts_svg(&[Panel::steps("overfitting a fixed batch: loss per step", "batch loss (nats)", curves).log_y()])
}

/// The smallest batch as pictures, each labelled `label>prediction` (image data only).
fn batch_picture(data: &Prepared, results: &[BatchResult]) -> Option<Vec<u8>> {
    let first = results.first().filter(|_| is_image(&data.meta.shape))?;
    let d = data.n_features();
    let name = |l: u32| data.meta.class_names.get(l as usize).cloned().unwrap_or_else(|| l.to_string());
    let cells: Vec<(&[f32], String)> = first
        .examples
        .iter()
        .enumerate()
        .map(|(i, e)| (&data.train.x[i * d..(i + 1) * d], format!("{}>{}", name(e.label), name(e.predicted))))
        .collect();
    Some(tiles_at(&cells, &data.meta.shape, Scale { low: -3.0, high: 3.0 }, 8, 96))
}
