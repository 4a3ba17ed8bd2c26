//! Dropout, deterministic: masks come from [`Rng`] keyed by
//! `(seed, dropout/<layer>/step=<t>)`, so a training step drops the same units
//! whatever the thread count, and a resumed run drops what an uninterrupted one
//! would. Active only in training mode and at a rate above 0; in evaluation mode a
//! layer is the identity. Survivors are scaled by `1 / (1 - rate)` (inverted
//! dropout), so evaluation needs no rescaling.

use std::cell::Cell;

use candle_core::{Result, Tensor};

use crate::rng::Rng;

/// The dropout state a model shares between its layers.
#[derive(Debug)]
pub struct Dropout {
    seed: u64,
    rate: Cell<f64>,
    step: Cell<usize>,
    training: Cell<bool>,
}

impl Dropout {
    /// Rate 0 (off) and training mode, like a fresh model.
    pub fn new(seed: u64) -> Dropout {
        Dropout { seed, rate: Cell::new(0.0), step: Cell::new(0), training: Cell::new(true) }
    }

    pub fn set_rate(&self, rate: f64) {
        self.rate.set(rate);
    }

    pub fn set_step(&self, step: usize) {
        self.step.set(step);
    }

    pub fn set_training(&self, training: bool) {
        self.training.set(training);
    }

    fn active(&self) -> bool {
        self.training.get() && self.rate.get() > 0.0
    }

    /// Drops units of `x [batch, units]` (or every element of any shape).
    pub fn units(&self, layer: &str, x: &Tensor) -> Result<Tensor> {
        if !self.active() {
            return Ok(x.clone());
        }
        let mask = self.mask(layer, x.elem_count(), x)?.reshape(x.dims())?;
        x.mul(&mask)
    }

    /// Drops whole channels of `x [batch, channels, h, w]` (spatial dropout,
    /// Tompson et al. 2015): neighbouring pixels are correlated, so dropping single
    /// ones barely regularises a convolution.
    pub fn channels(&self, layer: &str, x: &Tensor) -> Result<Tensor> {
        if !self.active() {
            return Ok(x.clone());
        }
        let (b, c, _, _) = x.dims4()?;
        let mask = self.mask(layer, b * c, x)?.reshape((b, c, 1, 1))?;
        x.broadcast_mul(&mask)
    }

    /// `n` values, each 0 with probability `rate` and `1 / (1 - rate)` otherwise.
    fn mask(&self, layer: &str, n: usize, like: &Tensor) -> Result<Tensor> {
        let rate = self.rate.get();
        let keep = (1.0 / (1.0 - rate)) as f32;
        let mut rng = Rng::new(self.seed, &format!("dropout/{layer}/step={}", self.step.get()));
        let values: Vec<f32> = (0..n).map(|_| if rng.uniform() < rate { 0.0 } else { keep }).collect();
        Tensor::from_vec(values, n, like.device())?.to_dtype(like.dtype())
    }
}
