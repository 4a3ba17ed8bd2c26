//! `pipelines`: the recipe's stages and their candle training code.
//!
//! Invariant: every random number comes from [`rng::Rng`]; every optimizer knob is
//! passed explicitly; stage outputs are deterministic bytes (no timestamps, no
//! absolute paths, sorted tensor names).

pub mod augment;
pub mod compare;
pub mod data;
pub mod grad_deps;
pub mod ids;
pub mod inspect;
pub mod kernels;
pub mod knobs;
pub mod models;
pub mod normalize;
pub mod plot;
pub mod render;
pub mod rng;
pub mod sources;
pub mod stages;
pub mod tensors;
pub mod train;
pub mod tune;

/// The models' old path (`crate::model::Model`), kept for code written before the zoo.
pub use models as model;

use std::collections::BTreeMap;
use std::path::Path;

use cache::{ArtifactHash, StatCache};
use workspace::{Config, ConfigError, Recipe};

/// The recipe: knob schema, stages (in recipe order) and targets. Relative data
/// paths are resolved against `base_dir`, the directory of `pipe.toml`.
pub fn recipe(base_dir: &Path) -> Recipe {
    Recipe { schema: knobs::schema(), stages: stages::stages(base_dir), targets: stages::targets() }
}

/// The dataset source named by `config`.
pub fn source(config: &Config, base_dir: &Path) -> Result<sources::Source, sources::SourceError> {
    let text = config.get(ids::knob::DATA_SOURCE.as_str()).and_then(|v| v.as_str()).unwrap_or("builtin:digits");
    sources::Source::parse(text, base_dir)
}

/// Checks across knobs that the schema's per-knob types cannot express.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let at = |key: &str| config.origins.get(key).cloned().unwrap_or_else(|| "default".into());
    if let Some(split) = config.get(ids::knob::DATA_SPLIT.as_str()).and_then(|v| v.as_float_list()) {
        if split.len() != 3 || (split.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
            return Err(ConfigError {
                location: at(ids::knob::DATA_SPLIT.as_str()),
                key: Some(ids::knob::DATA_SPLIT.to_string()),
                message: format!("data.split must be 3 fractions (train, val, test) summing to 1, got {split:?}"),
                help: Some("for example data.split = [0.6, 0.2, 0.2]".into()),
            });
        }
    }
    if let Err(error) = source(config, Path::new(".")) {
        return Err(ConfigError {
            location: at(ids::knob::DATA_SOURCE.as_str()),
            key: Some(ids::knob::DATA_SOURCE.to_string()),
            message: error.to_string(),
            help: None,
        });
    }
    Ok(())
}

/// Content fingerprints of the external inputs named by `config` (files are hashed
/// through the stat cache). The data knobs that decide how those inputs are read are
/// checked here first, with the `file:line:col` where they were set: channels other
/// than 1 or 3, and a split with no validation fraction, are config errors.
pub fn fingerprints(
    config: &Config,
    base_dir: &Path,
    stats: &StatCache,
) -> Result<BTreeMap<String, ArtifactHash>, data::DataError> {
    if let Some(channels) = config.get("data.images.channels").and_then(|v| v.as_i64()) {
        if channels != 1 && channels != 3 {
            return Err(config
                .error_at(
                    "data.images.channels",
                    format!("data.images.channels = {channels}: images are read as 1 (grayscale) or 3 (RGB) channels"),
                    Some("data.images.channels = 1 or 3".into()),
                )
                .into());
        }
    }
    if let Some(split) = config.get("data.split").and_then(|v| v.as_float_list()) {
        if split.get(1).is_some_and(|val| *val <= 0.0) {
            return Err(config
                .error_at(
                    "data.split",
                    format!("data.split = {split:?} leaves no validation examples"),
                    Some("every check that compares against validation needs some: for example data.split = [0.6, 0.2, 0.2]".into()),
                )
                .into());
        }
    }
    let source = source(config, base_dir)?;
    let human = match config.get("data.human_labels").and_then(|v| v.as_str()) {
        Some(file) if !file.is_empty() => {
            let path = base_dir.join(file);
            if !path.exists() {
                return Err(data::DataError::Source(sources::SourceError::File {
                    path,
                    message: "no such file (data.human_labels)".into(),
                }));
            }
            // A FIFO or a device is refused here ("not a regular file"), never read.
            stats.hash(&path)?
        }
        _ => ArtifactHash::of(b"no human labels"),
    };
    Ok(BTreeMap::from([
        ("dataset".to_string(), data::fingerprint(&source, stats)?),
        ("human_labels".to_string(), human),
        (
            "init_from".to_string(),
            models::pretrained::fingerprint(init_from_values(config).iter().map(String::as_str), base_dir, stats)?,
        ),
    ]))
}

/// Every `model.init_from` value a build may use: the config's and those that
/// `regularize.rungs` assigns (each checkpoint's hash is then in `overfit`'s key).
fn init_from_values(config: &Config) -> Vec<String> {
    let name = ids::knob::MODEL_INIT_FROM.as_str();
    let mut values: Vec<String> = config.get(name).and_then(|v| v.as_str()).map(str::to_string).into_iter().collect();
    let rungs = config.get(ids::knob::REGULARIZE_RUNGS.as_str()).and_then(|v| v.as_str_list()).unwrap_or_default();
    for rung in rungs {
        for assignment in stages::regularize::rungs::split_assignments(rung) {
            if let Some((key, value)) = assignment.split_once('=') {
                if key.trim() == name {
                    values.push(value.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    values
}

/// Devices this build can run on.
pub fn available_devices() -> Vec<&'static str> {
    let mut devices = vec!["cpu"];
    if cfg!(feature = "cuda") {
        devices.push("cuda");
    }
    if cfg!(feature = "metal") {
        devices.push("metal");
    }
    devices
}
