//! The features of the audit's own out-of-fold classifier (`oof.rs`): a fixed, seeded
//! random-feature map that we never train. Pictures go through `FILTERS` random
//! zero-mean convolution filters (5x5, or 3x3 on pictures smaller than 16 on a side)
//! with ReLU, average-pooled over a 4x4 grid of cells, beside histograms of oriented
//! gradients ([`gradient_histograms`], nothing random) and the comparison values of
//! `embed::flat_features` (unit range, pooled 2x2 when large). Vectors get `FILTERS * 16`
//! random ReLU projections of their standardised values beside the values themselves.
//! Every column is then standardised over the rows given, and a constant column is
//! appended (the classifier's bias).
//!
//! The convolutions run on our GEMM ([`crate::kernels::gemm`]), in chunks of pictures
//! processed in parallel and collected in order, so the features are the same bits on
//! any thread count.

use rayon::prelude::*;

use super::embed::{self, EmbedSpec};
use crate::kernels::gemm::{gemm, MatRef, Scratch, Start};
use crate::render::image_dims;
use crate::rng::Rng;

/// Random convolution filters (pictures) or sixteenths of the random projections (vectors).
pub const FILTERS: usize = 32;
/// Cells per side of the pooling grid over each filter's response.
const GRID: usize = 4;
/// Pictures per GEMM chunk.
const CHUNK: usize = 64;
/// Unsigned gradient orientations per histogram (Dalal and Triggs' 9 bins over 180 degrees).
const BINS: usize = 9;
/// Pictures smaller than this on a side get no gradient histograms.
const MIN_HISTOGRAM_SIDE: usize = 16;

/// Row-major features, `n` rows of `dims` (the last column is the constant 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub values: Vec<f32>,
    pub n: usize,
    pub dims: usize,
}

/// The features of `n` examples: `raw` and `standardised` hold `n` rows of `d` values each.
pub fn random_features(spec: &EmbedSpec<'_>, raw: &[f32], standardised: &[f32], n: usize) -> Features {
    let d = raw.len().checked_div(n).unwrap_or(0);
    let flat: Vec<Vec<f32>> = (0..n)
        .map(|i| embed::flat_features(spec, &raw[i * d..(i + 1) * d], &standardised[i * d..(i + 1) * d]))
        .collect();
    let (channels, height, width) = image_dims(spec.shape);
    let learned = match spec.unit_range {
        Some(range) if channels * height * width == d && height.min(width) >= 3 => {
            let shape = (channels, height, width);
            let convolved = convolutions(raw, n, shape, range, spec.seed);
            let histograms = gradient_histograms(raw, n, shape, range);
            let (a, b) = (convolved.len() / n.max(1), histograms.len() / n.max(1));
            (0..n)
                .flat_map(|i| convolved[i * a..(i + 1) * a].iter().chain(&histograms[i * b..(i + 1) * b]).copied())
                .collect()
        }
        _ => projections(standardised, n, d, spec.seed),
    };
    let extra = learned.len().checked_div(n).unwrap_or(0);
    let flat_width = flat.first().map_or(0, Vec::len);
    let dims = extra + flat_width + 1;
    let mut values = Vec::with_capacity(n * dims);
    for (i, row) in flat.iter().enumerate() {
        values.extend_from_slice(&learned[i * extra..(i + 1) * extra]);
        values.extend_from_slice(row);
        values.push(1.0);
    }
    standardise(&mut values, n, dims);
    Features { values, n, dims }
}

/// Zero-mean, unit-norm random filters of `size` values each.
fn filters(size: usize, count: usize, seed: u64, purpose: &str) -> Vec<f32> {
    let mut rng = Rng::new(seed, purpose);
    let mut weights = Vec::with_capacity(size * count);
    for _ in 0..count {
        let mut filter: Vec<f64> = (0..size).map(|_| rng.normal()).collect();
        let mean = filter.iter().sum::<f64>() / size as f64;
        filter.iter_mut().for_each(|v| *v -= mean);
        let norm = filter.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        weights.extend(filter.iter().map(|v| (v / norm) as f32));
    }
    weights
}

/// ReLU responses of the random filters, average-pooled over a `GRID x GRID` grid.
fn convolutions(raw: &[f32], n: usize, shape: (usize, usize, usize), range: (f32, f32), seed: u64) -> Vec<f32> {
    let (channels, height, width) = shape;
    let k = if height.min(width) >= 16 { 5 } else { 3 };
    let (oh, ow) = (height - k + 1, width - k + 1);
    let (gh, gw) = (GRID.min(oh), GRID.min(ow));
    let (ch, cw) = (oh / gh, ow / gw);
    let taps = channels * k * k;
    // `taps x FILTERS`, row-major: the GEMM's B.
    let bank = filters(taps, FILTERS, seed, "inspect/features/filters");
    let mut b = vec![0f32; taps * FILTERS];
    for f in 0..FILTERS {
        for t in 0..taps {
            b[t * FILTERS + f] = bank[f * taps + t];
        }
    }
    let d = channels * height * width;
    let span = (range.1 - range.0).max(1e-12);
    let unit = |v: f32| if v.is_finite() { (v - range.0) / span } else { 0.0 };
    let per_row = FILTERS * gh * gw;
    let chunks: Vec<Vec<f32>> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map_init(Scratch::default, |scratch, chunk| {
            let rows = chunk * CHUNK..((chunk + 1) * CHUNK).min(n);
            let positions = oh * ow;
            let mut columns = vec![0f32; rows.len() * positions * taps];
            for (r, row) in rows.clone().enumerate() {
                let image = &raw[row * d..(row + 1) * d];
                for y in 0..oh {
                    for x in 0..ow {
                        let at = ((r * positions) + y * ow + x) * taps;
                        let mut t = 0;
                        for c in 0..channels {
                            for dy in 0..k {
                                for dx in 0..k {
                                    columns[at + t] = unit(image[c * height * width + (y + dy) * width + x + dx]);
                                    t += 1;
                                }
                            }
                        }
                    }
                }
            }
            let m = rows.len() * positions;
            let mut response = vec![0f32; m * FILTERS];
            let a = MatRef::row_major(&columns, taps);
            gemm(m, FILTERS, taps, &a, &MatRef::row_major(&b, FILTERS), &mut response, FILTERS, Start::Zero, scratch);
            let mut out = vec![0f32; rows.len() * per_row];
            let cell = 1.0 / (ch * cw) as f32;
            for r in 0..rows.len() {
                for gy in 0..gh {
                    for gx in 0..gw {
                        let slot = &mut out[r * per_row + (gy * gw + gx) * FILTERS..][..FILTERS];
                        for y in gy * ch..(gy + 1) * ch {
                            for x in gx * cw..(gx + 1) * cw {
                                let at = (r * positions + y * ow + x) * FILTERS;
                                for (s, &v) in slot.iter_mut().zip(&response[at..at + FILTERS]) {
                                    *s += v.max(0.0);
                                }
                            }
                        }
                        slot.iter_mut().for_each(|s| *s *= cell);
                    }
                }
            }
            out
        })
        .collect();
    chunks.concat()
}

/// Histograms of oriented gradients (Dalal and Triggs, "Histograms of Oriented Gradients
/// for Human Detection", CVPR 2005) of the channel mean of each picture: central
/// differences (0 on the border), each pixel's gradient magnitude split between the two
/// nearest of `BINS` unsigned orientations, summed over a `GRID x GRID` grid of cells,
/// then each 2x2 block of cells normalised (L2, clipped at 0.2, L2 again); none for
/// pictures under `MIN_HISTOGRAM_SIDE` on a side. Random
/// features pool away where an edge is and which way it runs; these keep both, which is
/// what tells a coat (a vertical opening down the middle, a collar) from a pullover.
fn gradient_histograms(raw: &[f32], n: usize, shape: (usize, usize, usize), range: (f32, f32)) -> Vec<f32> {
    let (channels, height, width) = shape;
    // On small pictures (the 8x8 digits) a cell is a few pixels, too few to histogram;
    // there they lost more than half of a planted 4>9 block in the audit bench.
    if height.min(width) < MIN_HISTOGRAM_SIDE {
        return Vec::new();
    }
    let (ch, cw) = (height / GRID, width / GRID);
    let d = channels * height * width;
    let span = (range.1 - range.0).max(1e-12);
    let per_row = (GRID - 1) * (GRID - 1) * 4 * BINS;
    let rows: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .with_min_len(CHUNK)
        .map(|row| {
            let image = &raw[row * d..(row + 1) * d];
            let grey: Vec<f32> = (0..height * width)
                .map(|at| {
                    let sum: f32 = (0..channels)
                        .map(|c| image[c * height * width + at])
                        .map(|v| if v.is_finite() { (v - range.0) / span } else { 0.0 })
                        .sum();
                    sum / channels as f32
                })
                .collect();
            let mut cells = vec![0f32; GRID * GRID * BINS];
            for y in 0..ch * GRID {
                for x in 0..cw * GRID {
                    let at = |yy: usize, xx: usize| grey[yy * width + xx];
                    let dx = if x > 0 && x + 1 < width { at(y, x + 1) - at(y, x - 1) } else { 0.0 };
                    let dy = if y > 0 && y + 1 < height { at(y + 1, x) - at(y - 1, x) } else { 0.0 };
                    let magnitude = (dx * dx + dy * dy).sqrt();
                    if magnitude == 0.0 {
                        continue;
                    }
                    let angle = dy.atan2(dx).rem_euclid(std::f32::consts::PI);
                    let position = angle / std::f32::consts::PI * BINS as f32;
                    let low = position.floor();
                    let share = position - low;
                    let low = low as usize % BINS;
                    let cell = &mut cells[((y / ch) * GRID + x / cw) * BINS..][..BINS];
                    cell[low] += magnitude * (1.0 - share);
                    cell[(low + 1) % BINS] += magnitude * share;
                }
            }
            let mut out = Vec::with_capacity(per_row);
            for by in 0..GRID - 1 {
                for bx in 0..GRID - 1 {
                    let start = out.len();
                    for (cy, cx) in [(by, bx), (by, bx + 1), (by + 1, bx), (by + 1, bx + 1)] {
                        out.extend_from_slice(&cells[(cy * GRID + cx) * BINS..][..BINS]);
                    }
                    let block = &mut out[start..];
                    let normalise = |block: &mut [f32]| {
                        let norm = (block.iter().map(|v| v * v).sum::<f32>() + 1e-3).sqrt();
                        block.iter_mut().for_each(|v| *v /= norm);
                    };
                    normalise(block);
                    block.iter_mut().for_each(|v| *v = v.min(0.2));
                    normalise(block);
                }
            }
            out
        })
        .collect();
    rows.concat()
}

/// `FILTERS * 16` random ReLU projections of standardised vectors.
fn projections(standardised: &[f32], n: usize, d: usize, seed: u64) -> Vec<f32> {
    let width = FILTERS * 16;
    if d == 0 {
        return Vec::new();
    }
    let mut rng = Rng::new(seed, "inspect/features/projections");
    let scale = 1.0 / (d as f64).sqrt();
    let w: Vec<f32> = (0..d * width).map(|_| (rng.normal() * scale) as f32).collect();
    let finite: Vec<f32> = standardised.iter().map(|&v| if v.is_finite() { v } else { 0.0 }).collect();
    let chunks: Vec<Vec<f32>> = (0..n.div_ceil(CHUNK * 16))
        .into_par_iter()
        .map_init(Scratch::default, |scratch, chunk| {
            let rows = chunk * CHUNK * 16..((chunk + 1) * CHUNK * 16).min(n);
            let mut out = vec![0f32; rows.len() * width];
            let a = MatRef::row_major(&finite[rows.start * d..rows.end * d], d);
            gemm(rows.len(), width, d, &a, &MatRef::row_major(&w, width), &mut out, width, Start::Zero, scratch);
            out.iter_mut().for_each(|v| *v = v.max(0.0));
            out
        })
        .collect();
    chunks.concat()
}

/// Each column to mean 0 and standard deviation 1 (in f64, in row order); a constant
/// column is left at its value, so the bias column stays 1.
pub(crate) fn standardise(values: &mut [f32], n: usize, dims: usize) {
    if n == 0 {
        return;
    }
    let mut sum = vec![0f64; dims];
    let mut square = vec![0f64; dims];
    for row in values.chunks(dims) {
        for (j, &v) in row.iter().enumerate() {
            sum[j] += v as f64;
            square[j] += v as f64 * v as f64;
        }
    }
    let stats: Vec<(f32, f32)> = sum
        .iter()
        .zip(&square)
        .map(|(&s, &q)| {
            let mean = s / n as f64;
            let std = (q / n as f64 - mean * mean).max(0.0).sqrt();
            if std > 1e-6 {
                (mean as f32, (1.0 / std) as f32)
            } else {
                (0.0, 1.0)
            }
        })
        .collect();
    for row in values.chunks_mut(dims) {
        for (v, &(mean, inverse)) in row.iter_mut().zip(&stats) {
            *v = (*v - mean) * inverse;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_and_vectors_get_standardised_features_with_a_bias_column() {
        let mut rng = Rng::new(1, "features-test");
        let n = 70;
        let raw: Vec<f32> = (0..n * 64).map(|_| (rng.uniform() * 16.0) as f32).collect();
        let shape = [1usize, 8, 8];
        let spec = EmbedSpec { shape: &shape, unit_range: Some((0.0, 16.0)), dims: 64, seed: 0 };
        let f = random_features(&spec, &raw, &raw, n);
        // 3x3 filters on 8x8: a 4x4 grid of 6x6 responses (no gradient histograms on so
        // small a picture), then the 64 values and the bias.
        assert_eq!(f.dims, FILTERS * 16 + 64 + 1);
        assert_eq!(f.values.len(), n * f.dims);
        assert!(f.values.chunks(f.dims).all(|row| row[f.dims - 1] == 1.0));
        let mean0 = f.values.iter().step_by(f.dims).map(|&v| v as f64).sum::<f64>() / n as f64;
        assert!(mean0.abs() < 1e-4, "{mean0}");
        assert_eq!(f, random_features(&spec, &raw, &raw, n));
        // 16x16: 5x5 filters, 3x3 blocks of 2x2 cells of gradient histograms, the values
        // pooled 2x2.
        let large: Vec<f32> = (0..n * 256).map(|_| (rng.uniform() * 16.0) as f32).collect();
        let spec16 = EmbedSpec { shape: &[1, 16, 16], ..spec };
        let h = random_features(&spec16, &large, &large, n);
        assert_eq!(h.dims, FILTERS * 16 + 9 * 4 * BINS + 64 + 1);
        assert_eq!(h, random_features(&spec16, &large, &large, n));
        let vectors = EmbedSpec { shape: &[64], unit_range: None, dims: 64, seed: 0 };
        let g = random_features(&vectors, &raw, &raw, n);
        assert_eq!(g.dims, FILTERS * 16 + 64 + 1);
    }
}
