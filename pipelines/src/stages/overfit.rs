//! `overfit`: trains the configured model for `train.steps`, evaluating the full
//! splits every `train.eval_every` steps; writes the checkpoint, the curves, the
//! per-layer health and the prediction dynamics of fixed validation examples.
//!
//! Phases: [`train`] (the loop) feeds a [`Recorder`] (series at each evaluation);
//! then [`charts`], [`checkpoint`] and [`first_layer`] turn the result into files.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::json;
use workspace::{Checks, ExecError, StageSpec, Verdict, VerdictError};

use super::common::{err, json_bytes, knobs, train_err, verdict, Cx, MODEL_KNOBS, OPTIM_KNOBS};
use super::{RecipeStage, Run};
use crate::data::Prepared;
use crate::ids::{knob, stage};
use crate::models::{self, Model};
use crate::render::{charts_svg, is_image, tiles, Scale, Series as Curve, PALETTE};
use crate::tensors::TensorFile;
use crate::train::{evaluate, Batches, SplitTensors, Trainer};

pub struct Overfit;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// Training loss at the first evaluation (step 0).
    pub first_train_loss: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub steps: f64,
}

impl RecipeStage for Overfit {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::OVERFIT,
            version: 4,
            doc: "train the configured model; full-split evaluations; checkpoint",
            knobs: knobs(&[
                &MODEL_KNOBS,
                &OPTIM_KNOBS,
                &[knob::TRAIN_BATCH_SIZE, knob::TRAIN_STEPS, knob::TRAIN_EVAL_EVERY, knob::DYNAMICS_SIZE],
            ]),
            checks: vec![knob::OVERFIT_MIN_DROP, knob::OVERFIT_MIN_TRAIN_ACC],
            upstream: vec![stage::DATA],
            fingerprints: vec![],
            device_dependent: true,
        }
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let data = cx.data()?;
        let steps = cx.count(knob::TRAIN_STEPS)?;
        let model = cx.recipe_model(&data)?;
        let Recorded { series, layers, dynamics } = train(cx, &data, &model, steps)?;
        let metrics = metrics(&series, steps)?;
        let (curves, layer_chart, dynamics_chart) = charts(&data, &series, &layers, &dynamics);
        let mut artifacts = vec![
            ("checkpoint.safetensors".into(), checkpoint(cx, &data, &model)?),
            ("metrics.json".into(), json_bytes(&series_json(&series))?),
            ("curves.svg".into(), curves.into_bytes()),
            ("layers.json".into(), json_bytes(&layers_json(&layers))?),
            ("layers.svg".into(), layer_chart.into_bytes()),
            ("dynamics.json".into(), json_bytes(&dynamics)?),
            ("dynamics.svg".into(), dynamics_chart.into_bytes()),
        ];
        if let Some(picture) = first_layer(&data, &model)? {
            artifacts.push(("first_layer.png".into(), picture));
        }
        Ok(Run { artifacts, metrics })
    }

    fn judge(&self, m: &Metrics, checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        let (first, last) = (m.first_train_loss, m.train_loss);
        let drop = if first > 0.0 { 1.0 - last / first } else { 0.0 };
        let min_drop = checks.f64(knob::OVERFIT_MIN_DROP)?;
        let (acc, min_acc) = (m.train_acc, checks.f64(knob::OVERFIT_MIN_TRAIN_ACC)?);
        Ok(vec![
            verdict(
                "loss_decreased",
                drop >= min_drop,
                drop,
                min_drop,
                format!("training loss went {first:.4} -> {last:.4} ({:.1}% lower)", drop * 100.0),
                "loss is not going down: try another train.lr, check the optimizer sees the parameters",
            ),
            verdict(
                "min_train_acc",
                acc >= min_acc,
                acc,
                min_acc,
                format!("training accuracy {acc:.4}, want >= {min_acc}"),
                "the model cannot fit its training data: train longer (train.steps), a bigger model (model.hidden), or check the data",
            ),
        ])
    }
}

/// Full-split loss and accuracy at each evaluation.
#[derive(Serialize, Default)]
struct Series {
    step: Vec<usize>,
    train_loss: Vec<f64>,
    train_acc: Vec<f64>,
    val_loss: Vec<f64>,
    val_acc: Vec<f64>,
    /// Mean mini-batch loss over each evaluation interval.
    batch_loss: Vec<f64>,
}

/// Per-layer health at each evaluation: activation statistics on a fixed probe
/// batch, weight norms, and gradient norms of the last step.
#[derive(Serialize, Default)]
struct LayerStats {
    step: Vec<usize>,
    /// layer -> series
    activation_mean: BTreeMap<String, Vec<f64>>,
    activation_std: BTreeMap<String, Vec<f64>>,
    /// Share of units that are zero for every probe example (dead ReLUs).
    dead_share: BTreeMap<String, Vec<f64>>,
    weight_norm: BTreeMap<String, Vec<f64>>,
    grad_norm: BTreeMap<String, Vec<f64>>,
}

/// Predicted class probabilities of fixed validation examples at each evaluation.
#[derive(Serialize, Default)]
struct Dynamics {
    step: Vec<usize>,
    /// Index within the validation split, and label, of each tracked example.
    index: Vec<usize>,
    label: Vec<u32>,
    /// probs[e][s] = class probabilities of example e at evaluation s.
    probs: Vec<Vec<Vec<f32>>>,
}

/// Everything recorded at the evaluations.
struct Recorded {
    series: Series,
    layers: LayerStats,
    dynamics: Dynamics,
}

/// What one evaluation measures, and the series it appends to.
struct Recorder<'a> {
    model: &'a dyn Model,
    train: &'a SplitTensors,
    val: &'a SplitTensors,
    /// A fixed batch for activation statistics.
    probe: SplitTensors,
    /// The validation examples whose predictions are tracked.
    tracked: SplitTensors,
    /// Parameter names in `parameters()` order (the order of the gradient norms).
    names: Vec<String>,
    series: Series,
    layers: LayerStats,
    dynamics: Dynamics,
}

impl<'a> Recorder<'a> {
    fn new(
        cx: &Cx<'_, '_>,
        data: &Prepared,
        model: &'a dyn Model,
        (train, val): (&'a SplitTensors, &'a SplitTensors),
    ) -> Result<Recorder<'a>, ExecError> {
        let probe = train.head(256).map_err(err("probe"))?;
        let tracked = val.head(cx.count(knob::DYNAMICS_SIZE)?).map_err(err("dynamics"))?;
        let dynamics = Dynamics {
            index: (0..tracked.len).collect(),
            label: data.val.y[..tracked.len].to_vec(),
            probs: vec![Vec::new(); tracked.len],
            ..Dynamics::default()
        };
        let names = model.parameters().into_iter().map(|(name, _)| name).collect();
        Ok(Recorder {
            model,
            train,
            val,
            probe,
            tracked,
            names,
            series: Series::default(),
            layers: LayerStats::default(),
            dynamics,
        })
    }

    /// One evaluation at `step`: full splits, layer health, tracked predictions.
    /// Batch norm uses its running statistics here (evaluation mode), and trains on.
    fn record(&mut self, step: usize, batch_loss: f64, grad_norms: &[f64]) -> Result<(), ExecError> {
        self.model.set_training(false);
        let recorded = self.measure(step, batch_loss, grad_norms);
        self.model.set_training(true);
        recorded
    }

    fn measure(&mut self, step: usize, batch_loss: f64, grad_norms: &[f64]) -> Result<(), ExecError> {
        let (train_loss, train_acc) = evaluate(self.model, self.train).map_err(err("evaluate"))?;
        let (val_loss, val_acc) = evaluate(self.model, self.val).map_err(err("evaluate"))?;
        let series = &mut self.series;
        series.step.push(step);
        series.train_loss.push(train_loss);
        series.train_acc.push(train_acc);
        series.val_loss.push(val_loss);
        series.val_acc.push(val_acc);
        series.batch_loss.push(batch_loss);
        let grads: Vec<(String, f64)> = self.names.iter().cloned().zip(grad_norms.iter().copied()).collect();
        layer_stats(&mut self.layers, self.model, &self.probe.x, step, &grads)?;
        if self.tracked.len > 0 {
            let logits = self.model.forward(&self.tracked.x).map_err(err("dynamics"))?;
            let probs: Vec<Vec<f32>> =
                candle_nn::ops::softmax(&logits, 1).and_then(|p| p.to_vec2()).map_err(err("dynamics"))?;
            self.dynamics.step.push(step);
            for (example, row) in self.dynamics.probs.iter_mut().zip(probs) {
                example.push(row);
            }
        }
        Ok(())
    }
}

/// The training loop: `steps` optimizer steps, an evaluation at step 0, every
/// `train.eval_every` steps and at the end.
fn train(cx: &Cx<'_, '_>, data: &Prepared, model: &dyn Model, steps: usize) -> Result<Recorded, ExecError> {
    let eval_every = cx.count(knob::TRAIN_EVAL_EVERY)?;
    let batch_size = cx.count(knob::TRAIN_BATCH_SIZE)?;
    let (train, val) = (cx.tensors(data, &data.train)?, cx.tensors(data, &data.val)?);
    let mut recorder = Recorder::new(cx, data, model, (&train, &val))?;
    let mut trainer = Trainer::new(model, &cx.optim()?).map_err(train_err)?;
    let mut batches = Batches::new(&train, batch_size, cx.seed()?, "train");
    recorder.record(0, f64::NAN, &[])?;
    cx.exec.progress.begin(stage::OVERFIT.as_str(), steps as u64);
    let mut interval_loss = 0.0;
    let mut interval_steps = 0usize;
    while trainer.step < steps {
        cx.exec.check_cancelled()?;
        let (x, y) = batches.next_batch().map_err(err("batch"))?;
        interval_loss += trainer.step(&x, &y).map_err(train_err)? as f64;
        interval_steps += 1;
        if trainer.step % eval_every == 0 || trainer.step == steps {
            let grad_norms = trainer.grad_norms.clone();
            recorder.record(trainer.step, interval_loss / interval_steps as f64, &grad_norms)?;
            let train_loss = recorder.series.train_loss.last().copied().unwrap_or_default();
            cx.exec.progress.advance(trainer.step as u64, &format!("train loss {train_loss:.4}"));
            interval_loss = 0.0;
            interval_steps = 0;
        }
    }
    cx.exec.progress.end();
    Ok(Recorded { series: recorder.series, layers: recorder.layers, dynamics: recorder.dynamics })
}

fn layer_stats(
    stats: &mut LayerStats,
    model: &dyn Model,
    probe: &Tensor,
    step: usize,
    grads: &[(String, f64)],
) -> Result<(), ExecError> {
    let (_, hidden) = model.forward_traced(probe).map_err(err("trace"))?;
    stats.step.push(step);
    for (name, activation) in hidden {
        let values: Vec<Vec<f32>> = activation.to_vec2().map_err(err("trace"))?;
        let flat: Vec<f64> = values.iter().flatten().map(|&v| v as f64).collect();
        let n = flat.len().max(1) as f64;
        let mean = flat.iter().sum::<f64>() / n;
        let std = (flat.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let units = values.first().map_or(0, Vec::len);
        let dead = (0..units).filter(|&u| values.iter().all(|row| row[u] <= 0.0)).count();
        stats.activation_mean.entry(name.clone()).or_default().push(mean);
        stats.activation_std.entry(name.clone()).or_default().push(std);
        stats.dead_share.entry(name).or_default().push(dead as f64 / units.max(1) as f64);
    }
    for (name, var) in model.parameters().iter().filter(|(name, _)| name.ends_with(".weight")) {
        let norm =
            var.as_tensor().sqr().and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f32>()).map_err(err("norm"))?;
        let layer = name.trim_end_matches(".weight").to_string();
        stats.weight_norm.entry(layer.clone()).or_default().push((norm as f64).sqrt());
        let grad = grads.iter().find(|(n, _)| n == name).map_or(f64::NAN, |(_, g)| *g);
        stats.grad_norm.entry(layer).or_default().push(grad);
    }
    Ok(())
}

/// The stage's metrics: the last evaluation, and the first training loss.
fn metrics(series: &Series, steps: usize) -> Result<Metrics, ExecError> {
    let (Some(&first_train_loss), Some(last)) = (series.train_loss.first(), series.step.len().checked_sub(1)) else {
        return Err(ExecError::Failed("overfit recorded no evaluation".into()));
    };
    Ok(Metrics {
        first_train_loss,
        train_loss: series.train_loss[last],
        train_acc: series.train_acc[last],
        val_loss: series.val_loss[last],
        val_acc: series.val_acc[last],
        steps: steps as f64,
    })
}

/// JSON has no NaN: missing values (the first point's batch loss, the first
/// evaluation's gradient norms) are null.
fn finite(values: &[f64]) -> Vec<Option<f64>> {
    values.iter().map(|v| v.is_finite().then_some(*v)).collect()
}

fn series_json(series: &Series) -> serde_json::Value {
    json!({
        "step": series.step,
        "train_loss": series.train_loss,
        "train_acc": series.train_acc,
        "val_loss": series.val_loss,
        "val_acc": series.val_acc,
        "batch_loss": finite(&series.batch_loss),
    })
}

fn layers_json(layers: &LayerStats) -> serde_json::Value {
    json!({
        "step": layers.step,
        "activation_mean": layers.activation_mean,
        "activation_std": layers.activation_std,
        "dead_share": layers.dead_share,
        "weight_norm": layers.weight_norm,
        "grad_norm": layers.grad_norm.iter().map(|(k, v)| (k.clone(), finite(v))).collect::<BTreeMap<_, _>>(),
    })
}

fn curve(steps: &[usize], values: &[f64], name: &str, color: &'static str) -> Curve {
    Curve { name: name.to_string(), color, points: steps.iter().zip(values).map(|(&s, &v)| (s as f64, v)).collect() }
}

/// `curves.svg`, `layers.svg` and `dynamics.svg`.
fn charts(data: &Prepared, series: &Series, layers: &LayerStats, dynamics: &Dynamics) -> (String, String, String) {
    let curves = charts_svg(&[
        (
            "loss (full splits)",
            vec![
                curve(&series.step, &series.train_loss, "train", PALETTE[0]),
                curve(&series.step, &series.val_loss, "val", PALETTE[1]),
            ],
            true,
        ),
        (
            "accuracy (full splits)",
            vec![
                curve(&series.step, &series.train_acc, "train", PALETTE[0]),
                curve(&series.step, &series.val_acc, "val", PALETTE[1]),
            ],
            false,
        ),
    ]);
    let per_layer = |map: &BTreeMap<String, Vec<f64>>| -> Vec<Curve> {
        map.iter().enumerate().map(|(i, (name, v))| curve(&layers.step, v, name, PALETTE[i % PALETTE.len()])).collect()
    };
    let layer_chart = charts_svg(&[
        ("activation std (probe batch)", per_layer(&layers.activation_std), false),
        ("dead units (share)", per_layer(&layers.dead_share), false),
        ("weight norm", per_layer(&layers.weight_norm), false),
        ("gradient norm", per_layer(&layers.grad_norm), true),
    ]);
    let class_name = |l: u32| data.meta.class_names.get(l as usize).cloned().unwrap_or_else(|| l.to_string());
    let true_prob: Vec<Curve> = dynamics
        .probs
        .iter()
        .zip(&dynamics.label)
        .enumerate()
        .map(|(e, (probs, &label))| Curve {
            name: format!("val {e} ({})", class_name(label)),
            color: PALETTE[e % PALETTE.len()],
            points: dynamics.step.iter().zip(probs).map(|(&s, p)| (s as f64, p[label as usize] as f64)).collect(),
        })
        .collect();
    let dynamics_chart =
        charts_svg(&[("probability of the true class, tracked validation examples", true_prob, false)]);
    (curves, layer_chart, dynamics_chart)
}

/// The trained parameters and buffers as safetensors, with the model's spec in the
/// metadata (what `evaluate` rebuilds it from).
fn checkpoint(cx: &Cx<'_, '_>, data: &Prepared, model: &dyn Model) -> Result<Vec<u8>, ExecError> {
    let spec = cx.model_spec(data)?;
    let mut file = TensorFile::default();
    for (name, tensor) in models::state(model) {
        let values = tensor.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(err("checkpoint"))?;
        file.push_f32(&name, tensor.dims().to_vec(), values);
    }
    let mut meta = spec.to_meta();
    meta["input_shape"] = json!(data.meta.shape);
    meta["class_names"] = json!(data.meta.class_names);
    meta["normalize"] = json!(data.meta.normalize);
    file.encode(&meta).map_err(|error| ExecError::Failed(error.to_string()))
}

/// The first layer's weights drawn in the input's shape, one tile per unit (image
/// data only).
fn first_layer(data: &Prepared, model: &dyn Model) -> Result<Option<Vec<u8>>, ExecError> {
    let (true, Some((weights, shape))) = (is_image(&data.meta.shape), model.first_layer()) else {
        return Ok(None);
    };
    let shape = shape.unwrap_or_else(|| data.meta.shape.clone());
    let rows: Vec<Vec<f32>> = weights.to_vec2().map_err(err("weights"))?;
    let bound = rows.iter().flatten().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let cells: Vec<(&[f32], String)> = rows.iter().enumerate().map(|(i, r)| (r.as_slice(), format!("{i}"))).collect();
    Ok(Some(tiles(&cells, &shape, Scale { low: -bound, high: bound }, 16)))
}
