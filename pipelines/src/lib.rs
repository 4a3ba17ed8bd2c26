//! `pipelines`: the recipe's stages and their candle training code.
//!
//! Invariant: every random number comes from [`rng::Rng`]; every optimizer knob is
//! passed explicitly; stage outputs are deterministic bytes (no timestamps, no
//! absolute paths, sorted tensor names).

pub mod compare;
pub mod data;
pub mod knobs;
pub mod model;
pub mod plot;
pub mod rng;
pub mod stages;
pub mod tensors;
pub mod train;

use std::collections::BTreeMap;

use cache::ArtifactHash;
use workspace::{Config, ConfigError, Recipe};

/// The recipe: knob schema, stages, targets and the candle executor.
pub fn recipe() -> Recipe {
    Recipe {
        schema: knobs::schema(),
        stages: stages::specs(),
        targets: stages::targets(),
        executor: Box::new(stages::Stages),
    }
}

/// Checks across knobs that the schema's per-knob types cannot express.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let at = |key: &str| config.origins.get(key).cloned().unwrap_or_else(|| "default".into());
    if let Some(split) = config.get("data.split").and_then(|v| v.as_float_list()) {
        if split.len() != 3 || (split.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
            return Err(ConfigError {
                location: at("data.split"),
                key: Some("data.split".into()),
                message: format!("data.split must be 3 fractions (train, val, test) summing to 1, got {split:?}"),
                help: Some("for example data.split = [0.6, 0.2, 0.2]".into()),
            });
        }
    }
    if let Some(source) = config.get("data.source").and_then(|v| v.as_str()) {
        if let Err(error) = data::load_source(source) {
            return Err(ConfigError {
                location: at("data.source"),
                key: Some("data.source".into()),
                message: error.to_string(),
                help: None,
            });
        }
    }
    Ok(())
}

/// Content fingerprints of the external inputs named by `config`.
pub fn fingerprints(config: &Config) -> Result<BTreeMap<String, ArtifactHash>, data::DataError> {
    let source = config.get("data.source").and_then(|v| v.as_str()).unwrap_or("builtin:digits");
    Ok(BTreeMap::from([("dataset".to_string(), data::fingerprint(source)?)]))
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
