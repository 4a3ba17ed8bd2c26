//! `batch_preview`: the first training batch exactly as the training loop receives it
//! (same batcher, seed and purpose, and the same `augment.*` augmentation of step 0),
//! decoded to a picture, and its statistics.

use serde::{Deserialize, Serialize};
use serde_json::json;
use workspace::{Checks, ChoiceKnob, ExecError, StageSpec, Verdict, VerdictError, VerdictStatus};

use super::common::{err, json_bytes, knobs, Cx};
use super::data::Normalize;
use super::regularize::setup::AUGMENT_KNOBS;
use super::{RecipeStage, Run};
use crate::ids::{knob, stage};
use crate::render::{is_image, tiles, Scale};
use crate::train::Batches;

pub struct BatchPreview;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub batch_mean: f64,
    pub batch_std: f64,
    pub batch_size: f64,
    /// The largest magnitude in the batch as fed (augmented), and before augmentation.
    pub batch_max_abs: f64,
    pub clean_max_abs: f64,
    /// 1 when the images are standardised per pixel (`data.normalize = "feature"`).
    pub per_pixel: f64,
}

impl RecipeStage for BatchPreview {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::BATCH_PREVIEW,
            version: 3,
            doc: "the first training batch exactly as the training loop receives it, decoded to pictures",
            knobs: knobs(&[&[knob::TRAIN_BATCH_SIZE, knob::TRAIN_SEED], &AUGMENT_KNOBS]),
            checks: vec![knob::BATCH_PREVIEW_MAX_ABS],
            upstream: vec![stage::DATA],
            fingerprints: vec![],
            device_dependent: false,
        }
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let (batch_size, seed) = (cx.count(knob::TRAIN_BATCH_SIZE)?, cx.seed()?);
        let data = cx.data()?;
        let train = cx.tensors(&data, &data.train)?;
        // The very code path of the training stages: same batcher, same seed, same purpose.
        let mut batches = Batches::new(&train, batch_size, seed, "train");
        let (x, y) = batches.next_batch().map_err(err("batch"))?;
        let augment = cx.augment(&data)?;
        let clean_max_abs = max_abs(&x.flatten_all().and_then(|x| x.to_vec1::<f32>()).map_err(err("batch"))?);
        let x = augment.apply(&x, 0).map_err(err("augment"))?;
        let values: Vec<Vec<f32>> = x.to_vec2().map_err(err("batch"))?;
        let labels: Vec<u32> = y.to_vec1().map_err(err("batch"))?;
        let flat: Vec<f32> = values.iter().flatten().copied().filter(|v| v.is_finite()).collect();
        let n = flat.len().max(1) as f64;
        let mean = flat.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (flat.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let (min, max) = flat.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let names = &data.meta.class_names;
        let summary = json!({
            "batch_size": labels.len(),
            "labels": labels,
            "label_names": labels.iter().map(|&l| names.get(l as usize).cloned().unwrap_or_default()).collect::<Vec<_>>(),
            "mean": mean, "std": std, "min": min, "max": max,
            "normalize": data.meta.normalize,
            "augmented": !augment.is_identity(),
            "rendering": "normalised values drawn with -3 as black and +3 as white, exactly as fed to the model",
        });
        let mut artifacts = vec![("batch_preview.json".to_string(), json_bytes(&summary)?)];
        if is_image(&data.meta.shape) {
            let pictures: Vec<(&[f32], String)> = values
                .iter()
                .zip(&labels)
                .map(|(row, &l)| (row.as_slice(), names.get(l as usize).cloned().unwrap_or_else(|| l.to_string())))
                .collect();
            let scale = if Normalize::is_standardised(&data.meta.normalize) {
                Scale { low: -3.0, high: 3.0 }
            } else {
                let (low, high) = data.meta.value_range.unwrap_or((min, max));
                Scale { low, high }
            };
            artifacts.push(("batch_preview.png".to_string(), tiles(&pictures, &data.meta.shape, scale, 8)));
        }
        let per_pixel =
            is_image(&data.meta.shape) && Normalize::parse(&data.meta.normalize) == Some(Normalize::Feature);
        let metrics = Metrics {
            batch_mean: mean,
            batch_std: std,
            batch_size: labels.len() as f64,
            batch_max_abs: max_abs(&flat),
            clean_max_abs,
            per_pixel: f64::from(u8::from(per_pixel)),
        };
        Ok(Run { artifacts, metrics })
    }

    fn judge(&self, m: &Metrics, checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        Ok(vec![input_range(m, checks.f64(knob::BATCH_PREVIEW_MAX_ABS)?)])
    }
}

/// The largest finite magnitude.
fn max_abs(values: &[f32]) -> f64 {
    values.iter().filter(|v| v.is_finite()).fold(0f64, |m, &v| m.max(v.abs() as f64))
}

/// `input_range`: the net should see values of a few units. Per-pixel
/// standardisation divides near-constant border pixels by a tiny deviation, and a
/// geometric augmentation then moves ink there: both feed values in the hundreds,
/// which training survives silently, only worse.
fn input_range(m: &Metrics, max_abs: f64) -> Verdict {
    let pass = m.batch_max_abs <= max_abs;
    let grown = m.batch_max_abs > 1.5 * m.clean_max_abs.max(1.0);
    let cause = if m.per_pixel > 0.0 {
        "images standardised per pixel (data.normalize = \"feature\") give rarely lit pixels a tiny deviation; use data.normalize = \"standard\" (per channel)"
    } else if grown {
        "the augmentation made the values larger than the clean batch's: check augment.* against the normalisation"
    } else {
        "scale the inputs (data.normalize) or raise checks.batch_preview.max_abs if the range is expected"
    };
    Verdict {
        check: "input_range".into(),
        status: if pass { VerdictStatus::Pass } else { VerdictStatus::Warn },
        value: m.batch_max_abs,
        expected: max_abs,
        message: format!(
            "largest input magnitude {:.2} in the first batch as fed ({:.2} before augmentation), at most {max_abs} expected",
            m.batch_max_abs, m.clean_max_abs
        ),
        hint: (!pass).then(|| cause.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(batch_max_abs: f64, clean_max_abs: f64, per_pixel: f64) -> Metrics {
        Metrics { batch_max_abs, clean_max_abs, per_pixel, ..Metrics::default() }
    }

    #[test]
    fn input_range_warns_on_large_inputs_and_names_the_cause() {
        assert_eq!(input_range(&metrics(2.1, 2.1, 0.0), 10.0).status, VerdictStatus::Pass);
        let per_pixel = input_range(&metrics(90.0, 90.0, 1.0), 10.0);
        assert_eq!(per_pixel.status, VerdictStatus::Warn);
        assert!(per_pixel.hint.unwrap().contains("data.normalize"));
        let augmented = input_range(&metrics(40.0, 3.0, 0.0), 10.0);
        assert_eq!(augmented.status, VerdictStatus::Warn);
        assert!(augmented.hint.unwrap().contains("augment"), "the augmentation is named");
    }
}
