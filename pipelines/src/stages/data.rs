//! `data`: load `data.source`, seeded stratified split, normalise with training
//! statistics only; writes `dataset.safetensors`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use workspace::{Checks, ExecError, StageSpec, Verdict, VerdictError};

use super::common::Cx;
use super::{RecipeStage, Run};
use crate::data::{downscale, prepare};
use crate::ids::{knob, stage};
use crate::sources::{Source, SourceOptions};

pub use crate::data::Normalize;

pub struct Data {
    /// The directory of `pipe.toml`: relative data paths start here.
    pub base_dir: PathBuf,
}

/// Split sizes and class counts.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub n_features: f64,
    pub n_classes: f64,
    /// `n_{split}` and `n_{split}_class_{c}` for each split and class.
    #[serde(flatten)]
    pub counts: BTreeMap<String, f64>,
}

impl RecipeStage for Data {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::DATA,
            version: 2,
            doc: "load, stratified split, normalise with training statistics",
            knobs: vec![
                knob::DATA_SOURCE,
                knob::DATA_SEED,
                knob::DATA_SPLIT,
                knob::DATA_NORMALIZE,
                knob::DATA_CSV_LABEL,
                knob::DATA_CSV_HEADER,
                knob::DATA_IMAGES_SIZE,
                knob::DATA_IMAGES_CHANNELS,
                knob::DATA_DOWNSCALE,
            ],
            checks: vec![],
            upstream: vec![],
            fingerprints: vec!["dataset"],
            device_dependent: false,
        }
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let source = cx.text(knob::DATA_SOURCE)?;
        let parsed = Source::parse(source, &self.base_dir).map_err(|error| ExecError::BadInput(error.to_string()))?;
        let options = SourceOptions {
            csv_label: cx.text(knob::DATA_CSV_LABEL)?.to_string(),
            csv_header: cx.bool(knob::DATA_CSV_HEADER)?,
            image_size: match *cx.int_list(knob::DATA_IMAGES_SIZE)? {
                [height, width] => (height as usize, width as usize),
                [side] => (side as usize, side as usize),
                _ => return Err(ExecError::BadInput("data.images.size must be [height, width]".into())),
            },
            image_channels: cx.count(knob::DATA_IMAGES_CHANNELS)?,
        };
        let fractions = cx.float_list(knob::DATA_SPLIT)?;
        let seed = cx.int(knob::DATA_SEED)? as u64;
        let normalize: Normalize = cx.choice(knob::DATA_NORMALIZE)?;
        let raw = parsed.load(&options).map_err(|error| ExecError::BadInput(error.to_string()))?;
        let raw = downscale(raw, cx.count(knob::DATA_DOWNSCALE)?).map_err(|e| ExecError::BadInput(e.to_string()))?;
        let prepared = prepare(&raw, source, &fractions, seed, normalize).map_err(|error| {
            // Too few examples for the split, no features: the data is wrong (exit 2).
            if error.is_bad_input() {
                ExecError::BadInput(error.to_string())
            } else {
                ExecError::Failed(error.to_string())
            }
        })?;
        let bytes = prepared.encode().map_err(|error| ExecError::Failed(error.to_string()))?;
        let mut counts = prepared.metrics();
        let mut take = |name: &str| {
            counts.remove(name).ok_or_else(|| ExecError::Failed(format!("the dataset has no metric `{name}`")))
        };
        let (n_features, n_classes) = (take("n_features")?, take("n_classes")?);
        Ok(Run {
            artifacts: vec![("dataset.safetensors".into(), bytes)],
            metrics: Metrics { n_features, n_classes, counts },
        })
    }

    fn judge(&self, _metrics: &Metrics, _checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        Ok(Vec::new())
    }
}
