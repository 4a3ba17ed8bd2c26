//! The training loop's parts: seeded batches, an optimizer with every parameter
//! explicit, one step with a non-finite guard, and full-split evaluation.

use candle_core::{Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer as _, ParamsAdamW};

use crate::data::Split;
use crate::model::{accuracy, cross_entropy, Model};
use crate::rng::Rng;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("training loss became {value} at step {step}; try a lower train.lr")]
    NonFinite { step: usize, value: f32 },
}

#[derive(Debug, Clone, PartialEq)]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay (AdamW); `weight_decay = 0` is plain Adam.
    Adam { beta1: f64, beta2: f64, eps: f64 },
    /// SGD with heavy-ball momentum and decoupled weight decay.
    Sgd { momentum: f64 },
}

/// Every optimizer knob, explicit: nothing is left to a library default.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimSpec {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
}

/// A split as device tensors.
pub struct SplitTensors {
    pub x: Tensor,
    pub y: Tensor,
    pub len: usize,
}

impl SplitTensors {
    pub fn new(split: &Split, n_features: usize, device: &Device) -> candle_core::Result<SplitTensors> {
        Ok(SplitTensors {
            x: Tensor::from_slice(&split.x, (split.len(), n_features), device)?,
            y: Tensor::from_slice(&split.y, split.len(), device)?,
            len: split.len(),
        })
    }

    /// The same examples with every input set to zero (the input-independent baseline).
    pub fn zeroed(&self) -> candle_core::Result<SplitTensors> {
        Ok(SplitTensors { x: self.x.zeros_like()?, y: self.y.clone(), len: self.len })
    }

    /// The first `n` examples.
    pub fn head(&self, n: usize) -> candle_core::Result<SplitTensors> {
        let n = n.min(self.len);
        Ok(SplitTensors { x: self.x.narrow(0, 0, n)?, y: self.y.narrow(0, 0, n)?, len: n })
    }
}

/// Mini-batches without replacement, reshuffled each epoch from `(seed, purpose, epoch)`.
/// This is the one code path that feeds training.
pub struct Batches<'a> {
    data: &'a SplitTensors,
    batch_size: usize,
    seed: u64,
    purpose: String,
    epoch: usize,
    order: Vec<u32>,
    position: usize,
}

impl<'a> Batches<'a> {
    pub fn new(data: &'a SplitTensors, batch_size: usize, seed: u64, purpose: &str) -> Batches<'a> {
        Batches {
            data,
            batch_size: batch_size.clamp(1, data.len.max(1)),
            seed,
            purpose: purpose.to_string(),
            epoch: 0,
            order: Vec::new(),
            position: usize::MAX,
        }
    }

    /// The next batch `(x, y)`.
    pub fn next_batch(&mut self) -> candle_core::Result<(Tensor, Tensor)> {
        if self.position.saturating_add(self.batch_size) > self.order.len() {
            self.order = (0..self.data.len as u32).collect();
            Rng::new(self.seed, &format!("shuffle/{}/epoch={}", self.purpose, self.epoch)).shuffle(&mut self.order);
            self.epoch += 1;
            self.position = 0;
        }
        let indices = &self.order[self.position..self.position + self.batch_size];
        self.position += self.batch_size;
        let index = Tensor::from_slice(indices, indices.len(), self.data.x.device())?;
        Ok((self.data.x.index_select(&index, 0)?, self.data.y.index_select(&index, 0)?))
    }
}

enum Optimizer {
    Adam(AdamW),
    Sgd { vars: Vec<Var>, lr: f64, momentum: f64, weight_decay: f64, velocity: Vec<Option<Tensor>> },
}

/// Takes optimizer steps on a model.
pub struct Trainer<'m> {
    model: &'m dyn Model,
    optimizer: Optimizer,
    pub step: usize,
}

impl<'m> Trainer<'m> {
    pub fn new(model: &'m dyn Model, spec: &OptimSpec) -> Result<Trainer<'m>, TrainError> {
        let vars: Vec<Var> = model.parameters().into_iter().map(|(_, var)| var).collect();
        let optimizer = match spec.kind {
            OptimizerKind::Adam { beta1, beta2, eps } => Optimizer::Adam(AdamW::new(
                vars,
                ParamsAdamW { lr: spec.lr, beta1, beta2, eps, weight_decay: spec.weight_decay },
            )?),
            OptimizerKind::Sgd { momentum } => Optimizer::Sgd {
                velocity: vec![None; vars.len()],
                vars,
                lr: spec.lr,
                momentum,
                weight_decay: spec.weight_decay,
            },
        };
        Ok(Trainer { model, optimizer, step: 0 })
    }

    /// One optimizer step on `(x, y)`; returns the batch loss before the step.
    pub fn step(&mut self, x: &Tensor, y: &Tensor) -> Result<f32, TrainError> {
        let loss = cross_entropy(&self.model.forward(x)?, y)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::NonFinite { step: self.step, value });
        }
        match &mut self.optimizer {
            Optimizer::Adam(adam) => adam.backward_step(&loss)?,
            Optimizer::Sgd { vars, lr, momentum, weight_decay, velocity } => {
                let grads = loss.backward()?;
                for (var, velocity) in vars.iter().zip(velocity.iter_mut()) {
                    let Some(grad) = grads.get(var) else { continue };
                    let update = match velocity.take() {
                        Some(v) if *momentum > 0.0 => ((v * *momentum)? + grad)?,
                        _ => grad.clone(),
                    };
                    let decayed = (var.as_tensor() * (1.0 - *lr * *weight_decay))?;
                    var.set(&(decayed - (&update * *lr)?)?)?;
                    *velocity = Some(update);
                }
            }
        }
        self.step += 1;
        Ok(value)
    }
}

/// Loss and accuracy of `model` over a whole split.
pub fn evaluate(model: &dyn Model, data: &SplitTensors) -> candle_core::Result<(f64, f64)> {
    if data.len == 0 {
        return Ok((f64::NAN, f64::NAN));
    }
    let logits = model.forward(&data.x)?;
    let loss = cross_entropy(&logits, &data.y)?.to_scalar::<f32>()? as f64;
    Ok((loss, accuracy(&logits, &data.y)?))
}
