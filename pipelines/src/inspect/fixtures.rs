//! Generated audit fixtures with known answers, shared by the tests and the audit
//! benchmark: a class-balanced subset of a real dataset, a block of labels flipped
//! from one class to another, and test examples copied into the training pool with a
//! few grey levels of noise. Every choice is seeded by `rng::Rng`.

use std::collections::BTreeSet;

use crate::data::{self, DataError, Prepared, RawDataset};
use crate::rng::Rng;

/// A dataset with planted problems, and where they are (source indices).
pub struct Planted {
    pub raw: RawDataset,
    /// Examples whose label was flipped.
    pub flipped: BTreeSet<u32>,
    /// (noisy copy, original in the declared test split).
    pub copies: Vec<(u32, u32)>,
}

/// The split used for fixtures: 75% of the pool train, 25% val, the declared test split kept.
pub const FRACTIONS: [f64; 3] = [0.6, 0.2, 0.2];

/// `per_class` examples of each class from the start of `raw`'s pool, then `test` examples
/// of the declared test split (or the last 20% of a set without one) as the test split.
pub fn subset(raw: &RawDataset, per_class: usize, test: usize, seed: u64) -> RawDataset {
    let d = raw.n_features();
    let pool_end = raw.test_start.unwrap_or(raw.len() * 4 / 5);
    let n_classes = raw.class_names.len();
    let mut order: Vec<usize> = (0..pool_end).collect();
    Rng::new(seed, "fixture/subset").shuffle(&mut order);
    let mut taken = vec![0usize; n_classes];
    let mut rows: Vec<usize> = Vec::new();
    for i in order {
        let class = raw.y[i] as usize;
        if taken[class] < per_class {
            taken[class] += 1;
            rows.push(i);
        }
    }
    rows.sort_unstable();
    let test_start = rows.len();
    rows.extend((pool_end..raw.len()).take(test));
    RawDataset {
        x: rows.iter().flat_map(|&i| raw.x[i * d..(i + 1) * d].iter().copied()).collect(),
        y: rows.iter().map(|&i| raw.y[i]).collect(),
        shape: raw.shape.clone(),
        class_names: raw.class_names.clone(),
        test_start: Some(test_start),
        value_range: raw.value_range,
    }
}

/// Relabels a seeded `rate` share of class `from`'s pool examples as `to`.
pub fn flip_block(raw: &mut RawDataset, from: u32, to: u32, rate: f64, seed: u64) -> BTreeSet<u32> {
    let pool_end = raw.test_start.unwrap_or(raw.len());
    let mut members: Vec<usize> = (0..pool_end).filter(|&i| raw.y[i] == from).collect();
    Rng::new(seed, &format!("fixture/flip/{from}>{to}")).shuffle(&mut members);
    members.truncate((members.len() as f64 * rate).round() as usize);
    members.iter().for_each(|&i| raw.y[i] = to);
    members.iter().map(|&i| i as u32).collect()
}

/// Appends to the pool `n` copies of seeded test examples, each value moved by a
/// uniform integer in `-levels..=levels` grey levels (one level = 1/255 of the value
/// range) and clamped to the range. Returns (copy, original) source indices, after the
/// copies shifted the test split back by `n`.
pub fn plant_copies(raw: &mut RawDataset, n: usize, levels: i64, seed: u64) -> Vec<(u32, u32)> {
    let d = raw.n_features();
    let test_start = raw.test_start.unwrap_or(raw.len());
    let (low, high) = raw.value_range.unwrap_or((0.0, 255.0));
    let step = (high - low) / 255.0;
    let mut originals: Vec<usize> = (test_start..raw.len()).collect();
    let mut rng = Rng::new(seed, "fixture/copies");
    rng.shuffle(&mut originals);
    originals.truncate(n);
    originals.sort_unstable();
    let mut x = raw.x[..test_start * d].to_vec();
    let mut y = raw.y[..test_start].to_vec();
    for &original in &originals {
        for &v in &raw.x[original * d..(original + 1) * d] {
            let noise = rng.below(2 * levels as u64 + 1) as i64 - levels;
            x.push((v + noise as f32 * step).clamp(low, high));
        }
        y.push(raw.y[original]);
    }
    x.extend_from_slice(&raw.x[test_start * d..]);
    y.extend_from_slice(&raw.y[test_start..]);
    let pairs =
        originals.iter().enumerate().map(|(k, &o)| ((test_start + k) as u32, (o + originals.len()) as u32)).collect();
    raw.x = x;
    raw.y = y;
    raw.test_start = Some(test_start + originals.len());
    pairs
}

/// Splits and normalises a fixture like the `data` stage does (seed 0, standard).
pub fn prepare(raw: &RawDataset) -> Result<Prepared, DataError> {
    data::prepare(raw, "fixture", &FRACTIONS, 0, data::Normalize::Standard)
}

/// Recall and precision of `found` against `truth` (precision 1 when nothing is found).
pub fn recall_precision(found: &BTreeSet<u32>, truth: &BTreeSet<u32>) -> (f64, f64) {
    let hits = found.intersection(truth).count() as f64;
    (hits / truth.len().max(1) as f64, if found.is_empty() { 1.0 } else { hits / found.len() as f64 })
}
