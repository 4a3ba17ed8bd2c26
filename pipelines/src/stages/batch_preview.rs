//! `batch_preview`: the first training batch exactly as the training loop receives it
//! (same batcher, seed and purpose, and the same `augment.*` augmentation of step 0),
//! decoded to a picture, and its statistics.

use serde::{Deserialize, Serialize};
use serde_json::json;
use workspace::{Checks, ChoiceKnob, ExecError, StageSpec, Verdict, VerdictError};

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
}

impl RecipeStage for BatchPreview {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::BATCH_PREVIEW,
            version: 2,
            doc: "the first training batch exactly as the training loop receives it, decoded to pictures",
            knobs: knobs(&[&[knob::TRAIN_BATCH_SIZE, knob::TRAIN_SEED], &AUGMENT_KNOBS]),
            checks: vec![],
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
            let scale = if Normalize::parse(&data.meta.normalize) == Some(Normalize::Standard) {
                Scale { low: -3.0, high: 3.0 }
            } else {
                let (low, high) = data.meta.value_range.unwrap_or((min, max));
                Scale { low, high }
            };
            artifacts.push(("batch_preview.png".to_string(), tiles(&pictures, &data.meta.shape, scale, 8)));
        }
        Ok(Run { artifacts, metrics: Metrics { batch_mean: mean, batch_std: std, batch_size: labels.len() as f64 } })
    }

    fn judge(&self, _metrics: &Metrics, _checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        Ok(Vec::new())
    }
}
