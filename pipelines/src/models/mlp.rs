//! `mlp` and `linear`: a multi-layer perceptron; with no hidden layers it is
//! softmax regression. Layers `fc1`, `fc2`, ... (the checkpoint names).

use candle_core::{Device, Result, Tensor, Var};

use super::{layer_init, linear, normal, Activation, Dropout, Init, Model};

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
    /// After each hidden layer's activation, in training mode.
    dropout: Dropout,
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
            let (w_std, bias) = layer_init(init, seed, &name, fan_in, fan_out, last, spec.activation.gain());
            let weight = normal(seed, &format!("{name}.weight"), &[fan_out, fan_in], w_std, device)?;
            let bias = Var::from_vec(bias, fan_out, device)?;
            layers.push((name, weight, bias));
        }
        Ok(Mlp { layers, activation: spec.activation, dropout: Dropout::new(seed) })
    }

    fn forward_traced_inner(&self, x: &Tensor, trace: bool) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        let mut hidden = Vec::new();
        let mut h = x.clone();
        for (i, (name, weight, bias)) in self.layers.iter().enumerate() {
            h = linear(&h, weight, bias)?;
            if i + 1 < self.layers.len() {
                h = self.dropout.units(name, &self.activation.apply(&h)?)?;
                if trace {
                    hidden.push((name.clone(), h.clone()));
                }
            }
        }
        Ok((h, hidden))
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

    fn dropout(&self) -> Option<&Dropout> {
        Some(&self.dropout)
    }

    fn first_layer(&self) -> Option<(Tensor, Option<Vec<usize>>)> {
        self.layers.first().map(|(_, weight, _)| (weight.as_tensor().clone(), None))
    }
}
