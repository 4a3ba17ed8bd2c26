//! Models as structs of named layers. Weights are initialised from our own seeded
//! generator; the layer names (`fc1.weight`, ...) are the checkpoint's tensor names.

use candle_core::{DType, Device, Result, Tensor, Var};
use workspace::ChoiceKnob;

use crate::rng::Rng;

/// What every model offers the training loop and the recipe's checks.
pub trait Model {
    /// Logits `[batch, classes]` for inputs `[batch, features]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Trainable parameters by checkpoint name, in a stable order.
    fn parameters(&self) -> Vec<(String, Var)>;

    /// Logits plus each hidden layer's output (after its activation), by layer name.
    fn forward_traced(&self, x: &Tensor) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        Ok((self.forward(x)?, Vec::new()))
    }

    /// Whether output position t may depend only on input positions up to t
    /// (inputs `[batch, time, features]`, outputs `[batch, time, classes]`).
    fn autoregressive(&self) -> bool {
        false
    }

    /// Switches layers that mix the batch by design (batch norm) between training
    /// and evaluation behaviour. Models without such layers ignore it.
    fn set_training(&self, _training: bool) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Tanh,
    Gelu,
}

/// `model.activation`: an unknown name is a config error, never a silent ReLU.
impl ChoiceKnob for Activation {
    const OPTIONS: &'static [&'static str] = &["relu", "tanh", "gelu"];

    fn from_index(index: usize) -> Activation {
        [Activation::Relu, Activation::Tanh, Activation::Gelu][index]
    }
}

/// `model.kind`: which model the training stages build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Mlp,
    /// Softmax regression: an MLP without hidden layers.
    Linear,
}

impl ChoiceKnob for ModelKind {
    const OPTIONS: &'static [&'static str] = &["mlp", "linear"];

    fn from_index(index: usize) -> ModelKind {
        [ModelKind::Mlp, ModelKind::Linear][index]
    }
}

impl Activation {
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => x.gelu(),
        }
    }

    /// Gain of the He/LeCun normal init for this non-linearity.
    fn gain(self) -> f64 {
        match self {
            Activation::Relu | Activation::Gelu => 2f64.sqrt(),
            Activation::Tanh => 5.0 / 3.0,
        }
    }
}

/// How to initialise weights.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// The recipe's init: hidden layers He-normal, biases zero; the last layer's
    /// weights 100x smaller than LeCun-normal and its bias the log class priors, so
    /// predictions start at the class priors and the loss at the label entropy.
    Recipe { log_priors: Vec<f32> },
    /// What a framework does by default (candle-nn `linear`: Kaiming-normal weights,
    /// uniform(+-1/sqrt(fan_in)) biases), for comparison.
    Naive,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MlpSpec {
    pub n_in: usize,
    pub hidden: Vec<usize>,
    pub n_out: usize,
    pub activation: Activation,
}

/// A multi-layer perceptron; with no hidden layers it is softmax regression.
pub struct Mlp {
    layers: Vec<(String, Var, Var)>,
    activation: Activation,
}

impl Mlp {
    pub fn new(spec: &MlpSpec, init: &Init, seed: u64, device: &Device) -> Result<Mlp> {
        let mut widths = vec![spec.n_in];
        widths.extend(&spec.hidden);
        widths.push(spec.n_out);
        let n_layers = widths.len() - 1;
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let (fan_in, fan_out) = (widths[i], widths[i + 1]);
            let name = format!("fc{}", i + 1);
            let last = i + 1 == n_layers;
            let mut rng = Rng::new(seed, &format!("init/{name}.weight"));
            let (w_std, bias): (f64, Vec<f32>) = match init {
                Init::Recipe { log_priors } if last => (0.01 / (fan_in as f64).sqrt(), log_priors.clone()),
                Init::Recipe { .. } => (spec.activation.gain() / (fan_in as f64).sqrt(), vec![0.0; fan_out]),
                Init::Naive => {
                    let bound = 1.0 / (fan_in as f64).sqrt();
                    let mut bias_rng = Rng::new(seed, &format!("init/{name}.bias"));
                    let bias = (0..fan_out).map(|_| ((bias_rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
                    (2f64.sqrt() / (fan_in as f64).sqrt(), bias)
                }
            };
            let weights: Vec<f32> = (0..fan_in * fan_out).map(|_| (rng.normal() * w_std) as f32).collect();
            let weight = Var::from_vec(weights, (fan_out, fan_in), device)?;
            let bias = Var::from_vec(bias, fan_out, device)?;
            layers.push((name, weight, bias));
        }
        Ok(Mlp { layers, activation: spec.activation })
    }
}

impl Model for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_traced_inner(x, false)?.0)
    }

    fn forward_traced(&self, x: &Tensor) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        self.forward_traced_inner(x, true)
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        self.layers
            .iter()
            .flat_map(|(name, weight, bias)| {
                [(format!("{name}.weight"), weight.clone()), (format!("{name}.bias"), bias.clone())]
            })
            .collect()
    }
}

impl Mlp {
    fn forward_traced_inner(&self, x: &Tensor, trace: bool) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        let mut hidden = Vec::new();
        // The bias enters as `ones[batch, 1] x bias[1, out]`: its gradient is then a
        // matmul too, where a broadcast add would make backprop reduce over the batch
        // with candle's slow strided sum (16% of a digits training step, measured).
        let ones = Tensor::ones((x.dim(0)?, 1), x.dtype(), x.device())?;
        let mut h = x.clone();
        for (i, (_, weight, bias)) in self.layers.iter().enumerate() {
            h = (h.matmul(&weight.as_tensor().t()?)? + ones.matmul(&bias.as_tensor().unsqueeze(0)?)?)?;
            if i + 1 < self.layers.len() {
                h = self.activation.apply(&h)?;
                if trace {
                    hidden.push((self.layers[i].0.clone(), h.clone()));
                }
            }
        }
        Ok((h, hidden))
    }

    /// The first layer's weights `[out, in]`.
    pub fn first_layer(&self) -> Option<Tensor> {
        self.layers.first().map(|(_, weight, _)| weight.as_tensor().clone())
    }
}

/// Mean cross-entropy of logits `[batch, classes]` against u32 labels. On CPU one
/// fused op (log-sum-exp per row forward, softmax minus one-hot backward) replaces
/// the nine graph nodes of log_softmax + nll; elsewhere candle-nn's composition.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let fusable = logits.device().is_cpu()
        && logits.dtype() == DType::F32
        && labels.dtype() == DType::U32
        && logits.rank() == 2
        && labels.rank() == 1;
    if fusable {
        logits.contiguous()?.apply_op2(&labels.contiguous()?, SoftmaxCrossEntropy)
    } else {
        candle_nn::loss::cross_entropy(logits, labels)
    }
}

struct SoftmaxCrossEntropy;

fn rows_and_labels<'a>(
    logits: &'a candle_core::CpuStorage,
    logits_layout: &candle_core::Layout,
    labels: &'a candle_core::CpuStorage,
    labels_layout: &candle_core::Layout,
) -> Result<(&'a [f32], &'a [u32], usize)> {
    use candle_core::CpuStorage;
    let (CpuStorage::F32(values), CpuStorage::U32(targets)) = (logits, labels) else {
        candle_core::bail!("softmax-cross-entropy: f32 logits and u32 labels only")
    };
    let (Some((v0, v1)), Some((t0, t1))) = (logits_layout.contiguous_offsets(), labels_layout.contiguous_offsets())
    else {
        candle_core::bail!("softmax-cross-entropy: contiguous tensors only")
    };
    let (batch, classes) = logits_layout.shape().dims2()?;
    if t1 - t0 != batch {
        candle_core::bail!("softmax-cross-entropy: {batch} rows but {} labels", t1 - t0)
    }
    let targets = &targets[t0..t1];
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= classes) {
        candle_core::bail!("softmax-cross-entropy: label {bad} out of range for {classes} classes")
    }
    Ok((&values[v0..v1], targets, classes))
}

impl candle_core::CustomOp2 for SoftmaxCrossEntropy {
    fn name(&self) -> &'static str {
        "softmax-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (values, targets, classes) = rows_and_labels(s1, l1, s2, l2)?;
        let mut total = 0f64;
        for (row, &target) in values.chunks_exact(classes).zip(targets) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
            total += f64::from(max + sum.ln() - row[target as usize]);
        }
        let loss = (total / targets.len().max(1) as f64) as f32;
        Ok((candle_core::CpuStorage::F32(vec![loss]), candle_core::Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (batch, classes) = logits.dims2()?;
        let values: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let targets: Vec<u32> = labels.to_vec1()?;
        let scale = 1.0 / batch.max(1) as f32;
        let mut out = Vec::with_capacity(values.len());
        for (row, &target) in values.chunks_exact(classes).zip(&targets) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = row.iter().map(|&v| (v - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            for (class, e) in exps.iter().enumerate() {
                let onehot = if class == target as usize { 1.0 } else { 0.0 };
                out.push((e / sum - onehot) * scale);
            }
        }
        let grad_logits = Tensor::from_vec(out, (batch, classes), logits.device())?.broadcast_mul(grad)?;
        Ok((Some(grad_logits), None))
    }
}

/// Share of rows whose arg-max logit equals the label.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let predicted = logits.argmax(1)?;
    let correct = predicted.eq(labels)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok(correct as f64 / labels.dim(0)? as f64)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    #[test]
    fn fused_cross_entropy_matches_candle_nn_in_value_and_gradient() {
        let values: Vec<f32> = (0..5 * 4).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.8).collect();
        let labels = Tensor::from_vec(vec![0u32, 3, 1, 2, 3], 5, &Device::Cpu).unwrap();
        let fused = Var::from_vec(values.clone(), (5, 4), &Device::Cpu).unwrap();
        let reference = Var::from_vec(values, (5, 4), &Device::Cpu).unwrap();
        let a = cross_entropy(fused.as_tensor(), &labels).unwrap();
        let b = candle_nn::loss::cross_entropy(reference.as_tensor(), &labels).unwrap();
        let (va, vb) = (a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
        assert!((va - vb).abs() < 1e-5, "{va} vs {vb}");
        let ga = a.backward().unwrap().get(fused.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gb =
            b.backward().unwrap().get(reference.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (x, y) in ga.iter().zip(&gb) {
            assert!((x - y).abs() < 1e-6, "{ga:?} vs {gb:?}");
        }
        let bad = Tensor::from_vec(vec![0u32, 9, 1, 2, 3], 5, &Device::Cpu).unwrap();
        assert!(cross_entropy(fused.as_tensor(), &bad).is_err(), "a label past the classes is an error");
    }
}
