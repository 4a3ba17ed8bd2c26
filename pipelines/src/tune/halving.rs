//! Successive halving: every trial trains for the first rung's steps; once a whole
//! rung is known, the best `1/eta` of it (at least one) train on to the next rung's
//! steps, until the last rung (`tune.steps`).
//!
//! Promotions wait for the whole rung and rank by [`Score`] with ties broken by
//! trial index, so which trials go on never depends on which finished first (ASHA
//! promotes as soon as a trial is in the top 1/eta of what has finished so far,
//! which does). The price: a rung's stragglers hold up the next rung.

use std::cmp::Ordering;

/// A trial's validation result: higher accuracy first, then lower loss. Non-finite
/// values rank last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub val_acc: f64,
    pub val_loss: f64,
}

impl Score {
    /// `Less` when `self` is better than `other` (so sorting puts the best first).
    pub fn rank(&self, other: &Score) -> Ordering {
        let acc = |s: &Score| if s.val_acc.is_finite() { s.val_acc } else { f64::NEG_INFINITY };
        let loss = |s: &Score| if s.val_loss.is_finite() { s.val_loss } else { f64::INFINITY };
        acc(other).total_cmp(&acc(self)).then(loss(self).total_cmp(&loss(other)))
    }
}

/// Indices of `scores` (trial index, score) from best to worst, ties by trial index.
pub fn ranked(scores: &[(usize, Score)]) -> Vec<usize> {
    let mut order: Vec<(usize, Score)> = scores.to_vec();
    order.sort_by(|a, b| a.1.rank(&b.1).then(a.0.cmp(&b.0)));
    order.into_iter().map(|(trial, _)| trial).collect()
}

/// The rungs of a halving schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halving {
    pub eta: u64,
    /// Training steps of each rung, increasing; the last is the full budget.
    pub rungs: Vec<u64>,
}

impl Halving {
    /// Rungs `min_steps * eta^k` below `max_steps`, then `max_steps`.
    pub fn new(eta: u64, min_steps: u64, max_steps: u64) -> Result<Halving, String> {
        if eta < 2 {
            return Err(format!("tune.halving = {eta}: the halving rate eta must be at least 2 (0 turns halving off)"));
        }
        let mut rungs = Vec::new();
        let mut steps = min_steps.max(1);
        while steps < max_steps {
            rungs.push(steps);
            steps = steps.saturating_mul(eta);
        }
        rungs.push(max_steps);
        Ok(Halving { eta, rungs })
    }

    /// How many of `n` trials of one rung go on to the next.
    pub fn promoted(&self, n: usize) -> usize {
        (n / self.eta as usize).max(1)
    }

    /// The trials of each rung so far: rung 0 is every trial; rung k+1 is known once
    /// `score(trial, k)` is known for every trial of rung k (a lone survivor still
    /// climbs every rung, so the winner is trained for the full budget). `score` returns `None`
    /// for a result not known yet.
    pub fn plan(&self, trials: usize, score: impl Fn(usize, usize) -> Option<Score>) -> Vec<Vec<usize>> {
        let mut plan = vec![(0..trials).collect::<Vec<usize>>()];
        for rung in 0..self.rungs.len() - 1 {
            let current = &plan[rung];
            let scores: Option<Vec<(usize, Score)>> =
                current.iter().map(|&trial| score(trial, rung).map(|s| (trial, s))).collect();
            let Some(scores) = scores else { break };
            let mut next: Vec<usize> = ranked(&scores).into_iter().take(self.promoted(current.len())).collect();
            next.sort_unstable();
            plan.push(next);
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(acc: f64, loss: f64) -> Score {
        Score { val_acc: acc, val_loss: loss }
    }

    #[test]
    fn rungs_grow_by_eta_up_to_the_budget() {
        assert_eq!(Halving::new(3, 10, 100).unwrap().rungs, [10, 30, 90, 100]);
        assert_eq!(Halving::new(2, 25, 100).unwrap().rungs, [25, 50, 100]);
        assert_eq!(Halving::new(2, 200, 100).unwrap().rungs, [100]);
        assert!(Halving::new(1, 10, 100).unwrap_err().contains("at least 2"));
    }

    #[test]
    fn ranking_is_accuracy_then_loss_then_index_and_nan_is_last() {
        let scores = [
            (0, score(0.9, 0.5)),
            (1, score(0.95, 0.6)),
            (2, score(0.95, 0.4)),
            (3, score(f64::NAN, 0.1)),
            (4, score(0.9, 0.5)),
        ];
        assert_eq!(ranked(&scores), [2, 1, 0, 4, 3]);
    }

    #[test]
    fn promotion_waits_for_the_whole_rung_and_ignores_finish_order() {
        let halving = Halving::new(2, 10, 40).unwrap();
        let acc = [0.5, 0.9, 0.7, 0.9, 0.1, 0.8];
        // Rung 0 incomplete: only rung 0.
        let partial = halving.plan(6, |t, _| (t != 4).then(|| score(acc[t], 1.0)));
        assert_eq!(partial, vec![vec![0, 1, 2, 3, 4, 5]]);
        // Rung 0 complete: the best 3 (ties by index), rung 1 not yet known.
        let rung0 = halving.plan(6, |t, r| (r == 0).then(|| score(acc[t], 1.0)));
        assert_eq!(rung0, vec![vec![0, 1, 2, 3, 4, 5], vec![1, 3, 5]]);
        // Rung 1 known: the best one of three goes to the budget.
        let rung1 = halving.plan(6, |t, r| Some(score(if r == 1 && t == 5 { 0.99 } else { acc[t] }, 1.0)));
        assert_eq!(rung1, vec![vec![0, 1, 2, 3, 4, 5], vec![1, 3, 5], vec![5]]);
    }
}
