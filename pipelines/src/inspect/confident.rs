//! Confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating
//! Uncertainty in Dataset Labels", JAIR 2021) over any out-of-fold predicted
//! probabilities: per-class thresholds, the confident joint, its calibration to the
//! label counts, the noise rate per (given, true) class pair, and the label issues
//! ranked by self-confidence.
//!
//! This is the seam for a trained model's eyes: `find` takes probabilities from any
//! source. The `inspect` stage feeds it out-of-fold k-nearest-neighbour votes in the
//! fixed embedding (`votes_to_probabilities`); a later stage can feed it a trained
//! network's out-of-fold softmax or kNN in its penultimate layer.
//!
//! Which examples are issues: cleanlab's default (`prune_by_noise_rate`) removes, for
//! every off-diagonal cell (i, j) of the calibrated joint, that many examples labelled i
//! with the largest margin p_j - p_i. On neighbour votes that both over- and
//! under-flags: every natural confusion of two similar classes (shirt and T-shirt) fills
//! the off-diagonal cells, which is disagreement, not error; and a flipped block votes
//! for its own wrong label, so its members rarely clear the near-1 threshold of their
//! true class and never enter the joint. We flag an example when its out-of-fold
//! probability of its own label is at most `max_self_confidence` *and* one other label
//! holds at least `min_suggested_confidence` (a majority of the voters agree on it):
//! a confident contradiction. The joint, its calibration and the noise rates are
//! cleanlab's, reported beside the issues. With `excess_factor` set (the audit's own
//! classifier), the asymmetric part of the calibrated joint flags more: a flipped block
//! fills one cell and not its mirror, natural confusion fills both
//! ([`asymmetric_excess`]); such a cell flags at least the block that a mixture
//! proportion estimate finds in it ([`mixture_count`]).

use serde::Serialize;

/// The result of confident learning on `n` examples and `c` classes.
#[derive(Debug, Clone, Serialize)]
pub struct ConfidentLearning {
    /// Per class: the mean predicted probability of that class over examples labelled with it.
    pub thresholds: Vec<f64>,
    /// `joint[given][suggested]`: examples confidently counted in each cell.
    pub confident_joint: Vec<Vec<u64>>,
    /// `noise_rate[given][true]`: estimated share of examples labelled `given` whose
    /// true class is `true` (rows sum to 1 where the class has examples).
    pub noise_rate: Vec<Vec<f64>>,
    /// Estimated share of all labels that are wrong (off-diagonal mass of the calibrated joint).
    pub estimated_noise: f64,
    /// The issues, most likely first (lowest self-confidence, then largest margin).
    pub issues: Vec<Issue>,
}

/// One likely label error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Issue {
    /// Position among the examples given to `find`.
    pub position: usize,
    pub given: u32,
    pub suggested: u32,
    /// Predicted probability of the given label.
    pub self_confidence: f64,
    /// Predicted probability of the suggested label.
    pub suggested_confidence: f64,
}

/// Knobs of the issue filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Filter {
    /// An issue's given label has at most this predicted probability.
    pub max_self_confidence: f64,
    /// An issue's suggested label has at least this predicted probability.
    pub min_suggested_confidence: f64,
    /// Flags, in every (given, suggested) cell, this many times the cell's excess over
    /// its mirror cell in the calibrated joint, and at least the cell's mixture estimate
    /// of the errors in it (0: off; see [`asymmetric_excess`]).
    pub excess_factor: f64,
}

/// Out-of-fold class probabilities from neighbour labels: each of `labels` is one
/// neighbour's label, weighted equally, plus `prior_weight` spread by the class priors
/// (so no probability is exactly 0 and ties between classes break towards common ones).
pub fn votes_to_probabilities(labels: &[u32], priors: &[f64], prior_weight: f64) -> Vec<f64> {
    let mut p: Vec<f64> = priors.iter().map(|q| q * prior_weight).collect();
    for &label in labels {
        if let Some(slot) = p.get_mut(label as usize) {
            *slot += 1.0;
        }
    }
    let total: f64 = p.iter().sum();
    p.iter_mut().for_each(|v| *v /= total.max(f64::MIN_POSITIVE));
    p
}

/// Confident learning over `probabilities` (row `i` for example `i`, `n_classes` each)
/// and the given `labels`.
pub fn find(probabilities: &[Vec<f64>], labels: &[u32], n_classes: usize, filter: &Filter) -> ConfidentLearning {
    let n = labels.len();
    let mut counts = vec![0u64; n_classes];
    let mut sums = vec![0f64; n_classes];
    for (p, &label) in probabilities.iter().zip(labels) {
        counts[label as usize] += 1;
        sums[label as usize] += p[label as usize];
    }
    let thresholds: Vec<f64> = sums.iter().zip(&counts).map(|(s, &c)| if c > 0 { s / c as f64 } else { 1.0 }).collect();

    // The confident joint: each example counts once, in the cell of the class with the
    // highest probability among those that clear their threshold.
    let mut joint = vec![vec![0u64; n_classes]; n_classes];
    for (p, &label) in probabilities.iter().zip(labels) {
        let best = (0..n_classes)
            .filter(|&j| p[j] >= thresholds[j] - 1e-12)
            .max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a)));
        if let Some(j) = best {
            joint[label as usize][j] += 1;
        }
    }

    // Calibrated so each row sums to the class's label count.
    let calibrated: Vec<Vec<f64>> = joint
        .iter()
        .zip(&counts)
        .map(|(row, &count)| {
            let total: u64 = row.iter().sum();
            row.iter().map(|&v| if total > 0 { v as f64 / total as f64 * count as f64 } else { 0.0 }).collect()
        })
        .collect();
    let noise_rate: Vec<Vec<f64>> = calibrated
        .iter()
        .zip(&counts)
        .map(|(row, &count)| row.iter().map(|v| if count > 0 { v / count as f64 } else { 0.0 }).collect())
        .collect();
    let off_diagonal: f64 = calibrated
        .iter()
        .enumerate()
        .map(|(i, row)| row.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, v)| v).sum::<f64>())
        .sum();
    let estimated_noise = off_diagonal / n.max(1) as f64;

    let mut flagged: Vec<Option<usize>> = (0..n)
        .map(|i| {
            let given = labels[i] as usize;
            let p = &probabilities[i];
            let suggested =
                (0..n_classes).filter(|&j| j != given).max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a)))?;
            (p[given] <= filter.max_self_confidence && p[suggested] >= filter.min_suggested_confidence)
                .then_some(suggested)
        })
        .collect();
    if filter.excess_factor > 0.0 {
        asymmetric_excess(probabilities, labels, &calibrated, filter.excess_factor, &mut flagged);
    }
    let mut issues: Vec<Issue> = flagged
        .iter()
        .enumerate()
        .filter_map(|(i, suggested)| {
            let (given, suggested) = (labels[i] as usize, (*suggested)?);
            let p = &probabilities[i];
            Some(Issue {
                position: i,
                given: given as u32,
                suggested: suggested as u32,
                self_confidence: p[given],
                suggested_confidence: p[suggested],
            })
        })
        .collect();
    issues.sort_by(|a, b| {
        a.self_confidence
            .total_cmp(&b.self_confidence)
            .then(b.suggested_confidence.total_cmp(&a.suggested_confidence))
            .then(a.position.cmp(&b.position))
    });
    ConfidentLearning { thresholds, confident_joint: joint, noise_rate, estimated_noise, issues }
}

/// Flags the examples a block of flipped labels leaves behind. Two similar classes are
/// confused both ways about equally (shirts read as T-shirts about as often as T-shirts
/// read as shirts), but a block of class `s` relabelled `g` fills the cell (given `g`,
/// suggested `s`) of the calibrated joint and not its mirror (`s`, `g`). So in every cell
/// the excess over its mirror, times `factor`, rounded, is taken as the number of errors
/// there, and that many examples given `g` whose probability of `s` exceeds that of `g`
/// are flagged, largest [`log_ratio`] first (cleanlab's `prune_by_noise_rate` ranks by
/// the margin `p_s - p_g`; the log ratio flagged the same planted rows on the fixtures of
/// `benches/audit.rs` with 1 to 2 points more precision, fewer of them already flagged
/// by the confident rule). `factor` above 1 makes up for the classifier having partly
/// learnt the block, which hides some of it from the joint.
///
/// The mirror is a poor measure of a block of classes that are confused one way by
/// nature (pullovers read as coats far more often than coats as pullovers): relabelling
/// pullovers as coats then leaves a cell whose excess is half the block. So a cell with
/// an excess flags at least the block size that [`mixture_count`] estimates.
fn asymmetric_excess(
    probabilities: &[Vec<f64>],
    labels: &[u32],
    calibrated: &[Vec<f64>],
    factor: f64,
    flagged: &mut [Option<usize>],
) {
    let n_classes = calibrated.len();
    for (given, row) in calibrated.iter().enumerate() {
        for suggested in (0..n_classes).filter(|&s| s != given) {
            let excess = (factor * (row[suggested] - calibrated[suggested][given])).round();
            if excess < 1.0 {
                continue;
            }
            let excess = excess.max(mixture_count(probabilities, labels, given, suggested).round());
            let mut cell: Vec<(f64, usize)> = (0..labels.len())
                .filter(|&i| labels[i] as usize == given)
                .map(|i| (log_ratio(&probabilities[i], given, suggested), i))
                .filter(|&(ratio, _)| ratio > 0.0)
                .collect();
            cell.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(_, i) in cell.iter().take(excess as usize) {
                flagged[i].get_or_insert(suggested);
            }
        }
    }
}

/// `ln p_s - ln p_g`: how much more an example looks like `suggested` than like `given`.
fn log_ratio(p: &[f64], given: usize, suggested: usize) -> f64 {
    p[suggested].max(1e-300).ln() - p[given].max(1e-300).ln()
}

/// Quantiles of the rows labelled `suggested` (the most `suggested`-like share first)
/// whose thresholds [`mixture_count`] tries.
const MIXTURE_QUANTILES: [f64; 3] = [0.3, 0.4, 0.5];

/// How many of the rows labelled `given` are of class `suggested`, by mixture proportion
/// estimation (Scott, Blanchard and Handy, "Classification with Asymmetric Label Noise",
/// COLT 2013): on the score `ln p_s - ln p_g`, rows labelled `g` are a mixture of true
/// `g`, which seldom score like an `s`, and members of `s`, which score like the rows
/// labelled `s`. Above the score that a share `q` of the rows labelled `s` reach, the
/// rows labelled `g` number about `q` times the members of `s` among them (true `g`
/// add a few), so their count over `q` estimates those members from above; the median
/// over `MIXTURE_QUANTILES` is taken.
fn mixture_count(probabilities: &[Vec<f64>], labels: &[u32], given: usize, suggested: usize) -> f64 {
    let score = |p: &[f64]| log_ratio(p, given, suggested);
    let of = |class: usize| -> Vec<f64> {
        probabilities.iter().zip(labels).filter(|(_, &y)| y as usize == class).map(|(p, _)| score(p)).collect()
    };
    let (in_given, mut in_suggested) = (of(given), of(suggested));
    if in_suggested.is_empty() {
        return 0.0;
    }
    in_suggested.sort_by(|a, b| b.total_cmp(a));
    let n_s = in_suggested.len() as f64;
    let mut estimates: Vec<f64> = MIXTURE_QUANTILES
        .iter()
        .map(|&q| {
            let k = ((n_s * q).round() as usize).clamp(1, in_suggested.len());
            let threshold = in_suggested[k - 1];
            let above = in_given.iter().filter(|&&v| v >= threshold).count() as f64;
            above * n_s / k as f64
        })
        .collect();
    estimates.sort_by(f64::total_cmp);
    estimates[estimates.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confidently_contradicted_example_is_an_issue_and_a_confusion_is_not() {
        // Class 0 and 1, ten examples each; example 0 (labelled 0) looks like class 1;
        // example 1 (labelled 0) is torn between both.
        let mut probabilities = Vec::new();
        let mut labels = Vec::new();
        for i in 0..20 {
            let label = (i >= 10) as u32;
            let p1 = match i {
                0 => 0.95,
                1 => 0.5,
                _ if label == 1 => 0.9,
                _ => 0.1,
            };
            probabilities.push(vec![1.0 - p1, p1]);
            labels.push(label);
        }
        let found = find(
            &probabilities,
            &labels,
            2,
            &Filter { max_self_confidence: 0.3, min_suggested_confidence: 0.5, excess_factor: 0.0 },
        );
        assert_eq!(found.issues.iter().map(|i| i.position).collect::<Vec<_>>(), vec![0]);
        assert_eq!(found.issues[0].suggested, 1);
        assert!(found.confident_joint[0][1] >= 1);
        assert!(found.estimated_noise > 0.0 && found.estimated_noise < 0.2);
    }

    #[test]
    fn a_one_sided_confusion_flags_its_excess_and_a_mutual_one_does_not() {
        // Classes 0, 1, 2, 3, forty examples each. Classes 0 and 1 are confused both ways
        // (four examples each look like the other); eight examples labelled 3 look like
        // class 2 and nothing labelled 2 looks like 3 (a flipped block). The confident
        // rule is set too strict to flag any of them.
        let mut probabilities = Vec::new();
        let mut labels = Vec::new();
        let row = |own: usize, other: usize, p_own: f64| {
            let mut p = vec![0.0; 4];
            p[own] = p_own;
            p[other] = 1.0 - p_own;
            p
        };
        for class in 0..4usize {
            for i in 0..40 {
                let p = match (class, i) {
                    (0, 0..4) => row(0, 1, 0.06),
                    (1, 0..4) => row(1, 0, 0.06),
                    (3, 0..8) => row(3, 2, 0.08),
                    (0, _) => row(0, 1, 0.9),
                    (1, _) => row(1, 0, 0.9),
                    (2, _) => row(2, 3, 0.9),
                    _ => row(3, 2, 0.9),
                };
                probabilities.push(p);
                labels.push(class as u32);
            }
        }
        let strict = Filter { max_self_confidence: 0.05, min_suggested_confidence: 0.8, excess_factor: 0.0 };
        assert!(find(&probabilities, &labels, 4, &strict).issues.is_empty());
        let found = find(&probabilities, &labels, 4, &Filter { excess_factor: 1.0, ..strict });
        // The mutual confusion is in the joint, both ways; the block one way.
        assert_eq!((found.confident_joint[0][1], found.confident_joint[1][0]), (4, 4));
        assert_eq!((found.confident_joint[3][2], found.confident_joint[2][3]), (8, 0));
        let positions: Vec<usize> = found.issues.iter().map(|i| i.position).collect();
        assert_eq!(positions, (120..128).collect::<Vec<_>>());
        assert!(found.issues.iter().all(|i| i.given == 3 && i.suggested == 2));
        // Half the factor still flags the whole block: the mixture estimate counts it.
        let estimate = mixture_count(&probabilities, &labels, 3, 2);
        assert!((8.0..=27.0).contains(&estimate), "{estimate}");
        assert_eq!(mixture_count(&probabilities, &labels, 2, 3), 0.0);
        assert_eq!(find(&probabilities, &labels, 4, &Filter { excess_factor: 0.5, ..strict }).issues.len(), 8);
    }

    #[test]
    fn votes_become_probabilities_that_sum_to_one() {
        let p = votes_to_probabilities(&[1, 1, 0], &[0.5, 0.5], 0.0);
        assert!((p[1] - 2.0 / 3.0).abs() < 1e-12);
        let p = votes_to_probabilities(&[], &[0.25, 0.75], 1.0);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12 && p[1] > p[0]);
    }
}
