//! `resnet`: a small CIFAR-style residual net (He et al. 2016, section 4.2): a 3x3
//! stem convolution with batch norm, three stages of `depth` basic blocks at widths
//! `width`, `2 width`, `4 width` (the second and third start with stride 2 and a 1x1
//! projection shortcut), global average pooling and a linear head. Names follow
//! torchvision's: `conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.bn1`,
//! `layer2.0.shortcut.0` (projection conv), `layer2.0.shortcut.1` (its batch norm), `fc`.

use std::cell::Cell;

use candle_core::{Device, Result, Tensor, Var};

use super::layers::{conv2d, BatchNorm2d, Conv2dParams};
use super::{chunked, layer_init, linear, normal, Buffer, Dropout, Init, Model};

#[derive(Debug, Clone, PartialEq)]
pub struct ResnetSpec {
    pub channels_in: usize,
    pub height: usize,
    pub width: usize,
    /// Basic blocks per stage.
    pub depth: usize,
    /// Channels of the first stage.
    pub width_base: usize,
    pub n_out: usize,
}

/// A bias-free convolution followed by batch norm.
struct ConvBn {
    name: String,
    bn_name: String,
    weight: Var,
    bn: BatchNorm2d,
    params: Conv2dParams,
}

impl ConvBn {
    fn new(
        seed: u64,
        (name, bn_name): (String, String),
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        device: &Device,
    ) -> Result<ConvBn> {
        let std = 2f64.sqrt() / ((c_in * kernel * kernel) as f64).sqrt();
        let weight = normal(seed, &format!("{name}.weight"), &[c_out, c_in, kernel, kernel], std, device)?;
        let params = Conv2dParams { padding: kernel / 2, stride };
        Ok(ConvBn { name, bn_name, weight, bn: BatchNorm2d::new(c_out, device)?, params })
    }

    fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        self.bn.forward(&conv2d(x, self.weight.as_tensor(), None, self.params)?, training)
    }

    fn parameters(&self, out: &mut Vec<(String, Var)>) {
        out.push((format!("{}.weight", self.name), self.weight.clone()));
        out.extend(self.bn.parameters(&self.bn_name));
    }

    fn buffers(&self, out: &mut Vec<(String, Buffer)>) {
        out.extend(self.bn.buffers(&self.bn_name));
    }
}

/// conv-bn-relu-conv-bn plus the shortcut, then relu.
struct Block {
    first: ConvBn,
    second: ConvBn,
    shortcut: Option<ConvBn>,
}

pub struct Resnet {
    spec: ResnetSpec,
    stem: ConvBn,
    blocks: Vec<Block>,
    head: (Var, Var),
    training: Cell<bool>,
    /// Spatial dropout between the two convolutions of each block (as in wide
    /// residual networks), in training mode.
    dropout: Dropout,
}

impl Resnet {
    pub fn new(spec: &ResnetSpec, init: &Init, seed: u64, device: &Device) -> Result<Resnet> {
        let w = spec.width_base;
        let stem = ConvBn::new(seed, ("conv1".into(), "bn1".into()), spec.channels_in, w, 3, 1, device)?;
        let mut blocks = Vec::new();
        let mut c_in = w;
        for stage in 0..3 {
            let c_out = w << stage;
            for b in 0..spec.depth.max(1) {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let p = format!("layer{}.{b}", stage + 1);
                let names = |conv: &str, bn: &str| (format!("{p}.{conv}"), format!("{p}.{bn}"));
                let first = ConvBn::new(seed, names("conv1", "bn1"), c_in, c_out, 3, stride, device)?;
                let second = ConvBn::new(seed, names("conv2", "bn2"), c_out, c_out, 3, 1, device)?;
                let shortcut = (stride != 1 || c_in != c_out)
                    .then(|| ConvBn::new(seed, names("shortcut.0", "shortcut.1"), c_in, c_out, 1, stride, device))
                    .transpose()?;
                blocks.push(Block { first, second, shortcut });
                c_in = c_out;
            }
        }
        let (std, bias) = layer_init(init, seed, "fc", c_in, spec.n_out, true, 1.0);
        let head =
            (normal(seed, "fc.weight", &[spec.n_out, c_in], std, device)?, Var::from_vec(bias, spec.n_out, device)?);
        Ok(Resnet { spec: spec.clone(), stem, blocks, head, training: Cell::new(true), dropout: Dropout::new(seed) })
    }

    fn run(&self, x: &Tensor, trace: bool) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        let s = &self.spec;
        let training = self.training.get();
        let x = x.reshape((x.dim(0)?, s.channels_in, s.height, s.width))?;
        let mut h = self.stem.forward(&x, training)?.relu()?;
        let mut hidden = Vec::new();
        for block in &self.blocks {
            let inner = block.first.forward(&h, training)?.relu()?;
            let inner = self.dropout.channels(&block.first.name, &inner)?;
            let inner = block.second.forward(&inner, training)?;
            let skip = match &block.shortcut {
                Some(projection) => projection.forward(&h, training)?,
                None => h.clone(),
            };
            h = (inner + skip)?.relu()?;
            if trace {
                let name = block.first.name.trim_end_matches(".conv1").to_string();
                hidden.push((name, h.flatten_from(1)?));
            }
        }
        let pooled = h.mean((2, 3))?;
        Ok((linear(&pooled, &self.head.0, &self.head.1)?, hidden))
    }
}

impl Model for Resnet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Batch statistics in training mode need the whole batch at once.
        chunked(x, self.training.get(), |part| Ok(self.run(part, false)?.0))
    }

    fn forward_traced(&self, x: &Tensor) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        self.run(x, true)
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        self.stem.parameters(&mut out);
        for block in &self.blocks {
            block.first.parameters(&mut out);
            block.second.parameters(&mut out);
            if let Some(shortcut) = &block.shortcut {
                shortcut.parameters(&mut out);
            }
        }
        out.push(("fc.weight".into(), self.head.0.clone()));
        out.push(("fc.bias".into(), self.head.1.clone()));
        out
    }

    fn buffers(&self) -> Vec<(String, Buffer)> {
        let mut out = Vec::new();
        self.stem.buffers(&mut out);
        for block in &self.blocks {
            block.first.buffers(&mut out);
            block.second.buffers(&mut out);
            if let Some(shortcut) = &block.shortcut {
                shortcut.buffers(&mut out);
            }
        }
        out
    }

    fn set_training(&self, training: bool) {
        self.training.set(training);
        self.dropout.set_training(training);
    }

    fn dropout(&self) -> Option<&Dropout> {
        Some(&self.dropout)
    }

    fn first_layer(&self) -> Option<(Tensor, Option<Vec<usize>>)> {
        let rows = self.stem.weight.as_tensor().flatten_from(1).ok()?;
        Some((rows, Some(vec![self.spec.channels_in, 3, 3])))
    }
}
