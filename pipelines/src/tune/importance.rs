//! Which knob mattered: a one-way binned analysis of variance per knob.
//!
//! For each searched knob, the trials are grouped by its value: a choice knob by
//! option, a range knob into `b` equal-width bins of its sampling space (log space
//! for `log`), `b = clamp(round(sqrt(n / 2)), 2, 8)` for `n` trials, so a bin holds
//! about `sqrt(2n)` trials. The knob's importance is the share of the variance of the
//! validation accuracy that the grouping explains, bias-corrected (epsilon squared):
//!
//! `(SS_between - (k - 1) MS_within) / (SS_total + MS_within)`, clamped to `[0, 1]`,
//!
//! with `k` the number of non-empty groups and `MS_within = SS_within / (n - k)`.
//! Plain eta squared (`SS_between / SS_total`) rewards a knob for fitting noise when
//! there are few trials per bin; epsilon squared removes what chance alone explains
//! on average, so a knob that does nothing scores near 0. Each knob is judged on its
//! own (one-way), so shares need not sum to 1: what is left is interactions and
//! noise (seed, data order). This is fANOVA's first-order term without its random
//! forest; with a few dozen random trials it orders knobs reliably when one matters
//! much more than another, which is the recipe's point.

/// One knob's importance.
#[derive(Debug, Clone, PartialEq)]
pub struct Importance {
    /// Bias-corrected share of variance explained (epsilon squared), in `[0, 1]`;
    /// `None` when there are too few trials (`n <= k`) or no variance.
    pub share: Option<f64>,
    /// The uncorrected share (eta squared).
    pub eta_squared: Option<f64>,
    /// Non-empty groups.
    pub groups: usize,
}

/// The number of bins for a range knob over `n` trials.
pub fn bins(n: usize) -> usize {
    ((n as f64 / 2.0).sqrt().round() as usize).clamp(2, 8)
}

/// The bin of a position in `[0, 1]` among `bins` equal-width bins.
pub fn bin(position: f64, bins: usize) -> usize {
    ((position.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1)
}

/// One-way ANOVA of `values` grouped by `groups` (same length; a group is any id).
pub fn explained(groups: &[usize], values: &[f64]) -> Importance {
    let pairs: Vec<(usize, f64)> =
        groups.iter().copied().zip(values.iter().copied()).filter(|(_, v)| v.is_finite()).collect();
    let n = pairs.len();
    let mean = pairs.iter().map(|p| p.1).sum::<f64>() / n.max(1) as f64;
    let mut sums: std::collections::BTreeMap<usize, (f64, usize)> = std::collections::BTreeMap::new();
    for &(group, value) in &pairs {
        let entry = sums.entry(group).or_insert((0.0, 0));
        entry.0 += value;
        entry.1 += 1;
    }
    let k = sums.len();
    let total: f64 = pairs.iter().map(|p| (p.1 - mean).powi(2)).sum();
    let between: f64 = sums.values().map(|&(sum, count)| count as f64 * (sum / count as f64 - mean).powi(2)).sum();
    if n <= k || total <= f64::EPSILON * n as f64 * mean.abs().max(1.0) {
        return Importance { share: None, eta_squared: None, groups: k };
    }
    let within_ms = (total - between).max(0.0) / (n - k) as f64;
    let epsilon = (between - (k as f64 - 1.0) * within_ms) / (total + within_ms);
    Importance { share: Some(epsilon.clamp(0.0, 1.0)), eta_squared: Some((between / total).clamp(0.0, 1.0)), groups: k }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn a_knob_that_decides_the_metric_explains_it_and_noise_does_not() {
        let mut rng = Rng::new(0, "importance-test");
        let n = 64;
        let lr: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
        let noise_knob: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
        let metric: Vec<f64> = lr.iter().map(|x| 0.5 + 0.4 * x + 0.02 * rng.normal()).collect();
        let b = bins(n);
        assert_eq!(b, 6);
        let group = |xs: &[f64]| xs.iter().map(|&x| bin(x, b)).collect::<Vec<_>>();
        let strong = explained(&group(&lr), &metric).share.unwrap();
        let none = explained(&group(&noise_knob), &metric).share.unwrap();
        assert!(strong > 0.8, "{strong}");
        assert!(none < 0.1, "{none}");
        let raw = explained(&group(&noise_knob), &metric).eta_squared.unwrap();
        assert!(raw > none, "eta squared is biased upward: {raw} vs {none}");
    }

    #[test]
    fn exact_groups_and_degenerate_cases() {
        // Two groups with means 0 and 1, no spread within: all variance explained.
        let exact = explained(&[0, 0, 1, 1], &[0.0, 0.0, 1.0, 1.0]);
        assert_eq!((exact.share, exact.eta_squared, exact.groups), (Some(1.0), Some(1.0), 2));
        assert_eq!(explained(&[0, 1], &[0.2, 0.4]).share, None, "one trial per group");
        assert_eq!(explained(&[0, 0, 1, 1], &[0.5; 4]).share, None, "no variance");
        assert_eq!(explained(&[0, 1, 0, 1], &[1.0, f64::NAN, 1.0, 2.0]).groups, 2);
        assert_eq!((bin(1.0, 4), bin(0.0, 4), bin(0.26, 4)), (3, 0, 1));
    }
}
