//! `convnet`: 3x3 convolutions (padding 1) with an activation, a 2x2 max pool after
//! every `pool_every` of them, then optional dense hidden layers (`dense`, with the
//! activation and unit dropout) and one linear head. Layers `conv1`, `conv2`, ...,
//! `dense1`, ..., `fc`. With `channels = [16, 32]`, `pool_every = 2` on 8x8 digits it is conv
//! 1->16, relu, conv 16->32, relu, maxpool, linear 512->10; with `[32, 64]`,
//! `pool_every = 1` on 28x28 it is the Fashion-MNIST benchmark's 2-conv net.

use std::cell::Cell;

use candle_core::{Device, Result, Tensor, Var};

use super::layers::{conv2d, conv2d_relu, max_pool2d, Conv2dParams};
use super::{chunked, layer_init, linear, normal, Activation, Dropout, Init, Model};

#[derive(Debug, Clone, PartialEq)]
pub struct ConvnetSpec {
    pub channels_in: usize,
    pub height: usize,
    pub width: usize,
    /// Output channels of each convolution.
    pub channels: Vec<usize>,
    /// A max pool after every this many convolutions.
    pub pool_every: usize,
    /// Widths of the dense hidden layers between the convolutions and the head.
    pub dense: Vec<usize>,
    pub n_out: usize,
    pub activation: Activation,
}

impl ConvnetSpec {
    /// Whether convolution `i` (0-based) is followed by a pool.
    fn pools_after(&self, i: usize) -> bool {
        (i + 1).is_multiple_of(self.pool_every.max(1))
    }

    /// Features entering the head: last channels x the pooled height and width.
    pub fn head_features(&self) -> usize {
        let pools = (0..self.channels.len()).filter(|&i| self.pools_after(i)).count() as u32;
        let (h, w) = (self.height >> pools, self.width >> pools);
        self.channels.last().copied().unwrap_or(self.channels_in) * h * w
    }
}

pub struct Convnet {
    spec: ConvnetSpec,
    convs: Vec<(String, Var, Var)>,
    /// Dense hidden layers `dense1`, ... between the flattened features and the head.
    dense: Vec<(String, Var, Var)>,
    head: (Var, Var),
    /// Whether evaluations may run in detached chunks; dropout has its own copy.
    training: Cell<bool>,
    /// Spatial dropout after each convolution (and its pool), in training mode.
    dropout: Dropout,
}

impl Convnet {
    pub fn new(spec: &ConvnetSpec, init: &Init, seed: u64, device: &Device) -> Result<Convnet> {
        let mut convs = Vec::with_capacity(spec.channels.len());
        let mut c_in = spec.channels_in;
        for (i, &c_out) in spec.channels.iter().enumerate() {
            let name = format!("conv{}", i + 1);
            let fan_in = c_in * 9;
            let (std, bias) = layer_init(init, seed, &name, fan_in, c_out, false, spec.activation.gain());
            let weight = normal(seed, &format!("{name}.weight"), &[c_out, c_in, 3, 3], std, device)?;
            convs.push((name, weight, Var::from_vec(bias, c_out, device)?));
            c_in = c_out;
        }
        let mut features = spec.head_features();
        if features == 0 {
            candle_core::bail!("convnet: the pools shrink a {}x{} image to nothing", spec.height, spec.width)
        }
        let mut dense = Vec::with_capacity(spec.dense.len());
        for (i, &units) in spec.dense.iter().enumerate() {
            let name = format!("dense{}", i + 1);
            let (std, bias) = layer_init(init, seed, &name, features, units, false, spec.activation.gain());
            let weight = normal(seed, &format!("{name}.weight"), &[units, features], std, device)?;
            dense.push((name, weight, Var::from_vec(bias, units, device)?));
            features = units;
        }
        let (std, bias) = layer_init(init, seed, "fc", features, spec.n_out, true, 1.0);
        let head = (
            normal(seed, "fc.weight", &[spec.n_out, features], std, device)?,
            Var::from_vec(bias, spec.n_out, device)?,
        );
        Ok(Convnet { spec: spec.clone(), convs, dense, head, training: Cell::new(true), dropout: Dropout::new(seed) })
    }

    fn run(&self, x: &Tensor, trace: bool) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        let spec = &self.spec;
        let mut h = x.reshape((x.dim(0)?, spec.channels_in, spec.height, spec.width))?;
        let mut hidden = Vec::new();
        let same = Conv2dParams { padding: 1, stride: 1 };
        for (i, (name, weight, bias)) in self.convs.iter().enumerate() {
            let pool = spec.pools_after(i);
            if spec.activation == Activation::Relu && !trace {
                // One op for conv, ReLU and the pool: the same values, a third of the passes.
                h = conv2d_relu(&h, weight.as_tensor(), Some(bias.as_tensor()), same, pool)?;
                h = self.dropout.channels(name, &h)?;
                continue;
            }
            h = spec.activation.apply(&conv2d(&h, weight.as_tensor(), Some(bias.as_tensor()), same)?)?;
            if trace {
                hidden.push((name.clone(), h.flatten_from(1)?));
            }
            if pool {
                h = max_pool2d(&h)?;
            }
            h = self.dropout.channels(name, &h)?;
        }
        let mut h = h.flatten_from(1)?;
        for (name, weight, bias) in &self.dense {
            h = self.dropout.units(name, &spec.activation.apply(&linear(&h, weight, bias)?)?)?;
            if trace {
                hidden.push((name.clone(), h.clone()));
            }
        }
        Ok((linear(&h, &self.head.0, &self.head.1)?, hidden))
    }
}

#[cfg(test)]
impl Convnet {
    /// The forward pass without chunking, for comparison.
    pub fn run_whole(&self, x: &Tensor) -> Tensor {
        self.run(x, false).map(|(logits, _)| logits).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Model for Convnet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        chunked(x, self.training.get(), |part| Ok(self.run(part, false)?.0))
    }

    fn forward_traced(&self, x: &Tensor) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        self.run(x, true)
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        let mut params: Vec<(String, Var)> = self
            .convs
            .iter()
            .chain(&self.dense)
            .flat_map(|(name, w, b)| [(format!("{name}.weight"), w.clone()), (format!("{name}.bias"), b.clone())])
            .collect();
        params.push(("fc.weight".into(), self.head.0.clone()));
        params.push(("fc.bias".into(), self.head.1.clone()));
        params
    }

    fn set_training(&self, training: bool) {
        self.training.set(training);
        self.dropout.set_training(training);
    }

    fn dropout(&self) -> Option<&Dropout> {
        Some(&self.dropout)
    }

    /// The first convolution's kernels, one `[c_in, 3, 3]` picture each.
    fn first_layer(&self) -> Option<(Tensor, Option<Vec<usize>>)> {
        let (_, weight, _) = self.convs.first()?;
        let rows = weight.as_tensor().flatten_from(1).ok()?;
        Some((rows, Some(vec![self.spec.channels_in, 3, 3])))
    }
}
