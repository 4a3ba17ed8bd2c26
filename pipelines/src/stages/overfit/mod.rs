//! `overfit`: trains the configured model for `train.steps`, evaluating the full
//! splits every `train.eval_every` steps; writes the checkpoint, the curves, the
//! per-layer health and the prediction dynamics of fixed validation examples.
//!
//! The learning rate follows `train.schedule`; the rate each step used is recorded
//! (`lr` in `metrics.json`, `lr.svg`), and the `lr_schedule` verdict warns when the
//! schedule drives the rate towards zero early (the recipe's "do not trust learning
//! rate decay defaults").
//!
//! Phases: [`train`] (the loop) feeds a [`Recorder`] (series at each evaluation);
//! then [`charts`], [`checkpoint`] and [`first_layer`] turn the result into files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::json;
use workspace::{Checks, ExecError, StageSpec, Verdict, VerdictError, VerdictStatus};

use super::common::{err, json_bytes, knobs, train_err, verdict, Cx, Fixed, MODEL_KNOBS, OPTIM_KNOBS, SCHEDULE_KNOBS};
use super::regularize::setup::{Regularization, AUGMENT_KNOBS, TRAINING_KNOBS};
use super::{RecipeStage, Run};
use crate::data::Prepared;
use crate::ids::{knob, stage};
use crate::models::{self, Model, ModelSpec};
use crate::tensors::TensorFile;

mod charts;
mod messages;
mod resume;
use crate::train::{evaluate, Batches, Schedule, ScheduleKind, SplitTensors, Trainer};
use charts::{charts, first_layer, lr_chart};
use messages::{loss_change_hint, loss_change_message};
pub use resume::status_note;
use resume::{Checkpoints, Interval, Parts};

#[derive(Default)]
pub struct Overfit {
    /// The directory of `pipe.toml`: `model.init_from` starts here.
    pub base_dir: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// Training loss at the first evaluation (step 0).
    pub first_train_loss: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub steps: f64,
    /// The schedule as numbers (`schedule`: 0 constant, 1 step, 2 cosine), so that
    /// `lr_schedule` can evaluate it for any threshold without retraining.
    pub schedule: f64,
    pub warmup_steps: f64,
    pub step_every: f64,
    pub step_gamma: f64,
    pub min_lr_ratio: f64,
    /// The step the checkpoint (and the losses above) come from: the best validation
    /// loss with early stopping, else the last step.
    pub best_step: f64,
    /// The last step trained (before `steps` when early stopping ended the run).
    pub stopped_step: f64,
    /// 1 when augmentation, dropout or early stopping was on (issue 10).
    pub regularized: f64,
}

impl Metrics {
    fn record_schedule(&mut self, schedule: &Schedule) {
        self.warmup_steps = schedule.warmup_steps as f64;
        match schedule.kind {
            ScheduleKind::Constant => self.schedule = 0.0,
            ScheduleKind::Step { every, gamma } => {
                (self.schedule, self.step_every, self.step_gamma) = (1.0, every as f64, gamma);
            }
            ScheduleKind::Cosine { min_ratio } => (self.schedule, self.min_lr_ratio) = (2.0, min_ratio),
        }
    }

    fn schedule(&self) -> Schedule {
        let kind = match self.schedule as u8 {
            1 => ScheduleKind::Step { every: self.step_every as usize, gamma: self.step_gamma },
            2 => ScheduleKind::Cosine { min_ratio: self.min_lr_ratio },
            _ => ScheduleKind::Constant,
        };
        Schedule { kind, warmup_steps: self.warmup_steps as usize }
    }
}

impl RecipeStage for Overfit {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::OVERFIT,
            version: 7,
            doc: "train the configured model; full-split evaluations; checkpoint",
            knobs: knobs(&[
                &MODEL_KNOBS,
                &OPTIM_KNOBS,
                &SCHEDULE_KNOBS,
                &[knob::TRAIN_BATCH_SIZE, knob::TRAIN_STEPS, knob::TRAIN_EVAL_EVERY, knob::DYNAMICS_SIZE],
                &AUGMENT_KNOBS,
                &TRAINING_KNOBS,
            ]),
            checks: vec![
                knob::OVERFIT_MIN_DROP,
                knob::OVERFIT_MIN_TRAIN_ACC,
                knob::LR_SCHEDULE_MIN_RATIO,
                knob::LR_SCHEDULE_BY_FRACTION,
            ],
            upstream: vec![stage::DATA],
            fingerprints: vec!["init_from"],
            device_dependent: true,
        }
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let data = cx.data()?;
        let steps = cx.count(knob::TRAIN_STEPS)?;
        let model = cx.recipe_model(&data)?;
        let schedule = cx.schedule()?;
        let mut regularization = Regularization::new(cx, &data, model.as_ref(), &self.base_dir)?;
        let Recorded { series, layers, dynamics, best } =
            train(cx, &data, &model, steps, schedule, &mut regularization)?;
        let mut metrics = metrics(&series, steps, best)?;
        metrics.record_schedule(&schedule);
        metrics.regularized = f64::from(u8::from(regularization.active));
        let (curves, layer_chart, dynamics_chart) = charts(&data, &series, &layers, &dynamics);
        let mut artifacts = vec![
            ("checkpoint.safetensors".into(), checkpoint(cx, &data, &model)?),
            ("metrics.json".into(), json_bytes(&series_json(&series))?),
            ("curves.svg".into(), curves.into_bytes()),
            ("lr.svg".into(), lr_chart(&series.lr).into_bytes()),
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
        let lr_schedule = lr_schedule_verdict(m, checks)?;
        let mut verdicts = vec![
            verdict(
                "loss_decreased",
                drop >= min_drop,
                drop,
                min_drop,
                loss_change_message(first, last, drop, min_drop),
                &loss_change_hint(first, last, drop, m.steps),
            ),
            verdict(
                "min_train_acc",
                acc >= min_acc,
                acc,
                min_acc,
                format!("training accuracy {}, want >= {min_acc}", Fixed(acc, 4)),
                "the model cannot fit its training data: train longer (train.steps), a bigger model (model.hidden for an mlp, model.channels or model.dense for a convnet, model.width for a resnet), or check the data",
            ),
        ];
        if m.regularized > 0.0 {
            // Regularization trades training fit for validation: the ladder judges it.
            for fit in verdicts.iter_mut().filter(|v| v.status == VerdictStatus::Fail) {
                fit.status = VerdictStatus::Warn;
                fit.hint = Some(format!(
                    "expected with regularization on (augment.*, model.dropout, train.early_stopping); {}",
                    fit.hint.take().unwrap_or_default()
                ));
            }
        }
        verdicts.push(lr_schedule);
        Ok(verdicts)
    }
}

/// `lr_schedule`: warns when the schedule has taken the rate below `min_ratio` of
/// `train.lr` before `by_fraction` of training (warmup excepted).
fn lr_schedule_verdict(m: &Metrics, checks: &Checks<'_>) -> Result<Verdict, VerdictError> {
    let min_ratio = checks.f64(knob::LR_SCHEDULE_MIN_RATIO)?;
    let by_fraction = checks.f64(knob::LR_SCHEDULE_BY_FRACTION)?;
    let lowest = m.schedule().lowest_before(by_fraction, m.steps as usize);
    let pass = lowest >= min_ratio;
    Ok(Verdict {
        check: "lr_schedule".into(),
        status: if pass { VerdictStatus::Pass } else { VerdictStatus::Warn },
        value: lowest,
        expected: min_ratio,
        message: format!(
            "the schedule takes the learning rate to {} of train.lr within the first {}% of training, want >= {min_ratio}",
            Fixed(lowest, 3),
            Fixed(by_fraction * 100.0, 0)
        ),
        hint: (!pass).then(|| {
            "the schedule is secretly driving your learning rate to zero: use train.schedule = \"constant\", or decay later (a larger train.step_every or train.min_lr_ratio)".to_string()
        }),
    })
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
    /// The learning rate of every step (`lr[t]` for step t), as the optimizer used it.
    lr: Vec<f64>,
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
    /// The `(step, evaluation)` of the checkpoint when early stopping chose it.
    best: Option<(usize, usize)>,
}

/// How many training examples an evaluation measures: the whole split up to 10,000
/// examples or the validation split's size, whichever is larger. The split is in a
/// seeded shuffled order, so its head is a fixed random sample; on Fashion-MNIST
/// (45,000 train, 15,000 val) this halves the cost of each evaluation.
fn train_sample_len(train: usize, val: usize) -> usize {
    train.min(val.max(10_000))
}

/// What one evaluation measures, and the series it appends to.
struct Recorder<'a> {
    model: &'a dyn Model,
    /// The training examples the train metrics are measured on: the first
    /// [`train_sample_len`] of the (shuffled) training split.
    train: SplitTensors,
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
        let train = train.head(train_sample_len(train.len, val.len)).map_err(err("train sample"))?;
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
        let (train_loss, train_acc) = evaluate(self.model, &self.train).map_err(err("evaluate"))?;
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
/// `train.eval_every` steps and at the end. Continues from a saved state when one
/// serves this run, and saves its own as it goes ([`resume`]).
fn train(
    cx: &Cx<'_, '_>,
    data: &Prepared,
    model: &dyn Model,
    steps: usize,
    schedule: Schedule,
    regularization: &mut Regularization,
) -> Result<Recorded, ExecError> {
    let eval_every = cx.count(knob::TRAIN_EVAL_EVERY)?;
    let batch_size = cx.count(knob::TRAIN_BATCH_SIZE)?;
    let (train, val) = (cx.tensors(data, &data.train)?, cx.tensors(data, &data.val)?);
    let mut recorder = Recorder::new(cx, data, model, (&train, &val))?;
    let mut trainer = Trainer::with_schedule(model, &cx.optim()?, schedule, steps).map_err(train_err)?;
    let mut batches = Batches::new(&train, batch_size, cx.seed()?, "train");
    let mut interval = Interval::default();
    let mut checkpoints = Checkpoints::new(cx.exec.resume, steps, &schedule);
    if regularization.early_stopping() {
        // The best weights and the patience count live outside the saved training
        // state: an early-stopped run always trains from its first step.
        checkpoints.disable();
    }
    let mut stop = false;
    match checkpoints.start() {
        Some(state) => resume::restore(&state, &mut trainer, &mut batches, &mut recorder, &mut interval)?,
        None => {
            recorder.record(0, f64::NAN, &[])?;
            stop = regularization.stop_after(model, 0, 0, recorder.series.val_loss[0])?;
        }
    }
    cx.exec.progress.begin(stage::OVERFIT.as_str(), steps as u64);
    if trainer.step > 0 {
        cx.exec.progress.advance(trainer.step as u64, &format!("resumed from step {}", trainer.step));
    }
    while trainer.step < steps && !stop {
        if let Err(cancelled) = cx.exec.check_cancelled() {
            checkpoints.save(Parts { trainer: &trainer, batches: &batches, recorder: &recorder, interval: &interval });
            return Err(cancelled);
        }
        let (x, y) = batches.next_batch().map_err(err("batch"))?;
        let x = regularization.augment.apply(&x, trainer.step).map_err(err("augment"))?;
        interval.loss += trainer.step(&x, &y).map_err(train_err)? as f64;
        recorder.series.lr.push(trainer.lr);
        interval.steps += 1;
        if trainer.step % eval_every == 0 {
            stop = evaluation(cx, &mut recorder, &trainer, &mut interval, regularization, model)?;
        }
        checkpoints.after_step(Parts {
            trainer: &trainer,
            batches: &batches,
            recorder: &recorder,
            interval: &interval,
        });
    }
    if recorder.series.step.last() != Some(&trainer.step) {
        evaluation(cx, &mut recorder, &trainer, &mut interval, regularization, model)?;
    }
    cx.exec.progress.end();
    let best = regularization.finish(model)?;
    Ok(Recorded { series: recorder.series, layers: recorder.layers, dynamics: recorder.dynamics, best })
}

/// One evaluation after the trainer's last step, closing the loss interval; says
/// whether early stopping ends the run here.
fn evaluation(
    cx: &Cx<'_, '_>,
    recorder: &mut Recorder<'_>,
    trainer: &Trainer<'_>,
    interval: &mut Interval,
    regularization: &mut Regularization,
    model: &dyn Model,
) -> Result<bool, ExecError> {
    recorder.record(trainer.step, interval.loss / interval.steps as f64, &trainer.grad_norms)?;
    let train_loss = recorder.series.train_loss.last().copied().unwrap_or_default();
    cx.exec.progress.advance(trainer.step as u64, &format!("train loss {train_loss:.4}"));
    *interval = Interval::default();
    let index = recorder.series.step.len() - 1;
    regularization.stop_after(model, trainer.step, index, recorder.series.val_loss[index])
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

/// The stage's metrics: the checkpoint's evaluation (the last one, or the best one
/// early stopping kept), and the first training loss.
fn metrics(series: &Series, steps: usize, best: Option<(usize, usize)>) -> Result<Metrics, ExecError> {
    let (Some(&first_train_loss), Some(last)) = (series.train_loss.first(), series.step.len().checked_sub(1)) else {
        return Err(ExecError::Failed("overfit recorded no evaluation".into()));
    };
    let at = best.map_or(last, |(_, evaluation)| evaluation);
    Ok(Metrics {
        first_train_loss,
        train_loss: series.train_loss[at],
        train_acc: series.train_acc[at],
        val_loss: series.val_loss[at],
        val_acc: series.val_acc[at],
        steps: steps as f64,
        best_step: series.step[at] as f64,
        stopped_step: series.step[last] as f64,
        ..Metrics::default()
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
        "lr": series.lr,
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

/// The trained parameters and buffers as safetensors, with the model's spec in the
/// metadata (what `evaluate` rebuilds it from).
fn checkpoint(cx: &Cx<'_, '_>, data: &Prepared, model: &dyn Model) -> Result<Vec<u8>, ExecError> {
    checkpoint_bytes(&cx.model_spec(data)?, data, model)
}

/// A checkpoint of `model` (built from `spec`) trained on `data`: every stage that
/// hands a model to `evaluate` writes this format.
pub(crate) fn checkpoint_bytes(spec: &ModelSpec, data: &Prepared, model: &dyn Model) -> Result<Vec<u8>, ExecError> {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use workspace::{KnobId, KnobValue};

    use super::*;

    fn judge_schedule(schedule: Schedule, steps: usize) -> Verdict {
        let mut metrics = Metrics { steps: steps as f64, ..Metrics::default() };
        metrics.record_schedule(&schedule);
        let values: BTreeMap<KnobId, KnobValue> = crate::knobs::schema()
            .iter()
            .filter(|spec| Overfit::default().spec().checks.iter().any(|id| id.as_str() == spec.name))
            .map(|spec| (KnobId(spec.name), spec.default.clone()))
            .collect();
        let verdicts = Overfit::default().judge(&metrics, &Checks::new(stage::OVERFIT, &values)).unwrap();
        verdicts.into_iter().find(|v| v.check == "lr_schedule").unwrap()
    }

    #[test]
    fn a_schedule_that_decays_early_trips_lr_schedule() {
        // x0.1 every 500 of 3000 steps: 0.01 of the base rate before half-way.
        let early =
            judge_schedule(Schedule { kind: ScheduleKind::Step { every: 500, gamma: 0.1 }, warmup_steps: 0 }, 3000);
        assert_eq!(early.status, VerdictStatus::Warn, "{early:?}");
        assert!(early.hint.unwrap().contains("secretly driving your learning rate to zero"));
        // Cosine to zero is at half the rate half-way: fine.
        let cosine =
            judge_schedule(Schedule { kind: ScheduleKind::Cosine { min_ratio: 0.0 }, warmup_steps: 100 }, 3000);
        assert_eq!(cosine.status, VerdictStatus::Pass, "{cosine:?}");
        let constant = judge_schedule(Schedule::constant(), 3000);
        assert_eq!((constant.status, constant.value), (VerdictStatus::Pass, 1.0));
    }

    #[test]
    fn schedule_survives_the_metrics_round_trip() {
        for schedule in [
            Schedule::constant(),
            Schedule { kind: ScheduleKind::Step { every: 7, gamma: 0.3 }, warmup_steps: 2 },
            Schedule { kind: ScheduleKind::Cosine { min_ratio: 0.05 }, warmup_steps: 0 },
        ] {
            let mut metrics = Metrics::default();
            metrics.record_schedule(&schedule);
            let flat = super::super::flat::to_map(&metrics).unwrap();
            let back: Metrics = super::super::flat::from_map(&flat).unwrap();
            assert_eq!(back.schedule(), schedule);
        }
    }

    #[test]
    fn lr_chart_draws_every_step_of_a_short_run() {
        let lr: Vec<f64> = (0..10).map(|t| 0.1 * 0.5f64.powi(t / 3)).collect();
        let svg = lr_chart(&lr);
        assert!(svg.starts_with("<svg") && svg.contains("learning rate"));
        assert_eq!(lr_chart(&vec![3e-4; 5000]), lr_chart(&vec![3e-4; 5000]), "deterministic");
    }
}
