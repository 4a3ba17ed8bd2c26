//! The training loop's parts: seeded batches, an optimizer with every parameter
//! explicit, one step with a non-finite guard, and full-split evaluation.

use std::sync::Mutex;

use candle_core::{CpuStorage, Device, InplaceOp2, Layout, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer as _, ParamsAdamW};

use crate::data::Split;
use crate::model::{accuracy, cross_entropy, Model};
use crate::rng::Rng;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("step {step}: `{tensor}` became {value}, the first non-finite tensor; try a lower train.lr")]
    NonFinite { step: usize, tensor: String, value: f32 },
}

/// `train.optimizer`: which optimizer the training stages use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerName {
    Adam,
    Sgd,
}

impl workspace::ChoiceKnob for OptimizerName {
    const OPTIONS: &'static [&'static str] = &["adam", "sgd"];

    fn from_index(index: usize) -> OptimizerName {
        [OptimizerName::Adam, OptimizerName::Sgd][index]
    }
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

/// Adam(W) on CPU as one pass over each parameter, updating it in place. candle-nn's
/// AdamW computes the same formula as a dozen tensor ops per parameter, each
/// allocating; for small models that dominates a training step.
struct FusedAdam {
    names: Vec<String>,
    vars: Vec<Var>,
    /// First and second moments, one pair per parameter.
    moments: Vec<Mutex<(Vec<f32>, Vec<f32>)>>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: usize,
}

struct AdamUpdate<'a> {
    moments: &'a Mutex<(Vec<f32>, Vec<f32>)>,
    /// Sum of squared gradients, and the first non-finite gradient value seen.
    seen: &'a Mutex<(f64, Option<f32>)>,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,
    scale_m: f32,
    scale_v: f32,
}

impl InplaceOp2 for AdamUpdate<'_> {
    fn name(&self) -> &'static str {
        "fused-adam"
    }

    fn cpu_fwd(
        &self,
        params: &mut CpuStorage,
        pl: &Layout,
        grads: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(params), CpuStorage::F32(grads)) = (params, grads) else {
            candle_core::bail!("fused-adam: f32 parameters and gradients only")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (pl.contiguous_offsets(), gl.contiguous_offsets()) else {
            candle_core::bail!("fused-adam: contiguous tensors only")
        };
        let mut moments = self.moments.lock().unwrap_or_else(|e| e.into_inner());
        let (m, v) = &mut *moments;
        if m.len() != p1 - p0 {
            *m = vec![0.0; p1 - p0];
            *v = vec![0.0; p1 - p0];
        }
        // One pass over the gradient first: its norm for the charts, and a guard so a
        // NaN/Inf gradient never reaches the weights. Eight independent lanes let the
        // compiler vectorise it; a NaN or Inf anywhere makes the sum non-finite.
        let grad = &grads[g0..g1];
        let mut lanes = [0f32; 8];
        let chunks = grad.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|g| g * g).sum();
        for chunk in chunks {
            for (lane, g) in lanes.iter_mut().zip(chunk) {
                *lane += g * g;
            }
        }
        let sum_sq = lanes.iter().sum::<f32>() + tail;
        if !sum_sq.is_finite() {
            let bad = grad.iter().copied().find(|g| !g.is_finite()).unwrap_or(sum_sq);
            *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = (f64::from(sum_sq), Some(bad));
            return Ok(());
        }
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = (f64::from(sum_sq), None);
        // The formula and operation order of candle-nn's AdamW, in f32.
        for (((p, &g), m), v) in params[p0..p1].iter_mut().zip(&grads[g0..g1]).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = *m * self.beta1 + g * (1.0 - self.beta1);
            *v = *v * self.beta2 + g * g * (1.0 - self.beta2);
            let m_hat = *m * self.scale_m;
            let v_hat = *v * self.scale_v;
            *p = *p * self.decay - m_hat / (v_hat.sqrt() + self.eps) * self.lr;
        }
        Ok(())
    }
}

impl FusedAdam {
    /// One update; returns the squared gradient norm per parameter, or the name of
    /// the first parameter whose gradient was not finite (nothing after it updated).
    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<Vec<f64>, TrainError> {
        self.step += 1;
        let t = self.step as f64;
        let mut norms = Vec::with_capacity(self.vars.len());
        for ((var, moments), name) in self.vars.iter().zip(&self.moments).zip(&self.names) {
            let Some(grad) = grads.get(var) else {
                norms.push(0.0);
                continue;
            };
            let seen = Mutex::new((0.0, None));
            let update = AdamUpdate {
                moments,
                seen: &seen,
                lr: self.lr as f32,
                beta1: self.beta1 as f32,
                beta2: self.beta2 as f32,
                eps: self.eps as f32,
                decay: (1.0 - self.lr * self.weight_decay) as f32,
                scale_m: (1.0 / (1.0 - self.beta1.powf(t))) as f32,
                scale_v: (1.0 / (1.0 - self.beta2.powf(t))) as f32,
            };
            var.as_tensor().inplace_op2(&grad.contiguous()?, &update)?;
            let (sum_sq, bad) = *seen.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(value) = bad {
                return Err(TrainError::NonFinite { step: self.step - 1, tensor: format!("{name}.grad"), value });
            }
            norms.push(sum_sq);
        }
        Ok(norms)
    }
}

enum Optimizer {
    FusedAdam(FusedAdam),
    Adam(AdamW),
    Sgd { vars: Vec<Var>, lr: f64, momentum: f64, weight_decay: f64, velocity: Vec<Option<Tensor>> },
}

/// Takes optimizer steps on a model.
pub struct Trainer<'m> {
    model: &'m dyn Model,
    optimizer: Optimizer,
    names: Vec<String>,
    pub step: usize,
    /// Gradient L2 norm per parameter at the last step (in `parameters()` order).
    pub grad_norms: Vec<f64>,
}

impl<'m> Trainer<'m> {
    pub fn new(model: &'m dyn Model, spec: &OptimSpec) -> Result<Trainer<'m>, TrainError> {
        Trainer::build(model, spec, true)
    }

    fn build(model: &'m dyn Model, spec: &OptimSpec, allow_fused: bool) -> Result<Trainer<'m>, TrainError> {
        let (names, vars): (Vec<String>, Vec<Var>) = model.parameters().into_iter().unzip();
        let on_cpu = allow_fused && vars.iter().all(|var| var.device().is_cpu());
        let optimizer = match spec.kind {
            OptimizerKind::Adam { beta1, beta2, eps } if on_cpu => Optimizer::FusedAdam(FusedAdam {
                names: names.clone(),
                moments: vars.iter().map(|_| Mutex::default()).collect(),
                vars,
                lr: spec.lr,
                beta1,
                beta2,
                eps,
                weight_decay: spec.weight_decay,
                step: 0,
            }),
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
        Ok(Trainer { model, optimizer, names, step: 0, grad_norms: Vec::new() })
    }

    /// One optimizer step on `(x, y)`; returns the batch loss before the step.
    pub fn step(&mut self, x: &Tensor, y: &Tensor) -> Result<f32, TrainError> {
        let loss = cross_entropy(&self.model.forward(x)?, y)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::NonFinite { step: self.step, tensor: "loss".into(), value });
        }
        match &mut self.optimizer {
            Optimizer::FusedAdam(adam) => {
                let squared = adam.step(&loss.backward()?)?;
                self.grad_norms = squared.into_iter().map(f64::sqrt).collect();
            }
            // On accelerators: no per-step read-back of gradients (it would sync the
            // device every step); a non-finite gradient shows in the next step's loss.
            Optimizer::Adam(adam) => adam.backward_step(&loss)?,
            Optimizer::Sgd { vars, lr, momentum, weight_decay, velocity } => {
                let grads = loss.backward()?;
                self.grad_norms.clear();
                for ((var, velocity), name) in vars.iter().zip(velocity.iter_mut()).zip(&self.names) {
                    let Some(grad) = grads.get(var) else { continue };
                    let sum_sq = grad.sqr()?.sum_all()?.to_scalar::<f32>()?;
                    if !sum_sq.is_finite() {
                        return Err(TrainError::NonFinite {
                            step: self.step,
                            tensor: format!("{name}.grad"),
                            value: sum_sq,
                        });
                    }
                    self.grad_norms.push((sum_sq as f64).sqrt());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, Init, Mlp, MlpSpec};

    fn model() -> Mlp {
        let spec = MlpSpec { n_in: 6, hidden: vec![5], n_out: 3, activation: Activation::Relu };
        Mlp::new(&spec, &Init::Naive, 4, &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_adam_matches_candle_adamw() {
        let x = Tensor::from_vec((0..24).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(), (4, 6), &Device::Cpu)
            .unwrap();
        let y = Tensor::from_vec(vec![0u32, 2, 1, 2], 4, &Device::Cpu).unwrap();
        let spec = OptimSpec {
            kind: OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 },
            lr: 1e-2,
            weight_decay: 0.1,
        };
        let (fused, reference) = (model(), model());
        let mut fused_trainer = Trainer::build(&fused, &spec, true).unwrap();
        let mut reference_trainer = Trainer::build(&reference, &spec, false).unwrap();
        assert!(matches!(fused_trainer.optimizer, Optimizer::FusedAdam(_)));
        assert!(matches!(reference_trainer.optimizer, Optimizer::Adam(_)));
        for _ in 0..50 {
            let a = fused_trainer.step(&x, &y).unwrap();
            let b = reference_trainer.step(&x, &y).unwrap();
            assert!((a - b).abs() < 1e-5, "loss {a} vs {b}");
        }
        for ((name, a), (_, b)) in fused.parameters().iter().zip(reference.parameters()) {
            let diff = (a.as_tensor() - b.as_tensor()).unwrap().abs().unwrap().max_all().unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "{name} differs by {diff}");
        }
    }

    #[test]
    fn non_finite_loss_stops_training() {
        let m = model();
        let x = Tensor::from_vec(vec![f32::MAX; 6], (1, 6), &Device::Cpu).unwrap();
        let y = Tensor::from_vec(vec![0u32], 1, &Device::Cpu).unwrap();
        let spec = OptimSpec { kind: OptimizerKind::Sgd { momentum: 0.0 }, lr: 0.1, weight_decay: 0.0 };
        let mut trainer = Trainer::new(&m, &spec).unwrap();
        assert!(matches!(trainer.step(&x, &y), Err(TrainError::NonFinite { step: 0, .. })));
    }
}
