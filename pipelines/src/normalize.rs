//! `data.normalize`: the per-feature mean and standard deviation every split is
//! scaled with, computed on the training split only.

use workspace::ChoiceKnob;

use crate::models::image_shape;

/// `data.normalize`: how features are scaled before training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// Zero mean and unit variance from the training split: one mean and standard
    /// deviation per channel for images (every pixel of a channel shares them, so a
    /// shifted, flipped or rotated image keeps its scale), per feature otherwise.
    Standard,
    /// Per-feature statistics, images too: each pixel its own mean and deviation. A
    /// border pixel that is almost always black gets a tiny deviation, so the rare
    /// image that lights it (or an augmentation that moves ink there) feeds the net
    /// values in the hundreds; `batch_preview`'s `input_range` check warns.
    Feature,
    /// Raw values.
    None,
}

impl ChoiceKnob for Normalize {
    const OPTIONS: &'static [&'static str] = &["standard", "feature", "none"];

    fn from_index(index: usize) -> Normalize {
        [Normalize::Standard, Normalize::Feature, Normalize::None][index]
    }
}

impl Normalize {
    /// Whether values are in standard units (0 the training mean, 1 one deviation).
    pub fn standardises(self) -> bool {
        self != Normalize::None
    }

    /// The recorded name of a dataset's normalisation (`DataMeta::normalize`) is in
    /// standard units.
    pub fn is_standardised(name: &str) -> bool {
        Normalize::parse(name).is_some_and(Normalize::standardises)
    }

    /// The mean and deviation to scale each feature of examples of `shape` with, from
    /// `x`, the training split's rows (row-major).
    pub fn statistics(self, shape: &[usize], x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let d = shape.iter().product::<usize>().max(1);
        match (self, image_shape(shape)) {
            (Normalize::Standard, Some((channels, _, _))) => channel_stats(x, d, channels),
            (Normalize::Standard | Normalize::Feature, _) => standard_stats(x, d),
            (Normalize::None, _) => (vec![0.0; d], vec![1.0; d]),
        }
    }
}

/// Per-channel mean and standard deviation of images (`d` features in `channels`
/// planes), repeated for every pixel of the channel: [`standard_stats`] over the
/// pixels of all examples, one plane at a time.
fn channel_stats(x: &[f32], d: usize, channels: usize) -> (Vec<f32>, Vec<f32>) {
    let plane = d / channels;
    let (mut mean, mut std) = (Vec::with_capacity(d), Vec::with_capacity(d));
    for channel in 0..channels {
        let pixels: Vec<f32> =
            x.chunks(d).flat_map(|row| row[channel * plane..(channel + 1) * plane].iter().copied()).collect();
        let (m, s) = standard_stats(&pixels, 1);
        mean.extend(std::iter::repeat_n(m[0], plane));
        std.extend(std::iter::repeat_n(s[0], plane));
    }
    (mean, std)
}

/// Per-feature mean and standard deviation (in f64) over the finite values; a
/// constant feature gets std 1. Non-finite values are left for `inspect` to report.
fn standard_stats(x: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut count = vec![0f64; d];
    let mut mean = vec![0f64; d];
    for row in x.chunks(d) {
        for ((m, c), v) in mean.iter_mut().zip(count.iter_mut()).zip(row) {
            if v.is_finite() {
                *m += *v as f64;
                *c += 1.0;
            }
        }
    }
    mean.iter_mut().zip(&count).for_each(|(m, c)| *m /= c.max(1.0));
    let mut var = vec![0f64; d];
    for row in x.chunks(d) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            if v.is_finite() {
                *s += (*v as f64 - m).powi(2);
            }
        }
    }
    let std = var
        .iter()
        .zip(&count)
        .map(|(s, c)| (s / c.max(1.0)).sqrt())
        .map(|s| if s < 1e-6 { 1.0 } else { s as f32 })
        .collect();
    (mean.iter().map(|m| *m as f32).collect(), std)
}
