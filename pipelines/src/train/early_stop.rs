//! Early stopping: after each evaluation, keep a copy of the weights with the lowest
//! validation loss so far; stop after `patience` evaluations without a lower one;
//! at the end put the best weights back, so the checkpoint is the best one.

use candle_core::Tensor;

use crate::models::{load_state, state, Model};

/// The best evaluation so far and how long ago it was.
pub struct EarlyStop {
    patience: usize,
    best: Option<Best>,
    since_best: usize,
}

struct Best {
    step: usize,
    /// Index of the evaluation (in the run's series).
    evaluation: usize,
    val_loss: f64,
    /// Deep copies of every parameter and buffer.
    state: Vec<(String, Tensor)>,
}

impl EarlyStop {
    pub fn new(patience: usize) -> EarlyStop {
        EarlyStop { patience: patience.max(1), best: None, since_best: 0 }
    }

    /// Records evaluation number `evaluation`, at `step`, with `val_loss`; returns
    /// whether training should stop. A NaN loss is never an improvement.
    pub fn observe(
        &mut self,
        model: &dyn Model,
        step: usize,
        evaluation: usize,
        val_loss: f64,
    ) -> candle_core::Result<bool> {
        let improved = val_loss.is_finite() && self.best.as_ref().is_none_or(|best| val_loss < best.val_loss);
        if improved {
            let state =
                state(model).into_iter().map(|(name, t)| Ok((name, t.copy()?))).collect::<candle_core::Result<_>>()?;
            self.best = Some(Best { step, evaluation, val_loss, state });
            self.since_best = 0;
        } else {
            self.since_best += 1;
        }
        Ok(self.since_best >= self.patience)
    }

    /// Puts the best weights back into `model`; returns the best `(step, evaluation)`
    /// (`None` when no evaluation had a finite loss: the weights stay as they are).
    pub fn restore(&self, model: &dyn Model) -> candle_core::Result<Option<(usize, usize)>> {
        let Some(best) = &self.best else { return Ok(None) };
        load_state(model, &best.state.iter().cloned().collect())?;
        Ok(Some((best.step, best.evaluation)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::models::{Activation, Init, Mlp, MlpSpec};
    use crate::train::{evaluate, OptimSpec, OptimizerKind, SplitTensors, Trainer};

    fn weights(model: &dyn Model) -> Vec<Vec<f32>> {
        state(model).iter().map(|(_, t)| t.flatten_all().unwrap().to_vec1().unwrap()).collect()
    }

    /// A run whose validation loss rises: the training labels contradict the
    /// validation labels, so every step that fits one moves away from the other.
    #[test]
    fn returns_the_best_checkpoint_when_validation_loss_rises() {
        let device = Device::Cpu;
        let x: Vec<f32> = (0..32).map(|i| ((i * 7 % 11) as f32 / 11.0) - 0.5).collect();
        let train = SplitTensors {
            x: Tensor::from_vec(x.clone(), (8, 4), &device).unwrap(),
            y: Tensor::from_vec(vec![0u32, 1, 0, 1, 0, 1, 0, 1], 8, &device).unwrap(),
            len: 8,
        };
        let val = SplitTensors {
            x: train.x.clone(),
            y: Tensor::from_vec(vec![1u32, 0, 1, 0, 1, 0, 1, 0], 8, &device).unwrap(),
            len: 8,
        };
        let spec = MlpSpec { n_in: 4, hidden: vec![8], n_out: 2, activation: Activation::Relu };
        let model = Mlp::new(&spec, &Init::Naive, 1, &device).unwrap();
        let optim =
            OptimSpec { kind: OptimizerKind::Sgd { momentum: 0.0, nesterov: false }, lr: 0.5, weight_decay: 0.0 };
        let mut trainer = Trainer::new(&model, &optim).unwrap();
        let mut stop = EarlyStop::new(3);
        let mut losses = vec![evaluate(&model, &val).unwrap().0];
        assert!(!stop.observe(&model, 0, 0, losses[0]).unwrap());
        let at_start = weights(&model);
        let mut stopped = false;
        for step in 1..=50 {
            trainer.step(&train.x, &train.y).unwrap();
            let loss = evaluate(&model, &val).unwrap().0;
            losses.push(loss);
            if stop.observe(&model, step, step, loss).unwrap() {
                stopped = true;
                break;
            }
        }
        assert!(stopped, "validation loss rose, so training stopped: {losses:?}");
        assert!(losses.last().unwrap() > &losses[0], "{losses:?}");
        let (best_step, best_index) = stop.restore(&model).unwrap().unwrap();
        let best = losses.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(losses[best_index], best);
        assert_eq!(best_step, best_index);
        assert_eq!(losses.len(), best_index + 4, "stopped after patience evaluations without improvement");
        assert_eq!(evaluate(&model, &val).unwrap().0, best, "the model holds the best weights again");
        if best_index == 0 {
            assert_eq!(weights(&model), at_start);
        }
    }

    #[test]
    fn nan_is_never_best() {
        let spec = MlpSpec { n_in: 2, hidden: vec![], n_out: 2, activation: Activation::Relu };
        let model = Mlp::new(&spec, &Init::Naive, 1, &Device::Cpu).unwrap();
        let mut stop = EarlyStop::new(1);
        assert!(stop.observe(&model, 0, 0, f64::NAN).unwrap());
        assert_eq!(stop.restore(&model).unwrap(), None);
    }
}
