//! Near-duplicates: pairs of different examples (within a split or across splits)
//! whose root-mean-square difference is at most a threshold, in units of the format's
//! value range for pictures (0.01 is about 2.5 grey levels of 255) or of standard
//! deviations for vectors. Candidates are each example's nearest neighbours in the
//! embedding; the distance that decides is computed on the full-resolution values.
//! Identical examples are exact duplicates and reported there, not here.

use std::collections::BTreeSet;

use serde::Serialize;

use super::neighbours::Neighbour;
use super::{ExampleRef, View};

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NearDuplicate {
    /// The example of the later split (val/test before train), or the later index.
    pub example: ExampleRef,
    /// Its near copy.
    pub other: ExampleRef,
    /// Root-mean-square difference (see the module doc for the unit).
    pub distance: f64,
}

impl NearDuplicate {
    pub fn cross_split(&self) -> bool {
        self.example.split != self.other.split
    }
}

/// Where global row `row` lives: (view, index in it). Views are in row order.
pub(crate) fn locate(views: &[View<'_>], mut row: usize) -> (usize, usize) {
    for (v, view) in views.iter().enumerate() {
        if row < view.split.len() {
            return (v, row);
        }
        row -= view.split.len();
    }
    (views.len(), row)
}

/// Pairs among each row's `nearest` within `threshold`; `scaled(view, index)` gives the
/// full-resolution values compared.
pub(crate) fn find(
    views: &[View<'_>],
    nearest: &[Vec<Neighbour>],
    threshold: f64,
    scaled: &dyn Fn(usize, usize) -> Vec<f32>,
) -> Vec<NearDuplicate> {
    let mut seen = BTreeSet::new();
    let mut pairs = Vec::new();
    for (row, list) in nearest.iter().enumerate() {
        for nb in list {
            let (low, high) = (row.min(nb.row as usize), row.max(nb.row as usize));
            if !seen.insert((low, high)) {
                continue;
            }
            let (va, ia) = locate(views, high);
            let (vb, ib) = locate(views, low);
            let (a, b) = (scaled(va, ia), scaled(vb, ib));
            if a == b {
                continue;
            }
            let squares: f64 = a.iter().zip(&b).map(|(p, q)| (*p as f64 - *q as f64).powi(2)).sum();
            let distance = (squares / a.len().max(1) as f64).sqrt();
            if distance <= threshold {
                pairs.push(NearDuplicate { example: views[va].example(ia), other: views[vb].example(ib), distance });
            }
        }
    }
    pairs.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.example.cmp(&b.example)).then(a.other.cmp(&b.other)));
    pairs
}
