//! The training loop's parts: seeded batches, optimizers (Adam, AdamW, SGD with
//! momentum or Nesterov) with every parameter explicit, learning-rate schedules as
//! pure functions of the step, one step with a non-finite guard, and full-split
//! evaluation.

use std::sync::Mutex;

use candle_core::{CpuStorage, Device, InplaceOp2, Layout, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer as _, ParamsAdamW};

mod early_stop;
mod schedule;
pub mod state;

pub use early_stop::EarlyStop;
pub use schedule::{Schedule, ScheduleKind, ScheduleName};

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
    AdamW,
    Sgd,
}

impl workspace::ChoiceKnob for OptimizerName {
    const OPTIONS: &'static [&'static str] = &["adam", "adamw", "sgd"];

    fn from_index(index: usize) -> OptimizerName {
        [OptimizerName::Adam, OptimizerName::AdamW, OptimizerName::Sgd][index]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum OptimizerKind {
    /// Adam (Kingma and Ba); `weight_decay` is an L2 penalty added to the gradient
    /// before the moments, as in PyTorch's `Adam`.
    Adam { beta1: f64, beta2: f64, eps: f64 },
    /// AdamW (Loshchilov and Hutter): `weight_decay` shrinks the weights directly,
    /// `p *= 1 - lr_t * weight_decay`, outside the moments.
    AdamW { beta1: f64, beta2: f64, eps: f64 },
    /// SGD with momentum (PyTorch's form: `buf = momentum * buf + g`, the first
    /// step `buf = g`), the update `buf`, or `g + momentum * buf` with Nesterov;
    /// `weight_decay` decoupled, `p *= 1 - lr_t * weight_decay`.
    Sgd { momentum: f64, nesterov: bool },
}

/// Every optimizer knob, explicit: nothing is left to a library default (candle's
/// `ParamsAdamW::default()` would decay weights by 0.01).
#[derive(Debug, Clone, PartialEq)]
pub struct OptimSpec {
    pub kind: OptimizerKind,
    /// The base learning rate; a [`Schedule`] scales it per step.
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
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// L2 penalty added to the gradient (Adam).
    l2: f64,
    /// Decoupled decay of the weights (AdamW).
    decoupled: f64,
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
    /// Multiplies the weights before the update (AdamW's decoupled decay; 1 for Adam).
    decay: f32,
    /// Adam's L2 penalty: `g + l2 * p` enters the moments.
    l2: f32,
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
        // The formula and operation order of candle-nn's AdamW, in f32. Without an L2
        // penalty the loop is exactly the one before Adam and AdamW were told apart,
        // so the default configuration keeps its bytes.
        let update = |p: &mut f32, g: f32, m: &mut f32, v: &mut f32| {
            *m = *m * self.beta1 + g * (1.0 - self.beta1);
            *v = *v * self.beta2 + g * g * (1.0 - self.beta2);
            let m_hat = *m * self.scale_m;
            let v_hat = *v * self.scale_v;
            *p = *p * self.decay - m_hat / (v_hat.sqrt() + self.eps) * self.lr;
        };
        let lanes = params[p0..p1].iter_mut().zip(&grads[g0..g1]).zip(m.iter_mut()).zip(v.iter_mut());
        if self.l2 == 0.0 {
            for (((p, &g), m), v) in lanes {
                update(p, g, m, v);
            }
        } else {
            for (((p, &g), m), v) in lanes {
                let g = g + self.l2 * *p;
                update(p, g, m, v);
            }
        }
        Ok(())
    }
}

impl FusedAdam {
    /// One update; returns the squared gradient norm per parameter, or the name of
    /// the first parameter whose gradient was not finite (nothing after it updated).
    fn step(&mut self, grads: &candle_core::backprop::GradStore, lr: f64) -> Result<Vec<f64>, TrainError> {
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
                lr: lr as f32,
                beta1: self.beta1 as f32,
                beta2: self.beta2 as f32,
                eps: self.eps as f32,
                decay: (1.0 - lr * self.decoupled) as f32,
                l2: self.l2 as f32,
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

/// SGD's state: one momentum buffer per parameter.
struct Sgd {
    vars: Vec<Var>,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    /// One SGD update of `var` by `grad` at rate `lr` (see [`OptimizerKind::Sgd`]).
    fn update(&self, var: &Var, grad: &Tensor, buffer: &mut Option<Tensor>, lr: f64) -> candle_core::Result<()> {
        let step = if self.momentum > 0.0 {
            let next = match buffer.take() {
                Some(previous) => ((previous * self.momentum)? + grad)?,
                None => grad.clone(),
            };
            let step = if self.nesterov { (grad + (&next * self.momentum)?)? } else { next.clone() };
            *buffer = Some(next);
            step
        } else {
            grad.clone()
        };
        let decayed = (var.as_tensor() * (1.0 - lr * self.weight_decay))?;
        var.set(&(decayed - (&step * lr)?)?)
    }
}

enum Optimizer {
    FusedAdam(FusedAdam),
    /// candle-nn's AdamW with weight decay set explicitly; `l2` is Adam's penalty,
    /// added to the gradients before the step.
    Adam {
        inner: AdamW,
        vars: Vec<Var>,
        l2: f64,
    },
    Sgd(Sgd),
}

/// Takes optimizer steps on a model.
pub struct Trainer<'m> {
    model: &'m dyn Model,
    optimizer: Optimizer,
    names: Vec<String>,
    base_lr: f64,
    schedule: Schedule,
    /// Steps of the whole run, for schedules that depend on it (cosine).
    total_steps: usize,
    pub step: usize,
    /// The learning rate of the last step taken.
    pub lr: f64,
    /// Gradient L2 norm per parameter at the last step (in `parameters()` order).
    pub grad_norms: Vec<f64>,
}

impl<'m> Trainer<'m> {
    /// A trainer at a constant learning rate.
    pub fn new(model: &'m dyn Model, spec: &OptimSpec) -> Result<Trainer<'m>, TrainError> {
        Trainer::build(model, spec, Schedule::constant(), 0, true)
    }

    /// A trainer whose rate at step `t` is `spec.lr * schedule.factor(t, total_steps)`.
    pub fn with_schedule(
        model: &'m dyn Model,
        spec: &OptimSpec,
        schedule: Schedule,
        total_steps: usize,
    ) -> Result<Trainer<'m>, TrainError> {
        Trainer::build(model, spec, schedule, total_steps, true)
    }

    fn build(
        model: &'m dyn Model,
        spec: &OptimSpec,
        schedule: Schedule,
        total_steps: usize,
        allow_fused: bool,
    ) -> Result<Trainer<'m>, TrainError> {
        let (names, vars): (Vec<String>, Vec<Var>) = model.parameters().into_iter().unzip();
        let on_cpu = allow_fused && vars.iter().all(|var| var.device().is_cpu());
        let wd = spec.weight_decay;
        let optimizer = match spec.kind {
            OptimizerKind::Adam { beta1, beta2, eps } | OptimizerKind::AdamW { beta1, beta2, eps } => {
                let (l2, decoupled) =
                    if matches!(spec.kind, OptimizerKind::Adam { .. }) { (wd, 0.0) } else { (0.0, wd) };
                if on_cpu {
                    Optimizer::FusedAdam(FusedAdam {
                        names: names.clone(),
                        moments: vars.iter().map(|_| Mutex::default()).collect(),
                        vars,
                        beta1,
                        beta2,
                        eps,
                        l2,
                        decoupled,
                        step: 0,
                    })
                } else {
                    let params = ParamsAdamW { lr: spec.lr, beta1, beta2, eps, weight_decay: decoupled };
                    Optimizer::Adam { inner: AdamW::new(vars.clone(), params)?, vars, l2 }
                }
            }
            OptimizerKind::Sgd { momentum, nesterov } => {
                Optimizer::Sgd(Sgd { buffers: vec![None; vars.len()], vars, momentum, nesterov, weight_decay: wd })
            }
        };
        Ok(Trainer {
            model,
            optimizer,
            names,
            base_lr: spec.lr,
            schedule,
            total_steps,
            step: 0,
            lr: spec.lr,
            grad_norms: Vec::new(),
        })
    }

    /// The learning rate step `step` uses: a pure function of the schedule, the
    /// step and the run's length, so a run resumed at step k continues exactly.
    pub fn lr_at(&self, step: usize) -> f64 {
        self.schedule.lr(self.base_lr, step, self.total_steps)
    }

    /// One optimizer step on `(x, y)`; returns the batch loss before the step.
    pub fn step(&mut self, x: &Tensor, y: &Tensor) -> Result<f32, TrainError> {
        self.model.set_step(self.step);
        let loss = cross_entropy(&self.model.forward(x)?, y)?;
        self.step_on(&loss)
    }

    /// One optimizer step on a scalar `loss` the caller computed from this trainer's
    /// model (distillation's soft targets); returns its value.
    pub fn step_on(&mut self, loss: &Tensor) -> Result<f32, TrainError> {
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::NonFinite { step: self.step, tensor: "loss".into(), value });
        }
        let lr = self.lr_at(self.step);
        match &mut self.optimizer {
            Optimizer::FusedAdam(adam) => {
                let squared = adam.step(&loss.backward()?, lr)?;
                self.grad_norms = squared.into_iter().map(f64::sqrt).collect();
            }
            // On accelerators: no per-step read-back of gradients (it would sync the
            // device every step); a non-finite gradient shows in the next step's loss.
            Optimizer::Adam { inner, vars, l2 } => {
                let mut grads = loss.backward()?;
                if *l2 != 0.0 {
                    for var in vars.iter() {
                        if let Some(grad) = grads.remove(var) {
                            grads.insert(var, (grad + (var.as_tensor() * *l2)?)?);
                        }
                    }
                }
                inner.set_learning_rate(lr);
                inner.step(&grads)?;
            }
            Optimizer::Sgd(sgd) => {
                let grads = loss.backward()?;
                self.grad_norms.clear();
                let mut buffers = std::mem::take(&mut sgd.buffers);
                for ((var, buffer), name) in sgd.vars.iter().zip(buffers.iter_mut()).zip(&self.names) {
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
                    sgd.update(var, grad, buffer, lr)?;
                }
                sgd.buffers = buffers;
            }
        }
        self.lr = lr;
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

    fn batch() -> (Tensor, Tensor) {
        let x = Tensor::from_vec((0..24).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(), (4, 6), &Device::Cpu)
            .unwrap();
        (x, Tensor::from_vec(vec![0u32, 2, 1, 2], 4, &Device::Cpu).unwrap())
    }

    /// The fused CPU path against candle-nn's AdamW (Adam's L2 added to its gradients).
    fn fused_matches_reference(kind: OptimizerKind, schedule: Schedule) {
        let (x, y) = batch();
        let spec = OptimSpec { kind, lr: 1e-2, weight_decay: 0.1 };
        let (fused, reference) = (model(), model());
        let mut fused_trainer = Trainer::build(&fused, &spec, schedule, 50, true).unwrap();
        let mut reference_trainer = Trainer::build(&reference, &spec, schedule, 50, false).unwrap();
        assert!(matches!(fused_trainer.optimizer, Optimizer::FusedAdam(_)));
        assert!(matches!(reference_trainer.optimizer, Optimizer::Adam { .. }));
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
    fn fused_adamw_matches_candle_adamw() {
        fused_matches_reference(OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, Schedule::constant());
    }

    #[test]
    fn fused_adam_with_l2_matches_candle_with_l2_gradients() {
        fused_matches_reference(OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, Schedule::constant());
    }

    #[test]
    fn fused_adam_follows_the_schedule_like_candle() {
        let schedule = Schedule { kind: ScheduleKind::Cosine { min_ratio: 0.1 }, warmup_steps: 5 };
        fused_matches_reference(OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, schedule);
    }

    #[test]
    fn adam_and_adamw_differ_only_with_weight_decay() {
        let (x, y) = batch();
        let run = |kind: OptimizerKind, weight_decay: f64| {
            let m = model();
            let mut trainer = Trainer::new(&m, &OptimSpec { kind, lr: 1e-2, weight_decay }).unwrap();
            for _ in 0..5 {
                trainer.step(&x, &y).unwrap();
            }
            m.parameters()
                .iter()
                .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect::<Vec<_>>()
        };
        let adam = OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 };
        let adamw = OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 };
        assert_eq!(run(adam.clone(), 0.0), run(adamw.clone(), 0.0), "no decay: the same bits");
        assert_ne!(run(adam, 0.1), run(adamw, 0.1), "L2 and decoupled decay are different optimizers");
    }

    #[test]
    fn sgd_momentum_and_nesterov_by_hand() {
        // Constant gradient 1 on a weight at 0, lr 0.1, momentum 0.9.
        let run = |nesterov: bool| {
            let var = Var::from_slice(&[0f32], 1, &Device::Cpu).unwrap();
            let sgd = Sgd { vars: vec![], momentum: 0.9, nesterov, weight_decay: 0.0, buffers: vec![] };
            let grad = Tensor::from_slice(&[1f32], 1, &Device::Cpu).unwrap();
            let mut buffer = None;
            let mut values = Vec::new();
            for _ in 0..2 {
                sgd.update(&var, &grad, &mut buffer, 0.1).unwrap();
                values.push(var.as_tensor().to_vec1::<f32>().unwrap()[0]);
            }
            values
        };
        // Heavy ball: buf 1 then 1.9; p = -0.1, then -0.29.
        let plain = run(false);
        assert!((plain[0] + 0.1).abs() < 1e-6 && (plain[1] + 0.29).abs() < 1e-6, "{plain:?}");
        // Nesterov: step g + 0.9 buf = 1.9 then 2.71; p = -0.19, then -0.461.
        let nesterov = run(true);
        assert!((nesterov[0] + 0.19).abs() < 1e-6 && (nesterov[1] + 0.461).abs() < 1e-6, "{nesterov:?}");
    }

    #[test]
    fn trainer_reports_the_scheduled_rate_of_each_step() {
        let (x, y) = batch();
        let m = model();
        let spec =
            OptimSpec { kind: OptimizerKind::Sgd { momentum: 0.0, nesterov: false }, lr: 0.1, weight_decay: 0.0 };
        let schedule = Schedule { kind: ScheduleKind::Step { every: 2, gamma: 0.5 }, warmup_steps: 0 };
        let mut trainer = Trainer::with_schedule(&m, &spec, schedule, 6).unwrap();
        let mut rates = Vec::new();
        for _ in 0..6 {
            trainer.step(&x, &y).unwrap();
            rates.push(trainer.lr);
        }
        assert_eq!(rates, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]);
    }

    #[test]
    fn non_finite_loss_stops_training() {
        let m = model();
        let x = Tensor::from_vec(vec![f32::MAX; 6], (1, 6), &Device::Cpu).unwrap();
        let y = Tensor::from_vec(vec![0u32], 1, &Device::Cpu).unwrap();
        let spec =
            OptimSpec { kind: OptimizerKind::Sgd { momentum: 0.0, nesterov: false }, lr: 0.1, weight_decay: 0.0 };
        let mut trainer = Trainer::new(&m, &spec).unwrap();
        assert!(matches!(trainer.step(&x, &y), Err(TrainError::NonFinite { step: 0, .. })));
    }
}
