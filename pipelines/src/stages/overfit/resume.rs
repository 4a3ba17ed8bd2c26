//! Leave it training: `overfit` saves its full state every `PIPE_CHECKPOINT_EVERY`
//! steps, at its last step and when cancelled, in the cache's resume index under its
//! key inputs less `train.steps`. An execution that misses the action cache continues
//! from the longest saved state it may use (a longer run of the same configuration,
//! or the same run killed half-way) and ends with the bytes a run from scratch
//! writes: the state carries the weights, the optimizer, the data order's position
//! and every series recorded so far (curves, layer health, prediction dynamics, the
//! learning rate of each step), bit for bit.
//!
//! A cosine schedule's rate at step t depends on `train.steps`, so its states serve
//! only a run of the same length (a resumed crash); a longer run says why it starts
//! over. Constant and step schedules (with or without warmup) do not depend on it.

use std::collections::BTreeMap;

use workspace::{ExecError, Resume};

use super::{Dynamics, LayerStats, Recorder, Series};
use crate::ids::knob;
use crate::train::state::{StateError, TrainState};
use crate::train::{Batches, Schedule, ScheduleKind, Trainer};

/// The loop's running sum of mini-batch losses since the last evaluation.
#[derive(Default)]
pub(super) struct Interval {
    pub loss: f64,
    pub steps: usize,
}

/// When and where the loop saves its state.
pub(super) struct Checkpoints<'c> {
    resume: &'c dyn Resume,
    every: usize,
    steps: usize,
    /// `Some(steps)` when the schedule depends on the run's length.
    only_for: Option<u64>,
    /// Cleared when the trainer cannot save (an accelerator's Adam), or a save failed.
    enabled: bool,
    /// Whether a saved state may be continued from (not for an early-stopped run).
    reusable: bool,
}

impl<'c> Checkpoints<'c> {
    pub fn new(resume: &'c dyn Resume, steps: usize, schedule: &Schedule) -> Checkpoints<'c> {
        let every = usize::try_from(resume.checkpoint_every()).unwrap_or(usize::MAX);
        Checkpoints {
            resume,
            every,
            steps,
            only_for: depends_on_length(schedule).then_some(steps as u64),
            enabled: every > 0,
            reusable: true,
        }
    }

    /// No states are read or written for this run.
    pub fn disable(&mut self) {
        self.enabled = false;
        self.reusable = false;
    }

    /// The saved state to continue from: the longest one this run may use whose
    /// bytes load. Says (a warning) when a longer-trained state of the same
    /// configuration exists but cannot be used.
    pub fn start(&self) -> Option<TrainState> {
        if !self.reusable {
            return None;
        }
        let states = self.resume.states(knob::TRAIN_STEPS);
        let mut usable: Vec<_> = states.iter().filter(|state| state.serves(self.steps as u64)).collect();
        usable.sort_by_key(|state| std::cmp::Reverse(state.step));
        let best = usable.into_iter().find_map(|saved| {
            let bytes = self.resume.load(knob::TRAIN_STEPS, saved)?;
            match TrainState::decode(&bytes) {
                Ok(state) if state.step == saved.step => Some(state),
                Ok(_) | Err(_) => {
                    tracing::warn!(step = saved.step, "a saved training state does not decode; ignoring it");
                    None
                }
            }
        });
        let from = best.as_ref().map_or(0, |state| state.step);
        if let Some(skipped) = states
            .iter()
            .filter(|state| state.step > from && state.step <= self.steps as u64 && !state.serves(self.steps as u64))
            .max_by_key(|state| state.step)
        {
            tracing::warn!(
                "overfit: not resuming from the saved state at step {} of a {}-step run: {}",
                skipped.step,
                skipped.only_for.unwrap_or(0),
                CANNOT_REUSE
            );
        }
        if let Some(state) = &best {
            tracing::info!("overfit: resuming from step {} of {}", state.step, self.steps);
        }
        best
    }

    /// Saves the state after a step when one is due: every `every` steps and at the
    /// last step (before its final evaluation, so a longer run can continue).
    pub fn after_step(&mut self, parts: Parts<'_>) {
        let step = parts.trainer.step;
        if self.enabled && (step.is_multiple_of(self.every) || step == self.steps) {
            self.save(parts);
        }
    }

    /// Saves the state now (the build was interrupted at a step boundary).
    pub fn save(&mut self, parts: Parts<'_>) {
        if !self.enabled {
            return;
        }
        let step = parts.trainer.step as u64;
        let saved = capture(parts).and_then(|state| state.encode()).map_err(|error| error.to_string());
        let saved = saved.and_then(|bytes| self.resume.save(knob::TRAIN_STEPS, step, self.only_for, &bytes));
        if let Err(error) = saved {
            tracing::warn!("overfit: training state not saved at step {step}: {error}; training goes on");
            self.enabled = false;
        }
    }
}

/// Why a cosine run's state serves no other length.
pub(super) const CANNOT_REUSE: &str = "train.schedule = \"cosine\" makes the rate of every step depend on train.steps";

/// Whether the rate of step t depends on the run's length (see `Schedule::factor`).
fn depends_on_length(schedule: &Schedule) -> bool {
    matches!(schedule.kind, ScheduleKind::Cosine { .. })
}

/// What the loop's state is made of.
pub(super) struct Parts<'p> {
    pub trainer: &'p Trainer<'p>,
    pub batches: &'p Batches<'p>,
    pub recorder: &'p Recorder<'p>,
    pub interval: &'p Interval,
}

fn capture(parts: Parts<'_>) -> Result<TrainState, StateError> {
    let mut state = TrainState::new(parts.trainer.step as u64);
    parts.trainer.save_state(&mut state)?;
    parts.batches.save_state(&mut state);
    save_recorded(&mut state, parts.recorder);
    state.set_series("loop/interval_loss", &[parts.interval.loss]);
    state.set_counter("loop/interval_steps", parts.interval.steps as u64);
    Ok(state)
}

/// Puts the trainer, the data order, the recorder's series and the loop's interval
/// back as they were when `state` was saved.
pub(super) fn restore(
    state: &TrainState,
    trainer: &mut Trainer<'_>,
    batches: &mut Batches<'_>,
    recorder: &mut Recorder<'_>,
    interval: &mut Interval,
) -> Result<(), ExecError> {
    let failed = |error: StateError| ExecError::Failed(format!("resuming from step {}: {error}", state.step));
    trainer.load_state(state).map_err(failed)?;
    batches.load_state(state).map_err(failed)?;
    load_recorded(state, recorder).map_err(failed)?;
    interval.loss = state.series("loop/interval_loss").map_err(failed)?.first().copied().unwrap_or(0.0);
    interval.steps = state.counter("loop/interval_steps").map_err(failed)? as usize;
    Ok(())
}

fn as_f64(values: &[usize]) -> Vec<f64> {
    values.iter().map(|&v| v as f64).collect()
}

fn as_usize(values: Vec<f64>) -> Vec<usize> {
    values.into_iter().map(|v| v as usize).collect()
}

const LAYER_MAPS: [&str; 5] = ["activation_mean", "activation_std", "dead_share", "weight_norm", "grad_norm"];

fn layer_maps(layers: &LayerStats) -> [&BTreeMap<String, Vec<f64>>; 5] {
    [&layers.activation_mean, &layers.activation_std, &layers.dead_share, &layers.weight_norm, &layers.grad_norm]
}

fn layer_maps_mut(layers: &mut LayerStats) -> [&mut BTreeMap<String, Vec<f64>>; 5] {
    let LayerStats { activation_mean, activation_std, dead_share, weight_norm, grad_norm, .. } = layers;
    [activation_mean, activation_std, dead_share, weight_norm, grad_norm]
}

fn save_recorded(state: &mut TrainState, recorder: &Recorder<'_>) {
    let Series { step, train_loss, train_acc, val_loss, val_acc, batch_loss, lr } = &recorder.series;
    state.set_series("series/step", &as_f64(step));
    for (name, values) in [
        ("train_loss", train_loss),
        ("train_acc", train_acc),
        ("val_loss", val_loss),
        ("val_acc", val_acc),
        ("batch_loss", batch_loss),
        ("lr", lr),
    ] {
        state.set_series(&format!("series/{name}"), values);
    }
    state.set_series("layers/step", &as_f64(&recorder.layers.step));
    for (map_name, map) in LAYER_MAPS.iter().zip(layer_maps(&recorder.layers)) {
        for (layer, values) in map {
            state.set_series(&format!("layers/{map_name}/{layer}"), values);
        }
    }
    let dynamics = &recorder.dynamics;
    state.set_series("dynamics/step", &as_f64(&dynamics.step));
    for (example, evaluations) in dynamics.probs.iter().enumerate() {
        let classes = evaluations.first().map_or(0, Vec::len);
        let flat = evaluations.iter().flatten().copied().collect();
        state.set_tensor(&format!("dynamics/probs/{example:06}"), vec![evaluations.len(), classes], flat);
    }
}

fn load_recorded(state: &TrainState, recorder: &mut Recorder<'_>) -> Result<(), StateError> {
    let series = |name: &str| state.series(&format!("series/{name}"));
    recorder.series = Series {
        step: as_usize(series("step")?),
        train_loss: series("train_loss")?,
        train_acc: series("train_acc")?,
        val_loss: series("val_loss")?,
        val_acc: series("val_acc")?,
        batch_loss: series("batch_loss")?,
        lr: series("lr")?,
    };
    let mut layers = LayerStats { step: as_usize(state.series("layers/step")?), ..LayerStats::default() };
    for (map_name, map) in LAYER_MAPS.iter().zip(layer_maps_mut(&mut layers)) {
        let prefix = format!("layers/{map_name}/");
        *map = state
            .series_names(&prefix)
            .map(|layer| Ok((layer.to_string(), state.series(&format!("{prefix}{layer}"))?)))
            .collect::<Result<_, StateError>>()?;
    }
    recorder.layers = layers;
    let dynamics: &mut Dynamics = &mut recorder.dynamics;
    dynamics.step = as_usize(state.series("dynamics/step")?);
    for (example, evaluations) in dynamics.probs.iter_mut().enumerate() {
        let (shape, values) = state.tensor(&format!("dynamics/probs/{example:06}"))?;
        let classes = shape.get(1).copied().unwrap_or(0).max(1);
        *evaluations = values.chunks(classes).map(<[f32]>::to_vec).collect();
        if evaluations.len() != shape.first().copied().unwrap_or(0) {
            return Err(StateError::Mismatch(format!("dynamics of example {example} have the wrong shape")));
        }
    }
    Ok(())
}

/// What `pipe status` adds for a stale `overfit` instance with key inputs `inputs`:
/// `resumes from step 3000`, or why a saved state of the same configuration cannot
/// be used. Reads the index and stats objects; changes nothing.
pub fn status_note(cache: &cache::Cache, inputs: &cache::KeyInputs) -> Option<String> {
    if inputs.stage != crate::ids::stage::OVERFIT.as_str() {
        return None;
    }
    let steps: u64 = cache::value_text(inputs.knobs.get(knob::TRAIN_STEPS.as_str())?).parse().ok()?;
    if let Some(state) = workspace::resume_point(cache, inputs, knob::TRAIN_STEPS, steps) {
        return Some(format!("resumes from step {}", state.step));
    }
    let prefix = cache::PrefixKey::of(inputs, knob::TRAIN_STEPS.as_str());
    let states = cache.resume().states(&prefix).ok()?;
    let blocked = states.iter().filter(|state| state.step <= steps && !state.serves(steps)).max_by_key(|s| s.step)?;
    Some(format!("cannot resume from step {}: {CANNOT_REUSE}", blocked.step))
}
