//! The fixed embedding the audit searches in: each example scaled to unit range (images)
//! or standardised (vectors), pictures average-pooled 2x2 when large, then a seeded
//! Gaussian random projection to at most `dims` dimensions. No labels, no training.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::kernels::gemm::{gemm, MatRef, Scratch, Start};

use crate::render::image_dims;
use crate::rng::Rng;

/// How examples are turned into the vectors the audit compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmbedSpec<'a> {
    pub shape: &'a [usize],
    /// `Some((low, high))` for pictures: raw values are scaled to [0, 1] by it.
    pub unit_range: Option<(f32, f32)>,
    pub dims: usize,
    pub seed: u64,
}

/// One example in the comparison space before projection: unit-range (pictures) or
/// standardised (vectors) values, non-finite values as 0, pictures pooled 2x2 when both
/// sides are at least 16.
pub fn flat_features(spec: &EmbedSpec<'_>, raw: &[f32], standardised: &[f32]) -> Vec<f32> {
    let finite = |v: f32| if v.is_finite() { v } else { 0.0 };
    let Some((low, high)) = spec.unit_range else {
        return standardised.iter().map(|&v| finite(v)).collect();
    };
    let span = (high - low).max(1e-12);
    let unit: Vec<f32> = raw.iter().map(|&v| finite((v - low) / span)).collect();
    let (channels, height, width) = image_dims(spec.shape);
    if height < 16 || width < 16 || channels * height * width != unit.len() {
        return unit;
    }
    let (h2, w2) = (height / 2, width / 2);
    let mut pooled = Vec::with_capacity(channels * h2 * w2);
    for c in 0..channels {
        let plane = &unit[c * height * width..(c + 1) * height * width];
        for y in 0..h2 {
            for x in 0..w2 {
                let at = |dy: usize, dx: usize| plane[(2 * y + dy) * width + 2 * x + dx];
                pooled.push((at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) * 0.25);
            }
        }
    }
    pooled
}

/// Embeds `n` rows of `width` flat features: a (n, dims) tensor, the projection seeded
/// by `spec.seed` (rows are kept as they are when already narrow).
pub fn project(flat: Vec<f32>, n: usize, spec: &EmbedSpec<'_>) -> Result<Tensor, candle_core::Error> {
    let width = flat.len().checked_div(n).unwrap_or(0);
    if width <= spec.dims || n == 0 {
        return Tensor::from_vec(flat, (n, width), &Device::Cpu);
    }
    let mut rng = Rng::new(spec.seed, "inspect/embedding");
    let scale = 1.0 / (spec.dims as f64).sqrt();
    let projection: Vec<f32> = (0..width * spec.dims).map(|_| (rng.normal() * scale) as f32).collect();
    // Our GEMM, not candle's matmul: each output is one FMA chain over the features in
    // order, so the embedding (and every finding) is the same bits on any x86-64 CPU and
    // thread count; candle's k-blocking follows the cache size past 512 features.
    let dims = spec.dims;
    let mut out = vec![0f32; n * dims];
    const ROWS: usize = 2048;
    out.par_chunks_mut(ROWS * dims).zip(flat.par_chunks(ROWS * width)).for_each(|(out, rows)| {
        let m = rows.len() / width;
        let (a, b) = (MatRef::row_major(rows, width), MatRef::row_major(&projection, dims));
        gemm(m, dims, width, &a, &b, out, dims, Start::Zero, &mut Scratch::default());
    });
    Tensor::from_vec(out, (n, dims), &Device::Cpu)
}
