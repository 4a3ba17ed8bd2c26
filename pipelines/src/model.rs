//! Models as structs of named layers. Weights are initialised from our own seeded
//! generator; the layer names (`fc1.weight`, ...) are the checkpoint's tensor names.

use candle_core::{DType, Device, Result, Tensor, Var};

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

impl Activation {
    pub fn parse(name: &str) -> Activation {
        match name {
            "tanh" => Activation::Tanh,
            "gelu" => Activation::Gelu,
            _ => Activation::Relu,
        }
    }

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

/// Mean cross-entropy of logits against u32 labels.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    candle_nn::loss::cross_entropy(logits, labels)
}

/// Share of rows whose arg-max logit equals the label.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let predicted = logits.argmax(1)?;
    let correct = predicted.eq(labels)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok(correct as f64 / labels.dim(0)? as f64)
}
