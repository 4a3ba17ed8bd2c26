//! Chart axes: nice ticks and readable tick labels (linear and log).

/// A chart axis: its range (extended to round numbers) and its ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub min: f64,
    pub max: f64,
    pub log: bool,
    /// Tick values with their labels, short and readable (`0.25`, `3e-4`, `1000`).
    pub ticks: Vec<(f64, String)>,
}

/// A "nice" step `mantissa * 10^exponent` with mantissa 1, 2 or 5.
#[derive(Debug, Clone, Copy)]
pub(super) struct Step {
    mantissa: i64,
    exponent: i32,
}

impl Step {
    /// The smallest nice step >= `raw` (raw > 0).
    fn at_least(raw: f64) -> Step {
        let mut exponent = raw.log10().floor() as i32;
        for _ in 0..2 {
            for mantissa in [1, 2, 5] {
                let step = Step { mantissa, exponent };
                if step.times(1) >= raw * (1.0 - 1e-12) {
                    return step;
                }
            }
            exponent += 1;
        }
        Step { mantissa: 1, exponent }
    }

    /// The next smaller nice step.
    fn smaller(self) -> Step {
        match self.mantissa {
            5 => Step { mantissa: 2, exponent: self.exponent },
            2 => Step { mantissa: 1, exponent: self.exponent },
            _ => Step { mantissa: 5, exponent: self.exponent - 1 },
        }
    }

    /// `i` steps, computed from integers so that tick values are the doubles nearest
    /// to their decimal text (`3 * 1e-4` is `0.0003`, not `0.00030000000000000003`).
    fn times(self, i: i64) -> f64 {
        let units = (i * self.mantissa) as f64;
        if self.exponent >= 0 {
            units * 10f64.powi(self.exponent)
        } else {
            units / 10f64.powi(-self.exponent)
        }
    }
}

/// Short text of `value`, a multiple of a step whose exponent is `exponent`:
/// fixed decimals, or `m e k` on a `scientific` axis.
pub(super) fn tick_text(value: f64, exponent: i32, scientific_axis: bool) -> String {
    if value == 0.0 {
        "0".into()
    } else if scientific_axis {
        scientific(value, exponent)
    } else {
        let decimals = (-exponent).max(0) as usize;
        format!("{value:.decimals$}")
    }
}

/// `value` as `m e k` with as few mantissa digits as a step of 10^`exponent` needs.
pub(super) fn scientific(value: f64, exponent: i32) -> String {
    if value == 0.0 || !value.is_finite() {
        return if value == 0.0 { "0".into() } else { value.to_string() };
    }
    let mut power = value.abs().log10().floor() as i32;
    let digits = (power - exponent).clamp(0, 6) as usize;
    let mut mantissa = value / 10f64.powi(power);
    if format!("{:.digits$}", mantissa.abs()).starts_with("10") {
        power += 1;
        mantissa = value / 10f64.powi(power);
    }
    let text = format!("{mantissa:.digits$}");
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    format!("{text}e{power}")
}

/// Short text of a log-axis tick `m * 10^power`: plain between 0.001 and 10^5.
pub(super) fn log_tick_text(value: f64, power: i32) -> String {
    if (-3..=5).contains(&power) {
        let decimals = (-power).max(0) as usize;
        format!("{value:.decimals$}")
    } else {
        scientific(value, power)
    }
}

/// Nice ticks from `low` to `high`: the largest 1-2-5 step giving at least 5 ticks
/// (about 5 to 10), and the range extended to whole steps when `extend`.
pub(super) fn linear_ticks(low: f64, high: f64, extend: bool) -> (f64, f64, Vec<(f64, String)>) {
    let mut step = Step::at_least((high - low) / 8.0);
    for _ in 0..8 {
        let (first, last) = if extend {
            ((low / step.times(1) + 1e-9).floor() as i64, (high / step.times(1) - 1e-9).ceil() as i64)
        } else {
            ((low / step.times(1) - 1e-9).ceil() as i64, (high / step.times(1) + 1e-9).floor() as i64)
        };
        if last - first + 1 >= 5 {
            let largest = step.times(first.abs().max(last.abs()));
            let sci = step.exponent < -3 || largest >= 1e6;
            let ticks = (first..=last).map(|i| (step.times(i), tick_text(step.times(i), step.exponent, sci))).collect();
            return if extend { (step.times(first), step.times(last), ticks) } else { (low, high, ticks) };
        }
        step = step.smaller();
    }
    (low, high, vec![(low, scientific(low, -6)), (high, scientific(high, -6))])
}

impl Axis {
    /// An axis over `values`; non-finite values (and non-positive ones on a log axis)
    /// are left out. A constant series gets a range around its value.
    pub fn fit(values: impl IntoIterator<Item = f64>, log: bool) -> Axis {
        let (low, high) = values
            .into_iter()
            .filter(|v| v.is_finite() && (!log || *v > 0.0))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        if log {
            Axis::log(low, high)
        } else {
            Axis::linear(low, high)
        }
    }

    fn linear(low: f64, high: f64) -> Axis {
        let (low, high) = if !low.is_finite() {
            (0.0, 1.0)
        } else if high - low <= 1e-9 * low.abs().max(high.abs()) || high == low {
            match low {
                v if v > 0.0 => (0.0, 2.0 * v),
                v if v < 0.0 => (2.0 * v, 0.0),
                _ => (0.0, 1.0),
            }
        } else {
            (low, high)
        };
        let (min, max, ticks) = linear_ticks(low, high, true);
        Axis { min, max, log: false, ticks }
    }

    /// An axis from exactly `low` to `high` (both finite, low < high), ticks inside.
    pub fn tight(low: f64, high: f64) -> Axis {
        let (min, max, ticks) = linear_ticks(low, high, false);
        Axis { min, max, log: false, ticks }
    }

    /// Whole decades; ticks at each decade (every k-th when there are many), or at
    /// 1-2-5 (1-2-3-5-7 within one decade) so there are always at least 5.
    fn log(low: f64, high: f64) -> Axis {
        let (low, high) = if low.is_finite() { (low, high) } else { (0.1, 1.0) };
        let decade = |power: i32| Step { mantissa: 1, exponent: power }.times(1);
        // log10 is not exact: settle on the decades by comparing with 10^k itself.
        let mut first = low.log10().floor() as i32;
        first += i32::from(decade(first + 1) <= low) - i32::from(decade(first) > low);
        let mut last = high.log10().ceil() as i32;
        last += i32::from(decade(last) < high) - i32::from(decade(last - 1) >= high);
        let last = last.max(first + 1);
        let decades = last - first;
        let mantissas: &[i64] = match decades {
            1 => &[1, 2, 3, 5, 7],
            2 | 3 => &[1, 2, 5],
            _ => &[1],
        };
        let every = (decades as usize).div_ceil(10).max(1);
        let mut ticks = Vec::new();
        for power in (first..last).step_by(every) {
            for &m in mantissas {
                let value = Step { mantissa: m, exponent: power }.times(1);
                ticks.push((value, log_tick_text(value, power)));
            }
        }
        let top = Step { mantissa: 1, exponent: last }.times(1);
        ticks.push((top, log_tick_text(top, last)));
        Axis { min: Step { mantissa: 1, exponent: first }.times(1), max: top, log: true, ticks }
    }

    /// 0..1 along the axis; `None` for a value the axis cannot show.
    pub fn frac(&self, value: f64) -> Option<f64> {
        if !value.is_finite() || (self.log && value <= 0.0) {
            return None;
        }
        Some(if self.log {
            (value.log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
        } else {
            (value - self.min) / (self.max - self.min)
        })
    }
}
