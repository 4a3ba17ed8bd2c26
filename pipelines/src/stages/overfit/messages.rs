//! The sentences of the `loss_decreased` verdict: which way the loss went, by how
//! much, and what to try.

use crate::stages::common::Fixed;

/// `training loss went 2.3035 -> 1.6210 (29.6% lower), want at least 50% lower`, or
/// `rose ... (10.2% higher)`: the direction in words, never a negative "lower".
pub(super) fn loss_change_message(first: f64, last: f64, drop: f64, min_drop: f64) -> String {
    let (first, last, want) = (Fixed(first, 4), Fixed(last, 4), Fixed(min_drop * 100.0, 0));
    if drop >= 0.0 {
        format!("training loss went {first} -> {last} ({}% lower), want at least {want}% lower", Fixed(drop * 100.0, 1))
    } else {
        format!(
            "training loss rose {first} -> {last} ({}% higher), want at least {want}% lower",
            Fixed(-drop * 100.0, 1)
        )
    }
}

/// What to try, from the numbers: a rising loss points at the learning rate, a loss
/// that falls too slowly at the budget.
pub(super) fn loss_change_hint(first: f64, last: f64, drop: f64, steps: f64) -> String {
    if !last.is_finite() || last > 1.2 * first {
        "the loss rose above its value at init: train.lr is likely too high; try one 10x smaller".to_string()
    } else if drop > 0.05 {
        format!(
            "the loss is going down ({:.1}% in {steps:.0} steps) but not far enough yet: train longer \
             (train.steps) or raise train.lr",
            drop * 100.0
        )
    } else {
        "loss is not going down: try another train.lr, check the optimizer sees the parameters".to_string()
    }
}

#[cfg(test)]
mod message_tests {
    use super::*;

    #[test]
    fn loss_change_says_which_way_and_what_to_try() {
        let rose = loss_change_message(2.3035, 2.5388, 1.0 - 2.5388 / 2.3035, 0.5);
        assert!(rose.contains("rose") && rose.contains("10.2% higher") && !rose.contains("(-"), "{rose}");
        let fell = loss_change_message(2.3, 1.62, 1.0 - 1.62 / 2.3, 0.5);
        assert!(fell.contains("29.6% lower), want at least 50% lower"), "{fell}");
        assert!(loss_change_hint(2.3, 1.62, 0.296, 50.0).contains("train longer"));
        assert!(loss_change_hint(2.3, 95.7, -40.0, 50.0).contains("too high"));
    }
}
