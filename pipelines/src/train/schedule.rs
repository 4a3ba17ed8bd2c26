//! Learning-rate schedules: the rate of step `t` as a pure function of the schedule's
//! knobs, `t` and the run's length, so a run resumed at step k continues exactly and
//! a verdict can evaluate the schedule from its parameters alone.

/// `train.schedule`: how the learning rate changes over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleName {
    Constant,
    Step,
    Cosine,
}

impl workspace::ChoiceKnob for ScheduleName {
    const OPTIONS: &'static [&'static str] = &["constant", "step", "cosine"];

    fn from_index(index: usize) -> ScheduleName {
        [ScheduleName::Constant, ScheduleName::Step, ScheduleName::Cosine][index]
    }
}

/// The shape of the schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScheduleKind {
    /// The base rate throughout (the recipe's default).
    Constant,
    /// The rate times `gamma` every `every` steps, counted from the end of warmup.
    Step { every: usize, gamma: f64 },
    /// Half a cosine from the base rate down to `min_ratio` times it, at the last step.
    Cosine { min_ratio: f64 },
}

/// A schedule: its shape and an optional linear warmup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// Steps 0..warmup_steps ramp linearly: step t runs at (t + 1) / warmup_steps of
    /// the rate the shape gives (never at zero).
    pub warmup_steps: usize,
}

impl Schedule {
    pub fn constant() -> Schedule {
        Schedule { kind: ScheduleKind::Constant, warmup_steps: 0 }
    }

    /// The rate of step `step` (0-based) of a run of `total_steps`, as a multiple
    /// of the base rate. Constant without warmup is exactly 1.
    pub fn factor(&self, step: usize, total_steps: usize) -> f64 {
        let after = step.saturating_sub(self.warmup_steps);
        let shape = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Step { every, gamma } => gamma.powi((after / every.max(1)).min(i32::MAX as usize) as i32),
            ScheduleKind::Cosine { min_ratio } => {
                // Progress 0 at the first step after warmup, 1 at the last step.
                let span = total_steps.saturating_sub(self.warmup_steps).saturating_sub(1).max(1);
                let progress = (after as f64 / span as f64).min(1.0);
                min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        };
        if step < self.warmup_steps {
            shape * (step + 1) as f64 / self.warmup_steps as f64
        } else {
            shape
        }
    }

    /// The learning rate of `step`: `base * factor`, exactly `base` when the factor is 1.
    pub fn lr(&self, base: f64, step: usize, total_steps: usize) -> f64 {
        let factor = self.factor(step, total_steps);
        if factor == 1.0 {
            base
        } else {
            base * factor
        }
    }

    /// The lowest factor of any step after warmup and before `fraction` of the run:
    /// how far the schedule has decayed the rate by then (1 when no such step exists).
    /// Schedules only decay after warmup, so this is the factor of the last such step.
    pub fn lowest_before(&self, fraction: f64, total_steps: usize) -> f64 {
        let end = ((fraction.clamp(0.0, 1.0) * total_steps as f64).ceil() as usize).min(total_steps);
        if end <= self.warmup_steps {
            return 1.0;
        }
        self.factor(end - 1, total_steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn constant_is_exactly_one() {
        let schedule = Schedule::constant();
        for step in [0, 1, 500, 2999] {
            assert_eq!(schedule.factor(step, 3000), 1.0);
            assert_eq!(schedule.lr(3e-4, step, 3000), 3e-4);
        }
    }

    #[test]
    fn step_decays_by_gamma_every_n_steps() {
        let schedule = Schedule { kind: ScheduleKind::Step { every: 100, gamma: 0.5 }, warmup_steps: 0 };
        close(schedule.factor(0, 1000), 1.0);
        close(schedule.factor(99, 1000), 1.0);
        close(schedule.factor(100, 1000), 0.5);
        close(schedule.factor(250, 1000), 0.25);
        close(schedule.factor(999, 1000), 0.5f64.powi(9));
    }

    #[test]
    fn cosine_goes_from_one_to_min_ratio() {
        let schedule = Schedule { kind: ScheduleKind::Cosine { min_ratio: 0.1 }, warmup_steps: 0 };
        // 101 steps: progress t/100.
        close(schedule.factor(0, 101), 1.0);
        close(schedule.factor(50, 101), 0.1 + 0.9 * 0.5); // cos(pi/2) = 0
        close(schedule.factor(25, 101), 0.1 + 0.9 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2));
        close(schedule.factor(100, 101), 0.1);
    }

    #[test]
    fn warmup_ramps_linearly_then_hands_over() {
        let schedule = Schedule { kind: ScheduleKind::Cosine { min_ratio: 0.0 }, warmup_steps: 4 };
        close(schedule.factor(0, 105), 0.25);
        close(schedule.factor(1, 105), 0.5);
        close(schedule.factor(3, 105), 1.0);
        close(schedule.factor(4, 105), 1.0); // the cosine starts after warmup
        close(schedule.factor(54, 105), 0.5);
        close(schedule.factor(104, 105), 0.0);
        let step = Schedule { kind: ScheduleKind::Step { every: 10, gamma: 0.1 }, warmup_steps: 5 };
        close(step.factor(14, 100), 1.0);
        close(step.factor(15, 100), 0.1);
    }

    #[test]
    fn resuming_is_exact() {
        // The rate depends on the step alone: a run resumed at any k sees the same rates.
        let schedule = Schedule { kind: ScheduleKind::Cosine { min_ratio: 0.05 }, warmup_steps: 10 };
        let whole: Vec<f64> = (0..200).map(|t| schedule.lr(3e-4, t, 200)).collect();
        let resumed: Vec<f64> = (120..200).map(|t| schedule.lr(3e-4, t, 200)).collect();
        assert_eq!(&whole[120..], resumed.as_slice());
    }

    #[test]
    fn lowest_before_half() {
        let early = Schedule { kind: ScheduleKind::Step { every: 100, gamma: 0.1 }, warmup_steps: 0 };
        close(early.lowest_before(0.5, 1000), 0.1f64.powi(4));
        close(Schedule::constant().lowest_before(0.5, 1000), 1.0);
        let cosine = Schedule { kind: ScheduleKind::Cosine { min_ratio: 0.0 }, warmup_steps: 0 };
        close(cosine.lowest_before(0.5, 1001), 0.5);
        close(Schedule::constant().lowest_before(0.5, 0), 1.0);
        let long_warmup = Schedule { kind: ScheduleKind::Step { every: 1, gamma: 0.1 }, warmup_steps: 600 };
        close(long_warmup.lowest_before(0.5, 1000), 1.0);
    }
}
