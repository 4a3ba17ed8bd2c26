//! Backprop to chart dependencies: for sampled examples i of a batch, take the sum
//! of example i's outputs as the loss and back-propagate to the input; the gradient
//! must be non-zero on example i and zero on every other example. A `view` or
//! `reshape` that mixes the batch trains silently, and this catches it. For
//! autoregressive models, output t must depend only on inputs up to t.
//! Layers that mix the batch by design (batch norm) run in evaluation mode here.

use candle_core::{Result, Tensor, Var};
use serde::Serialize;

use crate::models::Model;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    /// The example (and for sequence models the output position) whose outputs were summed.
    pub example: usize,
    pub position: Option<usize>,
    /// Gradient mass (sum of |grad|) on each example of the batch.
    pub gradient_per_example: Vec<f64>,
    /// Other examples of the batch it wrongly depends on.
    pub leaks_from: Vec<usize>,
    /// Later positions of the same sequence it wrongly depends on.
    pub leaks_from_future: Vec<usize>,
    /// Whether the output depends on its own input at all.
    pub depends_on_itself: bool,
}

/// Runs the batch-independence check (and, for autoregressive models, the causal
/// check) for the `samples` examples of `x`.
pub fn check(model: &dyn Model, x: &Tensor, samples: &[usize]) -> Result<Vec<Probe>> {
    model.set_training(false);
    let input = Var::from_tensor(x)?;
    let output = model.forward(input.as_tensor())?;
    let batch = x.dim(0)?;
    let mut probes = Vec::new();
    for &example in samples.iter().filter(|&&e| e < batch) {
        if model.autoregressive() {
            let steps = output.dim(1)?;
            for position in 0..steps {
                let loss = output.narrow(0, example, 1)?.narrow(1, position, 1)?.sum_all()?;
                let grad = gradient(&loss, &input)?;
                // grad: [batch, time, features] -> mass per (example, time).
                let mass: Vec<Vec<f32>> = grad.abs()?.sum(2)?.to_vec2()?;
                let per_example: Vec<f64> = mass.iter().map(|row| row.iter().map(|&v| v as f64).sum()).collect();
                probes.push(Probe {
                    example,
                    position: Some(position),
                    depends_on_itself: mass[example][..=position].iter().any(|&v| v > 0.0),
                    leaks_from: (0..batch).filter(|&j| j != example && per_example[j] > 0.0).collect(),
                    leaks_from_future: (position + 1..mass[example].len())
                        .filter(|&t| mass[example][t] > 0.0)
                        .collect(),
                    gradient_per_example: per_example,
                });
            }
        } else {
            let loss = output.narrow(0, example, 1)?.sum_all()?;
            let grad = gradient(&loss, &input)?;
            let per_example: Vec<f64> =
                grad.abs()?.flatten_from(1)?.sum(1)?.to_vec1::<f32>()?.into_iter().map(|v| v as f64).collect();
            probes.push(Probe {
                example,
                position: None,
                depends_on_itself: per_example[example] > 0.0,
                leaks_from: (0..batch).filter(|&j| j != example && per_example[j] > 0.0).collect(),
                leaks_from_future: Vec::new(),
                gradient_per_example: per_example,
            });
        }
    }
    model.set_training(true);
    Ok(probes)
}

fn gradient(loss: &Tensor, input: &Var) -> Result<Tensor> {
    let grads = loss.backward()?;
    match grads.get(input.as_tensor()) {
        Some(grad) => Ok(grad.clone()),
        None => input.as_tensor().zeros_like(),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::models::{Activation, Init, Mlp, MlpSpec};

    fn batch(rows: usize, features: usize) -> Tensor {
        let values: Vec<f32> = (0..rows * features).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect();
        Tensor::from_vec(values, (rows, features), &Device::Cpu).unwrap()
    }

    /// The classic bug: a transpose-then-reshape where a plain reshape was meant.
    struct BatchMixing {
        w1: Var,
        w2: Var,
    }

    impl Model for BatchMixing {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            let h = x.matmul(self.w1.as_tensor())?.relu()?; // [b, 6]
            let (b, hidden) = h.dims2()?;
            let mixed = h.t()?.contiguous()?.reshape((b, hidden))?; // wrong "view"
            mixed.matmul(self.w2.as_tensor())
        }

        fn parameters(&self) -> Vec<(String, Var)> {
            vec![("w1".into(), self.w1.clone()), ("w2".into(), self.w2.clone())]
        }
    }

    fn var(rows: usize, cols: usize, seed: usize) -> Var {
        let values: Vec<f32> = (0..rows * cols).map(|i| (((i + seed) * 29 % 13) as f32 - 6.0) / 10.0).collect();
        Var::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    }

    /// A sequence model: output t = a projection of the inputs up to t (causal) or
    /// of all inputs (leaking the future).
    struct Sequence {
        w: Var,
        causal: bool,
    }

    impl Model for Sequence {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            let (b, t, f) = x.dims3()?;
            let mut outputs = Vec::new();
            for position in 0..t {
                let window = if self.causal { x.narrow(1, 0, position + 1)? } else { x.clone() };
                let pooled = window.sum(1)?; // [b, f]
                outputs.push(pooled.matmul(self.w.as_tensor())?.unsqueeze(1)?);
            }
            let _ = (b, f);
            Tensor::cat(&outputs, 1)
        }

        fn parameters(&self) -> Vec<(String, Var)> {
            vec![("w".into(), self.w.clone())]
        }

        fn autoregressive(&self) -> bool {
            true
        }
    }

    #[test]
    fn built_in_models_pass() {
        for hidden in [vec![], vec![16, 16]] {
            let spec = MlpSpec { n_in: 5, hidden, n_out: 3, activation: Activation::Tanh };
            let model = Mlp::new(&spec, &Init::Naive, 1, &Device::Cpu).unwrap();
            let probes = check(&model, &batch(6, 5), &[0, 3, 5]).unwrap();
            assert_eq!(probes.len(), 3);
            for probe in probes {
                assert!(probe.leaks_from.is_empty(), "{probe:?}");
                assert!(probe.depends_on_itself, "{probe:?}");
            }
        }
    }

    #[test]
    fn batch_mixing_model_fails() {
        let model = BatchMixing { w1: var(5, 6, 0), w2: var(6, 3, 1) };
        let probes = check(&model, &batch(4, 5), &[0, 2]).unwrap();
        assert!(probes.iter().any(|p| !p.leaks_from.is_empty()), "{probes:?}");
    }

    #[test]
    fn leaking_sequence_model_fails_and_causal_one_passes() {
        let x = Tensor::from_vec(
            (0..2 * 4 * 3).map(|i| i as f32 / 10.0 + 0.1).collect::<Vec<_>>(),
            (2, 4, 3),
            &Device::Cpu,
        )
        .unwrap();
        let leaking = Sequence { w: var(3, 2, 0), causal: false };
        let probes = check(&leaking, &x, &[1]).unwrap();
        assert!(probes.iter().any(|p| !p.leaks_from_future.is_empty()), "{probes:?}");
        assert!(probes.iter().all(|p| p.leaks_from.is_empty()), "it mixes time, not the batch: {probes:?}");
        let causal = Sequence { w: var(3, 2, 0), causal: true };
        let probes = check(&causal, &x, &[0, 1]).unwrap();
        assert_eq!(probes.len(), 8);
        assert!(probes
            .iter()
            .all(|p| p.leaks_from.is_empty() && p.leaks_from_future.is_empty() && p.depends_on_itself));
    }
}
