//! The full state of a training run at a step boundary, as one deterministic
//! safetensors blob: the model's parameters and buffers (batch-norm statistics), the
//! optimizer's moments or momentum buffers and step, the data order's position
//! (epoch and offset; the order itself is recomputed from its seed), and whatever
//! the caller recorded so far (series of floats, counters). Restoring it and taking
//! the remaining steps gives bitwise what an uninterrupted run gives: the learning
//! rate is a pure function of the step (`schedule.rs`) and every random draw is keyed
//! by (seed, purpose, position).
//!
//! Floats the caller records are kept as their bit patterns (f64 as two u32), never
//! as decimal text, so a resumed run's metrics are the same bits.

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Batches, Optimizer, Trainer};
use crate::models;
use crate::rng::Rng;
use crate::tensors::TensorFile;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("training state: {0}")]
    Format(#[from] crate::tensors::TensorFileError),
    #[error("training state: {0}")]
    Mismatch(String),
    #[error("{0}")]
    Unsupported(&'static str),
}

const FORMAT: &str = "pipe-train-state";
const VERSION: u32 = 1;

/// The training state after `step` optimizer steps.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TrainState {
    pub step: u64,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    series: BTreeMap<String, Vec<f64>>,
    counters: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    format: String,
    version: u32,
    step: u64,
    counters: BTreeMap<String, u64>,
}

impl TrainState {
    pub fn new(step: u64) -> TrainState {
        TrainState { step, ..TrainState::default() }
    }

    pub fn set_tensor(&mut self, name: &str, shape: Vec<usize>, values: Vec<f32>) {
        self.tensors.insert(name.to_string(), (shape, values));
    }

    pub fn tensor(&self, name: &str) -> Result<&(Vec<usize>, Vec<f32>), StateError> {
        self.tensors.get(name).ok_or_else(|| StateError::Mismatch(format!("no tensor `{name}`")))
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Names of the tensors under `prefix`, without it.
    pub fn tensor_names<'s>(&'s self, prefix: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.tensors.keys().filter_map(move |name| name.strip_prefix(prefix))
    }

    pub fn set_series(&mut self, name: &str, values: &[f64]) {
        self.series.insert(name.to_string(), values.to_vec());
    }

    pub fn series(&self, name: &str) -> Result<Vec<f64>, StateError> {
        self.series.get(name).cloned().ok_or_else(|| StateError::Mismatch(format!("no series `{name}`")))
    }

    /// Names of the series under `prefix`, without it.
    pub fn series_names<'s>(&'s self, prefix: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.series.keys().filter_map(move |name| name.strip_prefix(prefix))
    }

    pub fn set_counter(&mut self, name: &str, value: u64) {
        self.counters.insert(name.to_string(), value);
    }

    pub fn counter(&self, name: &str) -> Result<u64, StateError> {
        self.counters.get(name).copied().ok_or_else(|| StateError::Mismatch(format!("no counter `{name}`")))
    }

    /// The state as safetensors bytes: the same state, the same bytes.
    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        let mut file = TensorFile::default();
        for (name, (shape, values)) in &self.tensors {
            file.push_f32(&format!("f32/{name}"), shape.clone(), values.clone());
        }
        for (name, values) in &self.series {
            let bits = values.iter().flat_map(|v| [v.to_bits() as u32, (v.to_bits() >> 32) as u32]).collect();
            file.push_u32(&format!("f64/{name}"), vec![values.len(), 2], bits);
        }
        let meta = Meta { format: FORMAT.into(), version: VERSION, step: self.step, counters: self.counters.clone() };
        Ok(file.encode(&meta)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<TrainState, StateError> {
        let file = TensorFile::decode(bytes)?;
        let meta: Meta = file.meta()?;
        if meta.format != FORMAT || meta.version != VERSION {
            return Err(StateError::Mismatch(format!(
                "format {} v{}, expected {FORMAT} v{VERSION}",
                meta.format, meta.version
            )));
        }
        let mut state = TrainState { step: meta.step, counters: meta.counters, ..TrainState::default() };
        let names: Vec<String> = file.names().map(str::to_string).collect();
        for name in names {
            if let Some(short) = name.strip_prefix("f32/") {
                state.tensors.insert(short.to_string(), (file.shape(&name)?.to_vec(), file.f32(&name)?));
            } else if let Some(short) = name.strip_prefix("f64/") {
                let bits = file.u32(&name)?;
                let values = bits.chunks_exact(2).map(|p| f64::from_bits(u64::from(p[0]) | (u64::from(p[1]) << 32)));
                state.series.insert(short.to_string(), values.collect());
            } else {
                return Err(StateError::Mismatch(format!("unexpected tensor `{name}`")));
            }
        }
        Ok(state)
    }
}

fn values(tensor: &Tensor) -> Result<(Vec<usize>, Vec<f32>), StateError> {
    Ok((tensor.dims().to_vec(), tensor.flatten_all()?.to_vec1::<f32>()?))
}

impl Trainer<'_> {
    /// Adds the model, the optimizer and the step to `state`. Accelerators' Adam
    /// (candle's `AdamW`) keeps its moments private: not resumable.
    pub fn save_state(&self, state: &mut TrainState) -> Result<(), StateError> {
        for (name, tensor) in models::state(self.model) {
            let (shape, values) = values(&tensor)?;
            state.set_tensor(&format!("model/{name}"), shape, values);
        }
        match &self.optimizer {
            Optimizer::FusedAdam(adam) => {
                state.set_counter("adam.step", adam.step as u64);
                for ((name, var), moments) in adam.names.iter().zip(&adam.vars).zip(&adam.moments) {
                    let shape = var.dims().to_vec();
                    let (m, v) = &*moments.lock().unwrap_or_else(|e| e.into_inner());
                    // Never stepped: zeros, which the first update would start from.
                    let fill = |x: &Vec<f32>| if x.is_empty() { vec![0.0; var.elem_count()] } else { x.clone() };
                    state.set_tensor(&format!("adam.m/{name}"), shape.clone(), fill(m));
                    state.set_tensor(&format!("adam.v/{name}"), shape, fill(v));
                }
            }
            Optimizer::Sgd(sgd) => {
                for (name, buffer) in self.names.iter().zip(&sgd.buffers) {
                    if let Some(buffer) = buffer {
                        let (shape, values) = values(buffer)?;
                        state.set_tensor(&format!("sgd.momentum/{name}"), shape, values);
                    }
                }
            }
            Optimizer::Adam { .. } => {
                return Err(StateError::Unsupported(
                    "Adam on an accelerator keeps its moments inside candle: this run cannot be resumed",
                ))
            }
        }
        state.set_counter("trainer.step", self.step as u64);
        state.set_series("trainer.lr", &[self.lr]);
        state.set_series("trainer.grad_norms", &self.grad_norms);
        Ok(())
    }

    /// Restores what [`Trainer::save_state`] saved, into a trainer built from the
    /// same configuration.
    pub fn load_state(&mut self, state: &TrainState) -> Result<(), StateError> {
        let device = self.model.parameters().first().map(|(_, var)| var.device().clone());
        let device = device.unwrap_or(candle_core::Device::Cpu);
        let tensor = |name: &str| -> Result<Tensor, StateError> {
            let (shape, values) = state.tensor(name)?;
            Ok(Tensor::from_slice(values, shape.as_slice(), &device)?)
        };
        let mut model: HashMap<String, Tensor> = HashMap::new();
        for name in state.tensor_names("model/") {
            model.insert(name.to_string(), tensor(&format!("model/{name}"))?);
        }
        models::load_state(self.model, &model)?;
        match &mut self.optimizer {
            Optimizer::FusedAdam(adam) => {
                adam.step = state.counter("adam.step")? as usize;
                for ((name, var), moments) in adam.names.iter().zip(&adam.vars).zip(&adam.moments) {
                    let (_, m) = state.tensor(&format!("adam.m/{name}"))?;
                    let (_, v) = state.tensor(&format!("adam.v/{name}"))?;
                    if m.len() != var.elem_count() || v.len() != var.elem_count() {
                        return Err(StateError::Mismatch(format!("moments of `{name}` have the wrong size")));
                    }
                    *moments.lock().unwrap_or_else(|e| e.into_inner()) = (m.clone(), v.clone());
                }
            }
            Optimizer::Sgd(sgd) => {
                for (name, buffer) in self.names.iter().zip(sgd.buffers.iter_mut()) {
                    let key = format!("sgd.momentum/{name}");
                    *buffer = if state.has_tensor(&key) { Some(tensor(&key)?) } else { None };
                }
            }
            Optimizer::Adam { .. } => {
                return Err(StateError::Unsupported("Adam on an accelerator cannot be resumed"));
            }
        }
        self.step = state.counter("trainer.step")? as usize;
        self.lr = state.series("trainer.lr")?.first().copied().unwrap_or(self.lr);
        self.grad_norms = state.series("trainer.grad_norms")?;
        Ok(())
    }
}

impl Batches<'_> {
    /// Adds the data order's position (`batches/<purpose>.*`) to `state`.
    pub fn save_state(&self, state: &mut TrainState) {
        state.set_counter(&format!("batches/{}.epoch", self.purpose), self.epoch as u64);
        state.set_counter(&format!("batches/{}.position", self.purpose), self.position as u64);
    }

    /// Continues from the position [`Batches::save_state`] saved: the current
    /// epoch's order is recomputed from its seed.
    pub fn load_state(&mut self, state: &TrainState) -> Result<(), StateError> {
        self.epoch = state.counter(&format!("batches/{}.epoch", self.purpose))? as usize;
        let position = state.counter(&format!("batches/{}.position", self.purpose))?;
        self.position = usize::try_from(position).unwrap_or(usize::MAX);
        self.order.clear();
        if self.epoch > 0 {
            self.order = (0..self.data.len as u32).collect();
            let purpose = format!("shuffle/{}/epoch={}", self.purpose, self.epoch - 1);
            Rng::new(self.seed, &purpose).shuffle(&mut self.order);
        }
        if self.position != usize::MAX && self.position > self.order.len() {
            return Err(StateError::Mismatch(format!(
                "data position {} beyond {} examples",
                self.position,
                self.order.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::{Activation, Init, Mlp, MlpSpec};
    use crate::train::{OptimSpec, OptimizerKind, Schedule, ScheduleKind, SplitTensors};

    fn data() -> SplitTensors {
        let x: Vec<f32> = (0..40 * 6).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<u32> = (0..40).map(|i| (i % 3) as u32).collect();
        SplitTensors {
            x: Tensor::from_vec(x, (40, 6), &Device::Cpu).unwrap(),
            y: Tensor::from_vec(y, 40, &Device::Cpu).unwrap(),
            len: 40,
        }
    }

    fn model() -> Mlp {
        let spec = MlpSpec { n_in: 6, hidden: vec![5], n_out: 3, activation: Activation::Relu };
        Mlp::new(&spec, &Init::Naive, 4, &Device::Cpu).unwrap()
    }

    fn weights(model: &Mlp) -> Vec<Vec<f32>> {
        models::state(model).iter().map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
    }

    /// `total` steps straight, and `split` steps, a save, a fresh trainer restored
    /// from the bytes, then the rest: the same weights, bit for bit.
    fn resumes_exactly(kind: OptimizerKind, schedule: Schedule) {
        let data = data();
        let spec = OptimSpec { kind, lr: 0.05, weight_decay: 0.01 };
        let (total, split) = (23, 9);
        let straight = model();
        let mut trainer = Trainer::with_schedule(&straight, &spec, schedule, total).unwrap();
        let mut batches = Batches::new(&data, 16, 5, "train");
        let mut losses = Vec::new();
        for _ in 0..total {
            let (x, y) = batches.next_batch().unwrap();
            losses.push(trainer.step(&x, &y).unwrap());
        }
        let first = model();
        let mut trainer = Trainer::with_schedule(&first, &spec, schedule, total).unwrap();
        let mut batches = Batches::new(&data, 16, 5, "train");
        for _ in 0..split {
            let (x, y) = batches.next_batch().unwrap();
            trainer.step(&x, &y).unwrap();
        }
        let mut state = TrainState::new(split as u64);
        trainer.save_state(&mut state).unwrap();
        batches.save_state(&mut state);
        let bytes = state.encode().unwrap();
        assert_eq!(bytes, state.encode().unwrap(), "deterministic bytes");
        let state = TrainState::decode(&bytes).unwrap();
        let resumed = model();
        let mut trainer = Trainer::with_schedule(&resumed, &spec, schedule, total).unwrap();
        let mut batches = Batches::new(&data, 16, 5, "train");
        trainer.load_state(&state).unwrap();
        batches.load_state(&state).unwrap();
        let mut rest = Vec::new();
        while trainer.step < total {
            let (x, y) = batches.next_batch().unwrap();
            rest.push(trainer.step(&x, &y).unwrap());
        }
        assert_eq!(rest, losses[split..], "the same batches and losses");
        assert_eq!(weights(&resumed), weights(&straight));
    }

    #[test]
    fn adam_resumes_bitwise() {
        let adam = OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 };
        resumes_exactly(adam, Schedule { kind: ScheduleKind::Step { every: 5, gamma: 0.5 }, warmup_steps: 3 });
    }

    #[test]
    fn sgd_with_nesterov_resumes_bitwise() {
        resumes_exactly(OptimizerKind::Sgd { momentum: 0.9, nesterov: true }, Schedule::constant());
    }

    #[test]
    fn series_keep_their_bits() {
        let mut state = TrainState::new(3);
        let odd = [f64::NAN, 0.1 + 0.2, -0.0, f64::MIN_POSITIVE / 3.0, 1e300];
        state.set_series("x", &odd);
        state.set_series("empty", &[]);
        state.set_counter("big", u64::MAX);
        let back = TrainState::decode(&state.encode().unwrap()).unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.series("x").unwrap()), bits(&odd));
        assert!(back.series("empty").unwrap().is_empty());
        assert_eq!((back.step, back.counter("big").unwrap()), (3, u64::MAX));
    }
}
