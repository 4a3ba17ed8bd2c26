//! The model zoo: one trait, one file per model (`linear`/`mlp`, `convnet`, `resnet`),
//! shared layers (`layers.rs`: the one place convolutions and pooling are called) and
//! the loss. Weights come from our own seeded generator; layer names (`conv1.weight`,
//! `bn1.running_mean`, ...) are the checkpoint's tensor names.

pub mod convnet;
pub mod dropout;
pub mod layers;
pub mod loss;
pub mod mlp;
pub mod pretrained;
pub mod resnet;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Result, Tensor, Var};
use serde_json::{json, Value};
use workspace::ChoiceKnob;

pub use convnet::{Convnet, ConvnetSpec};
pub use dropout::Dropout;
pub use loss::{accuracy, cross_entropy};
pub use mlp::{Mlp, MlpSpec};
pub use resnet::{Resnet, ResnetSpec};

/// What every model offers the training loop and the recipe's checks.
pub trait Model {
    /// Logits `[batch, classes]` for inputs `[batch, features]` (flat rows; image
    /// models reshape them to `[batch, C, H, W]` themselves).
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Trainable parameters by checkpoint name, in a stable order.
    fn parameters(&self) -> Vec<(String, Var)>;

    /// State that is saved but not trained (batch norm's running statistics).
    fn buffers(&self) -> Vec<(String, Buffer)> {
        Vec::new()
    }

    /// Logits plus each hidden layer's output (after its activation) flattened to
    /// `[batch, units]`, by layer name.
    fn forward_traced(&self, x: &Tensor) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        Ok((self.forward(x)?, Vec::new()))
    }

    /// Whether output position t may depend only on input positions up to t
    /// (inputs `[batch, time, features]`, outputs `[batch, time, classes]`).
    fn autoregressive(&self) -> bool {
        false
    }

    /// Switches layers that mix the batch by design (batch norm) between training
    /// (batch statistics, running statistics updated) and evaluation (running
    /// statistics). Models start in training mode; models without such layers ignore it.
    /// Dropout follows the mode too; a model with batch norm overrides this to switch
    /// its own layers as well.
    fn set_training(&self, training: bool) {
        if let Some(dropout) = self.dropout() {
            dropout.set_training(training);
        }
    }

    /// The model's dropout state (rate, mode, the step keying the masks), if it has any.
    fn dropout(&self) -> Option<&Dropout> {
        None
    }

    /// The dropout rate of training mode (`model.dropout`; models start at 0).
    fn set_dropout(&self, rate: f64) {
        if let Some(dropout) = self.dropout() {
            dropout.set_rate(rate);
        }
    }

    /// The optimizer step the next training forward pass belongs to: it keys the
    /// dropout masks, so they depend on the step, not on how many passes ran.
    fn set_step(&self, step: usize) {
        if let Some(dropout) = self.dropout() {
            dropout.set_step(step);
        }
    }

    /// The first layer's weights as rows `[units, ...]`, and the shape to draw each
    /// row in (`None`: the input's shape).
    fn first_layer(&self) -> Option<(Tensor, Option<Vec<usize>>)> {
        None
    }
}

impl<M: Model + ?Sized> Model for Box<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }
    fn parameters(&self) -> Vec<(String, Var)> {
        (**self).parameters()
    }
    fn buffers(&self) -> Vec<(String, Buffer)> {
        (**self).buffers()
    }
    fn forward_traced(&self, x: &Tensor) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        (**self).forward_traced(x)
    }
    fn autoregressive(&self) -> bool {
        (**self).autoregressive()
    }
    fn set_training(&self, training: bool) {
        (**self).set_training(training)
    }
    fn dropout(&self) -> Option<&Dropout> {
        (**self).dropout()
    }
    fn set_dropout(&self, rate: f64) {
        (**self).set_dropout(rate)
    }
    fn set_step(&self, step: usize) {
        (**self).set_step(step)
    }
    fn first_layer(&self) -> Option<(Tensor, Option<Vec<usize>>)> {
        (**self).first_layer()
    }
}

/// A non-trainable tensor a model updates in place (shared, like [`Var`]).
#[derive(Clone, Debug)]
pub struct Buffer(Arc<Mutex<Tensor>>);

impl Buffer {
    pub fn new(tensor: Tensor) -> Buffer {
        Buffer(Arc::new(Mutex::new(tensor)))
    }

    pub fn get(&self) -> Tensor {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, tensor: Tensor) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = tensor;
    }
}

/// Parameters and buffers by name: what a checkpoint holds.
pub fn state(model: &dyn Model) -> Vec<(String, Tensor)> {
    let mut state: Vec<(String, Tensor)> =
        model.parameters().into_iter().map(|(name, var)| (name, var.as_tensor().clone())).collect();
    state.extend(model.buffers().into_iter().map(|(name, buffer)| (name, buffer.get())));
    state
}

/// Overwrites every parameter and buffer of `model` from `tensors` (by name); a
/// missing tensor or a shape mismatch is an error.
pub fn load_state(model: &dyn Model, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let find = |name: &str, like: &Tensor| -> Result<Tensor> {
        let Some(tensor) = tensors.get(name) else { candle_core::bail!("checkpoint lacks tensor `{name}`") };
        if tensor.dims() != like.dims() {
            candle_core::bail!("tensor `{name}` has shape {:?}, the model expects {:?}", tensor.dims(), like.dims())
        }
        tensor.to_device(like.device())
    };
    for (name, var) in model.parameters() {
        var.set(&find(&name, var.as_tensor())?)?;
    }
    for (name, buffer) in model.buffers() {
        buffer.set(find(&name, &buffer.get())?);
    }
    Ok(())
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

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => x.gelu(),
        }
    }

    /// Gain of the He/LeCun normal init for this non-linearity.
    pub fn gain(self) -> f64 {
        match self {
            Activation::Relu | Activation::Gelu => 2f64.sqrt(),
            Activation::Tanh => 5.0 / 3.0,
        }
    }

    pub fn name(self) -> &'static str {
        Activation::OPTIONS[self as usize]
    }
}

/// `model.kind`: which model the training stages build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Mlp,
    /// Softmax regression: an MLP without hidden layers.
    Linear,
    Convnet,
    Resnet,
    /// `convnet` for image data, `mlp` for tabular data.
    Auto,
}

impl ChoiceKnob for ModelKind {
    const OPTIONS: &'static [&'static str] = &["mlp", "linear", "convnet", "resnet", "auto"];

    fn from_index(index: usize) -> ModelKind {
        [ModelKind::Mlp, ModelKind::Linear, ModelKind::Convnet, ModelKind::Resnet, ModelKind::Auto][index]
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

/// `(channels, height, width)` of an image example shape (`[C, H, W]` or `[H, W]`).
pub fn image_shape(shape: &[usize]) -> Option<(usize, usize, usize)> {
    match *shape {
        [c, h, w] if h > 1 && w > 1 => Some((c, h, w)),
        [h, w] if h > 1 && w > 1 => Some((1, h, w)),
        _ => None,
    }
}

/// A resolved model: the kind and every dimension, enough to rebuild it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    /// `linear` is an MLP without hidden layers.
    Mlp(MlpSpec),
    Convnet(ConvnetSpec),
    Resnet(ResnetSpec),
}

impl ModelSpec {
    /// The kind's name, as `model.kind` spells it.
    pub fn kind_name(&self) -> &'static str {
        match self {
            ModelSpec::Mlp(spec) if spec.hidden.is_empty() => "linear",
            ModelSpec::Mlp(_) => "mlp",
            ModelSpec::Convnet(_) => "convnet",
            ModelSpec::Resnet(_) => "resnet",
        }
    }

    /// A fresh model with `init` from `seed`.
    pub fn build(&self, init: &Init, seed: u64, device: &Device) -> Result<Box<dyn Model>> {
        Ok(match self {
            ModelSpec::Mlp(spec) => Box::new(Mlp::new(spec, init, seed, device)?),
            ModelSpec::Convnet(spec) => Box::new(Convnet::new(spec, init, seed, device)?),
            ModelSpec::Resnet(spec) => Box::new(Resnet::new(spec, init, seed, device)?),
        })
    }

    /// The checkpoint metadata describing the model (the MLP's fields are those of
    /// the first checkpoints, so their bytes stay the same).
    pub fn to_meta(&self) -> Value {
        let name = self.kind_name();
        match self {
            ModelSpec::Mlp(s) => json!({
                "model": name, "n_in": s.n_in, "hidden": s.hidden, "n_out": s.n_out,
                "activation": s.activation.name(),
            }),
            ModelSpec::Convnet(s) => {
                let mut meta = json!({
                    "model": name, "image": [s.channels_in, s.height, s.width], "channels": s.channels,
                    "pool_every": s.pool_every, "n_out": s.n_out, "activation": s.activation.name(),
                });
                // Only when there are dense layers: earlier checkpoints keep their bytes.
                if !s.dense.is_empty() {
                    meta["dense"] = json!(s.dense);
                }
                meta
            }
            ModelSpec::Resnet(s) => json!({
                "model": name, "image": [s.channels_in, s.height, s.width], "depth": s.depth,
                "width": s.width_base, "n_out": s.n_out,
            }),
        }
    }

    /// The spec a checkpoint's metadata describes.
    pub fn from_meta(meta: &Value) -> std::result::Result<ModelSpec, String> {
        let int = |key: &str| meta[key].as_u64().map(|v| v as usize).ok_or_else(|| format!("meta `{key}` missing"));
        let ints = |key: &str| -> std::result::Result<Vec<usize>, String> {
            meta[key]
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect())
                .ok_or_else(|| format!("meta `{key}` missing"))
        };
        let activation = || -> std::result::Result<Activation, String> {
            let name = meta["activation"].as_str().unwrap_or_default();
            Activation::parse(name).ok_or_else(|| format!("meta `activation` is `{name}`"))
        };
        let image = || -> std::result::Result<(usize, usize, usize), String> {
            match ints("image")?[..] {
                [c, h, w] => Ok((c, h, w)),
                _ => Err("meta `image` is not [C, H, W]".into()),
            }
        };
        match meta["model"].as_str().unwrap_or_default() {
            "mlp" | "linear" => Ok(ModelSpec::Mlp(MlpSpec {
                n_in: int("n_in")?,
                hidden: ints("hidden")?,
                n_out: int("n_out")?,
                activation: activation()?,
            })),
            "convnet" => {
                let (channels_in, height, width) = image()?;
                Ok(ModelSpec::Convnet(ConvnetSpec {
                    channels_in,
                    height,
                    width,
                    channels: ints("channels")?,
                    pool_every: int("pool_every")?,
                    dense: if meta.get("dense").is_some() { ints("dense")? } else { Vec::new() },
                    n_out: int("n_out")?,
                    activation: activation()?,
                }))
            }
            "resnet" => {
                let (channels_in, height, width) = image()?;
                Ok(ModelSpec::Resnet(ResnetSpec {
                    channels_in,
                    height,
                    width,
                    depth: int("depth")?,
                    width_base: int("width")?,
                    n_out: int("n_out")?,
                }))
            }
            other => Err(format!("meta `model` is `{other}`, not a known model")),
        }
    }
}

/// Normal weights `[shape]` with standard deviation `std`, from `(seed, init/<name>)`.
pub fn normal(seed: u64, name: &str, shape: &[usize], std: f64, device: &Device) -> Result<Var> {
    let mut rng = crate::rng::Rng::new(seed, &format!("init/{name}"));
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
    Var::from_vec(values, shape, device)
}

/// The weight std and bias of a layer under `init`: hidden layers He-normal with
/// zero bias, the last layer the recipe's small weights and log-prior bias; `Naive`
/// is Kaiming-normal weights and uniform(+-1/sqrt(fan_in)) biases.
pub fn layer_init(
    init: &Init,
    seed: u64,
    name: &str,
    fan_in: usize,
    fan_out: usize,
    last: bool,
    gain: f64,
) -> (f64, Vec<f32>) {
    let fan = (fan_in as f64).sqrt();
    match init {
        Init::Recipe { log_priors } if last => (0.01 / fan, log_priors.clone()),
        Init::Recipe { .. } => (gain / fan, vec![0.0; fan_out]),
        Init::Naive => {
            let bound = 1.0 / fan;
            let mut bias_rng = crate::rng::Rng::new(seed, &format!("init/{name}.bias"));
            let bias = (0..fan_out).map(|_| ((bias_rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
            (2f64.sqrt() / fan, bias)
        }
    }
}

/// `x [batch, in] @ weight[out, in]^T + bias` on our deterministic GEMM
/// ([`crate::kernels::linear`]): the same bits on every CPU and thread count.
pub fn linear(x: &Tensor, weight: &Var, bias: &Var) -> Result<Tensor> {
    crate::kernels::linear(x, weight.as_tensor(), bias.as_tensor())
}

/// Rows per forward pass when a whole split is evaluated at once: a convolution's
/// activations for 50,000 28x28 images would take gigabytes in one piece.
pub const EVAL_CHUNK: usize = 1024;

/// In evaluation mode, `forward` over `x` in pieces of [`EVAL_CHUNK`] rows,
/// detached (no gradient graph keeps each piece's activations alive) and
/// concatenated; each row's output depends on that row alone, so this is the same
/// function. In training mode (gradients wanted) it is `forward(x)`.
pub fn chunked(x: &Tensor, training: bool, forward: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let n = x.dim(0)?;
    if training || n <= EVAL_CHUNK {
        return forward(x);
    }
    let parts = (0..n)
        .step_by(EVAL_CHUNK)
        .map(|start| Ok(forward(&x.narrow(0, start, EVAL_CHUNK.min(n - start))?)?.detach()))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

#[cfg(test)]
mod tests;
