//! Hints that name the likely cause from the numbers, for checks about a trained
//! model: a loss that rose above its value at init points at the learning rate; a
//! training loss far below the validation loss is overfitting, not unused inputs.

/// The likely cause of a poor validation loss, when the numbers show one.
/// `init_loss` is the loss the recipe's init starts from (the label entropy).
pub fn likely_cause(lr: f64, init_loss: f64, train_loss: Option<f64>, val_loss: f64) -> Option<String> {
    let rose = |loss: f64| !loss.is_finite() || loss > 1.5 * init_loss;
    if rose(val_loss) || train_loss.is_some_and(|loss| !loss.is_finite() || loss > 1.2 * init_loss) {
        return Some(format!(
            "the loss rose from {init_loss:.4} at init to {val_loss:.4} on validation{}: train.lr = {} is likely too \
             high; try train.lr = {}",
            train_loss.map_or(String::new(), |t| format!(" ({t:.4} on training)")),
            short(lr),
            short(lr / 10.0),
        ));
    }
    match train_loss {
        Some(train) if train < 0.5 * val_loss => Some(format!(
            "the training loss {train:.4} is far below the validation loss {val_loss:.4}: the model overfits its \
             training split (which the `overfit` stage is for); regularize next: more data, augmentation, dropout \
             (model.dropout), weight decay (train.weight_decay), early stopping"
        )),
        _ => None,
    }
}

/// `4`, `0.4`, `0.0003`: Rust's shortest round-trip text, as people write a knob.
fn short(value: f64) -> String {
    // Four significant digits, so 0.0003 / 10 reads 3e-5, not 2.9999999999999997e-5.
    let value: f64 = format!("{value:.3e}").parse().unwrap_or(value);
    if value != 0.0 && !(1e-4..1e6).contains(&value.abs()) {
        format!("{value:e}")
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rising_loss_blames_the_learning_rate_and_a_gap_is_overfitting() {
        let high = likely_cause(4.0, 2.3, Some(95.7), 95.7).unwrap();
        assert!(high.contains("train.lr = 4 is likely too high; try train.lr = 0.4"), "{high}");
        let nan = likely_cause(4.0, 2.3, None, f64::NAN).unwrap();
        assert!(nan.contains("too high"), "{nan}");
        let gap = likely_cause(3e-4, 1.1, Some(0.01), 0.4).unwrap();
        assert!(gap.contains("overfits") && gap.contains("regularize"), "{gap}");
        assert_eq!(likely_cause(3e-4, 2.3, Some(1.0), 1.2), None, "no pattern: the check's own hint stands");
        assert_eq!(short(3e-4), "0.0003");
        assert_eq!(short(3e-4 / 10.0), "3e-5");
    }
}
