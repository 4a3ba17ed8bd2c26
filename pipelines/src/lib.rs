//! `pipelines`: the recipe's stages and their candle training code.
//!
//! Invariant: every random number comes from [`rng::Rng`]; every optimizer knob is
//! passed explicitly; stage outputs are deterministic bytes (no timestamps, no
//! absolute paths, sorted tensor names).

pub mod compare;
pub mod data;
pub mod grad_deps;
pub mod ids;
pub mod inspect;
pub mod knobs;
pub mod models;
pub mod plot;
pub mod render;
pub mod rng;
pub mod sources;
pub mod stages;
pub mod tensors;
pub mod train;

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
/// through the stat cache).
pub fn fingerprints(
    config: &Config,
    base_dir: &Path,
    stats: &StatCache,
) -> Result<BTreeMap<String, ArtifactHash>, data::DataError> {
    let source = source(config, base_dir)?;
    let human = match config.get("data.human_labels").and_then(|v| v.as_str()) {
        Some(file) if !file.is_empty() => {
            let path = base_dir.join(file);
            if !path.is_file() {
                return Err(data::DataError::Source(sources::SourceError::File {
                    path,
                    message: "no such file (data.human_labels)".into(),
                }));
            }
            stats.hash(&path)?
        }
        _ => ArtifactHash::of(b"no human labels"),
    };
    Ok(BTreeMap::from([
        ("dataset".to_string(), data::fingerprint(&source, stats)?),
        ("human_labels".to_string(), human),
    ]))
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
