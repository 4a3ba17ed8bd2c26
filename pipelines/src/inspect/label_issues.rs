//! Label issues of the training split: out-of-fold class probabilities (the audit's own
//! classifier, `oof.rs`, on random features or on a trained model's embedding) go through
//! confident learning (`confident.rs`), which picks the likely errors; each one keeps
//! its nearest out-of-fold training neighbours as the explanation.

use serde::Serialize;

use super::confident::{self, ConfidentLearning, Filter};
use super::neighbours::Neighbour;
pub use super::oof::Classifier;
use super::{ExampleRef, View};
use crate::rng::Rng;

/// A neighbour as a finding shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NeighbourRef {
    pub example: ExampleRef,
    /// Euclidean distance in the audit's embedding.
    pub distance: f64,
}

/// One likely label error, explained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelIssue {
    pub example: ExampleRef,
    /// The label its out-of-fold neighbours point to.
    pub suggested_label: u32,
    /// Predicted probability of its own label.
    pub self_confidence: f64,
    /// Predicted probability of the suggested label.
    pub suggested_confidence: f64,
    /// Its nearest training neighbours from other folds (the voters), nearest first.
    pub neighbours: Vec<NeighbourRef>,
}

/// The label audit: confident learning's tables and the explained issues.
#[derive(Debug, Clone, Serialize)]
pub struct LabelAudit {
    /// Training examples audited (all of them, or a seeded sample of `knn_queries`).
    pub n_audited: usize,
    pub thresholds: Vec<f64>,
    pub confident_joint: Vec<Vec<u64>>,
    pub noise_rate: Vec<Vec<f64>>,
    pub estimated_noise: f64,
    pub issues: Vec<LabelIssue>,
    /// The out-of-fold classifier behind the probabilities, when the audit fitted one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classifier: Option<Classifier>,
}

/// Seeded fold of each of `n` training rows (balanced: sizes differ by at most one).
pub fn folds(n: usize, n_folds: usize, seed: u64) -> Vec<u8> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed, "inspect/folds").shuffle(&mut order);
    let mut fold = vec![0u8; n];
    for (rank, &row) in order.iter().enumerate() {
        fold[row] = (rank % n_folds.clamp(1, 255)) as u8;
    }
    fold
}

/// Seeded sample of at most `max` training rows, in row order.
pub fn audited_rows(n: usize, max: usize, seed: u64) -> Vec<usize> {
    let mut rows: Vec<usize> = (0..n).collect();
    if n > max {
        Rng::new(seed, "inspect/knn-queries").shuffle(&mut rows);
        rows.truncate(max);
        rows.sort_unstable();
    }
    rows
}

/// Each audited row's out-of-fold `probabilities` (one row per audited row), `1 - share`
/// of them, blended with `share` of its out-of-fold neighbours' vote (`votes`, per
/// training row; `labels` per training row), spread by `priors` with the weight of one
/// voter. The classifier and the neighbours see an example differently (a fit over every
/// class against the nearest few in a fixed embedding), so where they agree the example
/// is contradicted more surely, and where only one contradicts it, less.
pub(crate) fn blend_votes(
    probabilities: &[Vec<f64>],
    votes: &[Vec<Neighbour>],
    audited: &[usize],
    labels: &[u32],
    priors: &[f64],
    share: f64,
) -> Vec<Vec<f64>> {
    probabilities
        .iter()
        .zip(audited)
        .map(|(p, &row)| {
            if votes[row].is_empty() {
                return p.clone();
            }
            let voters: Vec<u32> = votes[row].iter().map(|nb| labels[nb.row as usize]).collect();
            let vote = confident::votes_to_probabilities(&voters, priors, 1.0);
            p.iter().zip(&vote).map(|(a, b)| (1.0 - share) * a + share * b).collect()
        })
        .collect()
}

/// Confident learning over the audited training rows' out-of-fold `probabilities`
/// (one row per audited row); each issue is explained by its out-of-fold neighbours
/// (`votes`, per training row).
pub(crate) fn audit_probabilities(
    train: &View<'_>,
    probabilities: &[Vec<f64>],
    votes: &[Vec<Neighbour>],
    audited: &[usize],
    n_classes: usize,
    filter: &Filter,
) -> LabelAudit {
    let labels: Vec<u32> = audited.iter().map(|&row| train.split.y[row]).collect();
    let ConfidentLearning { thresholds, confident_joint, noise_rate, estimated_noise, issues } =
        confident::find(probabilities, &labels, n_classes, filter);
    let issues = issues
        .iter()
        .map(|issue| {
            let row = audited[issue.position];
            LabelIssue {
                example: train.example(row),
                suggested_label: issue.suggested,
                self_confidence: issue.self_confidence,
                suggested_confidence: issue.suggested_confidence,
                neighbours: votes[row]
                    .iter()
                    .map(|nb| NeighbourRef { example: train.example(nb.row as usize), distance: nb.distance })
                    .collect(),
            }
        })
        .collect();
    LabelAudit {
        n_audited: audited.len(),
        thresholds,
        confident_joint,
        noise_rate,
        estimated_noise,
        issues,
        classifier: None,
    }
}
