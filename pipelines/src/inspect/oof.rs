//! The audit's own cheap classifier and its out-of-fold probabilities: ridge regression
//! from the random features (`features.rs`) to one-hot labels, one fit per fold on the
//! other folds, its scores turned into probabilities by a softmax whose temperature
//! minimises the out-of-fold log loss.
//!
//! Closed form, so it is exact and seeded by nothing but the features and folds: the
//! Gram matrix `X^T X` of each fold comes from our GEMM, the fit of fold `f` solves
//! `(G - G_f + lambda I) W = B - B_f` by a Cholesky factorisation in f64.
//!
//! Three rounds: a classifier fitted on noisy labels learns the noise (a block of
//! pullovers labelled coat teaches it that pullovers are partly coats, so the flipped
//! examples are not contradicted with confidence). Each later round fits again on all
//! rows but those the round before contradicted by a wide margin, and predicts every
//! row out of fold again. A third round finds more of a large block (bags labelled
//! T-shirt at 30%: the second round still half believes the block, the third much less).

use rayon::prelude::*;
use serde::Serialize;

use super::features::Features;
use crate::kernels::gemm::{gemm, MatRef, Scratch, Start};

/// Ridge penalty per fitted row (the features are standardised).
const LAMBDA: f64 = 0.01;
/// A row leaves the second round's fits when its given label trails another by more than this.
const PRUNE_MARGIN: f64 = 0.5;
/// Fits: the first on every row, each later one without the rows the one before contradicted.
const ROUNDS: usize = 3;
/// Softmax temperatures tried, log-spaced from `T_LOW` to `T_HIGH`.
const TEMPERATURES: usize = 48;
const T_LOW: f64 = 0.5;
const T_HIGH: f64 = 200.0;

/// Out-of-fold probabilities of every row, and what made them.
#[derive(Debug, Clone, PartialEq)]
pub struct OutOfFold {
    /// `probabilities[row][class]`.
    pub probabilities: Vec<Vec<f64>>,
    /// The softmax temperature of the last round.
    pub temperature: f64,
    /// Rows left out of the second round's fits.
    pub pruned: usize,
    /// Share of rows whose most probable class is their label.
    pub accuracy: f64,
}

/// What the report says about the classifier.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classifier {
    pub method: &'static str,
    pub features: usize,
    pub temperature: f64,
    pub pruned: usize,
    pub out_of_fold_accuracy: f64,
}

impl Classifier {
    pub fn of(oof: &OutOfFold, features: usize) -> Classifier {
        Classifier {
            method: "ridge regression to one-hot labels, every class weighing the same, on seeded random convolution features and gradient histograms, k-fold, softmax with fitted temperature, refitted twice, each time without the rows the fit before contradicted",
            features,
            temperature: oof.temperature,
            pruned: oof.pruned,
            out_of_fold_accuracy: oof.accuracy,
        }
    }
}

/// Per class, the weight of each of its rows in the fits: `n / (n_classes * count)`, so
/// every class weighs the same in total. Without it a block of class `s` relabelled `g`
/// makes `g` the larger class, the fit leans towards it, and the true members of `s`
/// then look like `g` too: the mirror cell grows with the block and hides its excess.
fn class_weights(labels: &[u32], n_classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; n_classes];
    labels.iter().for_each(|&y| counts[y as usize] += 1);
    let present = counts.iter().filter(|&&c| c > 0).count().max(1);
    counts.iter().map(|&c| if c > 0 { (labels.len() as f64 / (present * c) as f64) as f32 } else { 0.0 }).collect()
}

/// Sums `X_r^T D X_r` and `X_r^T D Y_r` over `rows`, `D` the rows' class weights (f32
/// GEMM over gathered rows scaled by the square roots of their weights, then f64).
fn gram(
    features: &Features,
    labels: &[u32],
    weights: &[f32],
    n_classes: usize,
    rows: &[usize],
) -> (Vec<f64>, Vec<f64>) {
    let dims = features.dims;
    let mut gathered = Vec::with_capacity(rows.len() * dims);
    let mut targets = vec![0f32; rows.len() * n_classes];
    for (i, &row) in rows.iter().enumerate() {
        let label = labels[row] as usize;
        let scale = weights[label].sqrt();
        gathered.extend(features.values[row * dims..(row + 1) * dims].iter().map(|&v| v * scale));
        targets[i * n_classes + label] = scale;
    }
    let mut g = vec![0f32; dims * dims];
    let mut b = vec![0f32; dims * n_classes];
    let mut scratch = Scratch::default();
    if !rows.is_empty() {
        let xt = MatRef::transposed(&gathered, dims);
        let k = rows.len();
        gemm(dims, dims, k, &xt, &MatRef::row_major(&gathered, dims), &mut g, dims, Start::Zero, &mut scratch);
        gemm(
            dims,
            n_classes,
            k,
            &xt,
            &MatRef::row_major(&targets, n_classes),
            &mut b,
            n_classes,
            Start::Zero,
            &mut scratch,
        );
    }
    (g.iter().map(|&v| v as f64).collect(), b.iter().map(|&v| v as f64).collect())
}

/// `sum(a[l] * b[l])` over four interleaved partial sums (lanes `l % 4`), added in a fixed
/// order at the end: the same bits on any thread count, and not one long chain of
/// dependent additions (the Cholesky factorisation and the scores are most of the fit).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0f64; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (a4.remainder(), b4.remainder());
    for (p, q) in a4.zip(b4) {
        for ((lane, x), y) in lanes.iter_mut().zip(p).zip(q) {
            *lane += x * y;
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(p, q)| p * q).sum();
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail
}

/// Solves `a x = b` for a symmetric positive definite `n x n` matrix `a` and `m`
/// right-hand sides (row-major `n x m`), by Cholesky; `None` if `a` is not positive definite.
fn cholesky_solve(mut a: Vec<f64>, n: usize, mut b: Vec<f64>, m: usize) -> Option<Vec<f64>> {
    for j in 0..n {
        // L[j][..j] is final; the diagonal, then column j of every row below.
        let lj: Vec<f64> = a[j * n..j * n + j].to_vec();
        let diagonal = a[j * n + j] - lj.iter().map(|v| v * v).sum::<f64>();
        if diagonal.is_nan() || diagonal <= 0.0 {
            return None;
        }
        let pivot = diagonal.sqrt();
        a[j * n + j] = pivot;
        for i in j + 1..n {
            let row_i = &mut a[i * n..(i + 1) * n];
            let dot = dot(&row_i[..j], &lj);
            row_i[j] = (row_i[j] - dot) / pivot;
        }
    }
    // L y = b, then L^T x = y.
    for i in 0..n {
        for c in 0..m {
            let dot: f64 = (0..i).map(|l| a[i * n + l] * b[l * m + c]).sum();
            b[i * m + c] = (b[i * m + c] - dot) / a[i * n + i];
        }
    }
    for i in (0..n).rev() {
        for c in 0..m {
            let dot: f64 = (i + 1..n).map(|l| a[l * n + i] * b[l * m + c]).sum();
            b[i * m + c] = (b[i * m + c] - dot) / a[i * n + i];
        }
    }
    Some(b)
}

/// Per fold: the Gram sums of its rows that `select` allows.
type Grams = Vec<(Vec<f64>, Vec<f64>)>;

fn fold_grams(
    features: &Features,
    labels: &[u32],
    weights: &[f32],
    n_classes: usize,
    members: &[Vec<usize>],
    select: impl Fn(usize) -> bool + Sync,
) -> Grams {
    let rows: Vec<Vec<usize>> = members.iter().map(|m| m.iter().copied().filter(|&r| select(r)).collect()).collect();
    rows.par_iter().map(|rows| gram(features, labels, weights, n_classes, rows)).collect()
}

/// Out-of-fold scores of every row: fold `f`'s rows (`members[f]`) scored by the fit
/// on every other fold's Gram sums (`grams`, over `fitted[f]` rows each).
fn scores(features: &Features, n_classes: usize, members: &[Vec<usize>], grams: &Grams, fitted: &[usize]) -> Vec<f64> {
    let (n, dims) = (features.n, features.dims);
    let n_folds = members.len();
    let mut total = (vec![0f64; dims * dims], vec![0f64; dims * n_classes]);
    for (g, b) in grams {
        total.0.iter_mut().zip(g).for_each(|(t, v)| *t += v);
        total.1.iter_mut().zip(b).for_each(|(t, v)| *t += v);
    }
    let per_fold: Vec<Vec<(usize, Vec<f64>)>> = (0..n_folds)
        .into_par_iter()
        .map(|f| {
            let others = fitted.iter().enumerate().filter(|(g, _)| *g != f).map(|(_, &rows)| rows).sum::<usize>();
            let penalty = LAMBDA * others.max(1) as f64;
            let mut a: Vec<f64> = total.0.iter().zip(&grams[f].0).map(|(t, v)| t - v).collect();
            (0..dims).for_each(|i| a[i * dims + i] += penalty);
            let b: Vec<f64> = total.1.iter().zip(&grams[f].1).map(|(t, v)| t - v).collect();
            let w = cholesky_solve(a, dims, b, n_classes).unwrap_or_else(|| vec![0.0; dims * n_classes]);
            // One contiguous row of weights per class.
            let w: Vec<Vec<f64>> = (0..n_classes).map(|c| (0..dims).map(|l| w[l * n_classes + c]).collect()).collect();
            members[f]
                .iter()
                .map(|&row| {
                    let x = &features.values[row * dims..(row + 1) * dims];
                    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                    let s = w.iter().map(|wc| dot(&x, wc)).collect();
                    (row, s)
                })
                .collect()
        })
        .collect();
    let mut out = vec![0f64; n * n_classes];
    for (row, s) in per_fold.into_iter().flatten() {
        out[row * n_classes..(row + 1) * n_classes].copy_from_slice(&s);
    }
    out
}

fn softmax(scores: &[f64], temperature: f64) -> Vec<f64> {
    let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| ((s - top) * temperature).exp()).collect();
    let total: f64 = e.iter().sum();
    e.iter().map(|v| v / total).collect()
}

/// The temperature (of `TEMPERATURES` log-spaced) with the least mean log loss over all rows.
fn temperature(scores: &[f64], labels: &[u32], n_classes: usize) -> f64 {
    let loss = |t: f64| -> f64 {
        scores.chunks(n_classes).zip(labels).map(|(s, &y)| -(softmax(s, t)[y as usize].max(1e-300)).ln()).sum::<f64>()
    };
    let ratio = (T_HIGH / T_LOW).ln() / (TEMPERATURES - 1) as f64;
    let candidates = (0..TEMPERATURES).map(|i| T_LOW * (ratio * i as f64).exp());
    let mut best = (f64::INFINITY, 1.0);
    for t in candidates {
        let l = loss(t);
        if l < best.0 {
            best = (l, t);
        }
    }
    best.1
}

/// Out-of-fold probabilities of every row of `features` (`ROUNDS` rounds, see the module docs).
pub fn out_of_fold(features: &Features, labels: &[u32], n_classes: usize, fold: &[u8]) -> OutOfFold {
    let n = features.n;
    let n_folds = fold.iter().map(|&f| f as usize + 1).max().unwrap_or(0);
    let members: Vec<Vec<usize>> = (0..n_folds).map(|f| (0..n).filter(|&r| fold[r] as usize == f).collect()).collect();
    let weights = class_weights(labels, n_classes);
    let all = fold_grams(features, labels, &weights, n_classes, &members, |_| true);
    let mut grams = all.clone();
    let mut fitted: Vec<usize> = members.iter().map(Vec::len).collect();
    let mut pruned = 0;
    let mut result = OutOfFold { probabilities: Vec::new(), temperature: 1.0, pruned: 0, accuracy: 0.0 };
    for round in 0..ROUNDS {
        let s = scores(features, n_classes, &members, &grams, &fitted);
        let t = temperature(&s, labels, n_classes);
        let probabilities: Vec<Vec<f64>> = s.chunks(n_classes.max(1)).map(|row| softmax(row, t)).collect();
        if round + 1 < ROUNDS {
            // The next round fits without the rows this one contradicted: their Gram
            // sums are taken out of their fold's full sums.
            let contradicted: Vec<bool> = probabilities
                .iter()
                .zip(labels)
                .map(|(p, &y)| {
                    let other = (0..n_classes).filter(|&c| c != y as usize).map(|c| p[c]).fold(0.0, f64::max);
                    p[y as usize] - other < -PRUNE_MARGIN
                })
                .collect();
            let removed = fold_grams(features, labels, &weights, n_classes, &members, |r| contradicted[r]);
            grams = all.clone();
            for (f, ((g, b), (rg, rb))) in grams.iter_mut().zip(&removed).enumerate() {
                g.iter_mut().zip(rg).for_each(|(v, r)| *v -= r);
                b.iter_mut().zip(rb).for_each(|(v, r)| *v -= r);
                fitted[f] = members[f].len() - members[f].iter().filter(|&&r| contradicted[r]).count();
            }
            pruned = contradicted.iter().filter(|&&c| c).count();
        }
        let correct =
            probabilities.iter().zip(labels).filter(|(p, &y)| (0..n_classes).all(|c| p[c] <= p[y as usize])).count();
        result = OutOfFold { probabilities, temperature: t, pruned, accuracy: correct as f64 / n.max(1) as f64 };
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn cholesky_solves_a_positive_definite_system() {
        // a = m m^T + I for a random m; check a x = b.
        let mut rng = Rng::new(5, "oof-test");
        let n = 9;
        let m: Vec<f64> = (0..n * n).map(|_| rng.normal()).collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] =
                    (0..n).map(|l| m[i * n + l] * m[j * n + l]).sum::<f64>() + if i == j { 1.0 } else { 0.0 };
            }
        }
        let b: Vec<f64> = (0..n * 2).map(|_| rng.normal()).collect();
        let x = cholesky_solve(a.clone(), n, b.clone(), 2).unwrap();
        for i in 0..n {
            for c in 0..2 {
                let ax: f64 = (0..n).map(|l| a[i * n + l] * x[l * 2 + c]).sum();
                assert!((ax - b[i * 2 + c]).abs() < 1e-9);
            }
        }
        assert!(cholesky_solve(vec![-1.0], 1, vec![1.0], 1).is_none());
    }

    #[test]
    fn separable_classes_are_predicted_out_of_fold_and_a_flipped_row_is_contradicted() {
        // Two Gaussian blobs in 3 dimensions (+ bias); row 0 carries the wrong label.
        let mut rng = Rng::new(7, "oof-test");
        let n = 200;
        let mut values = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let class = (i % 2) as u32;
            let centre = if class == 0 { -2.0 } else { 2.0 };
            values.extend((0..3).map(|_| (centre + rng.normal()) as f32));
            values.push(1.0);
            labels.push(if i == 0 { 1 } else { class });
        }
        let features = Features { values, n, dims: 4 };
        let fold: Vec<u8> = (0..n).map(|i| (i % 5) as u8).collect();
        let oof = out_of_fold(&features, &labels, 2, &fold);
        assert!(oof.accuracy > 0.95, "{}", oof.accuracy);
        assert!(oof.probabilities[0][1] < 0.1, "{:?}", oof.probabilities[0]);
        assert!(oof.pruned >= 1);
        assert!(oof.probabilities.iter().all(|p| (p.iter().sum::<f64>() - 1.0).abs() < 1e-9));
        assert_eq!(oof, out_of_fold(&features, &labels, 2, &fold));
    }
}
