//! `model.init_from`: start training from a checkpoint's weights ("pretrain"). The
//! knob names a safetensors file (relative to `pipe.toml`), or another pipe
//! project (its directory or its `pipe.toml`), meaning that project's latest
//! `overfit` checkpoint. Tensors are matched by name; every parameter and buffer of
//! the model must be in the file with the same shape (extra tensors are ignored).
//! The file's blake3 hash is the `init_from` input fingerprint, so it is in the key
//! of the stages that read the knob.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::{state, Model};
use crate::tensors::TensorFile;

/// Where a pipe project keeps its latest `overfit` checkpoint.
pub const OVERFIT_CHECKPOINT: &str = ".pipe/out/overfit/checkpoint.safetensors";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PretrainedError {
    #[error("model.init_from: {path}: {message}")]
    File { path: String, message: String },
    #[error("model.init_from: {path} has no tensor `{name}` (the model's `{name}` has shape {model:?})")]
    Missing { path: String, name: String, model: Vec<usize> },
    #[error(
        "model.init_from: tensor `{name}` has shape {file:?} in {path}, but the model's `{name}` has shape {model:?}"
    )]
    Shape { path: String, name: String, file: Vec<usize>, model: Vec<usize> },
}

/// The checkpoint file `text` names, or `None` for an empty knob (fresh init).
pub fn resolve(base_dir: &Path, text: &str) -> Option<PathBuf> {
    if text.is_empty() {
        return None;
    }
    let path = base_dir.join(text);
    Some(if path.is_dir() {
        path.join(OVERFIT_CHECKPOINT)
    } else if path.file_name().is_some_and(|name| name == "pipe.toml") {
        path.parent().unwrap_or(Path::new(".")).join(OVERFIT_CHECKPOINT)
    } else {
        path
    })
}

/// Overwrites every parameter and buffer of `model` with the tensor of the same
/// name in the safetensors `bytes` (read from `path`, named in errors).
pub fn load_into(model: &dyn Model, bytes: &[u8], path: &Path) -> Result<(), PretrainedError> {
    let shown = path.display().to_string();
    let file_error = |message: String| PretrainedError::File { path: shown.clone(), message };
    let file = TensorFile::decode(bytes).map_err(|error| file_error(error.to_string()))?;
    let names: BTreeSet<&str> = file.names().collect();
    // Check every name and shape before touching a weight.
    let wanted = state(model);
    for (name, tensor) in &wanted {
        let model_shape = tensor.dims().to_vec();
        if !names.contains(name.as_str()) {
            return Err(PretrainedError::Missing { path: shown, name: name.clone(), model: model_shape });
        }
        let file_shape = file.shape(name).map_err(|error| file_error(error.to_string()))?;
        if file_shape != model_shape.as_slice() {
            let file_shape = file_shape.to_vec();
            return Err(PretrainedError::Shape {
                path: shown,
                name: name.clone(),
                file: file_shape,
                model: model_shape,
            });
        }
    }
    let tensors: std::collections::HashMap<String, Tensor> = wanted
        .iter()
        .map(|(name, like)| {
            let values = file.f32(name).map_err(|error| file_error(error.to_string()))?;
            let tensor = Tensor::from_vec(values, like.dims(), like.device())
                .map_err(|error| file_error(format!("`{name}`: {error}")))?;
            Ok((name.clone(), tensor))
        })
        .collect::<Result<_, PretrainedError>>()?;
    super::load_state(model, &tensors).map_err(|error| file_error(error.to_string()))
}

/// The content fingerprint of the checkpoints named by `texts` (each a
/// `model.init_from` value): their paths and blake3 hashes, through the stat cache.
/// A named file that does not exist is an error.
pub fn fingerprint<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    base_dir: &Path,
    stats: &cache::StatCache,
) -> Result<cache::ArtifactHash, crate::data::DataError> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"pipe-init-from-v1\n");
    let texts: BTreeSet<&str> = texts.into_iter().filter(|text| !text.is_empty()).collect();
    for text in texts {
        let Some(path) = resolve(base_dir, text) else { continue };
        if !path.is_file() {
            return Err(crate::data::DataError::Source(crate::sources::SourceError::File {
                path,
                message: "no such checkpoint (model.init_from)".into(),
            }));
        }
        let hash = stats.hash(&path)?;
        hasher.update(format!("{text}={}\n", hash.to_hex()).as_bytes());
    }
    Ok(cache::ArtifactHash::from_bytes(*hasher.finalize().as_bytes()))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::models::{Activation, Init, Mlp, MlpSpec};

    fn mlp(hidden: usize, seed: u64) -> Mlp {
        let spec = MlpSpec { n_in: 4, hidden: vec![hidden], n_out: 3, activation: Activation::Relu };
        Mlp::new(&spec, &Init::Naive, seed, &Device::Cpu).unwrap()
    }

    fn checkpoint(model: &dyn Model, skip: &str) -> Vec<u8> {
        let mut file = TensorFile::default();
        for (name, tensor) in state(model).into_iter().filter(|(name, _)| name != skip) {
            file.push_f32(&name, tensor.dims().to_vec(), tensor.flatten_all().unwrap().to_vec1().unwrap());
        }
        file.encode(&serde_json::json!({})).unwrap()
    }

    fn values(model: &dyn Model) -> Vec<Vec<f32>> {
        state(model).iter().map(|(_, t)| t.flatten_all().unwrap().to_vec1().unwrap()).collect()
    }

    #[test]
    fn loads_by_name_and_names_the_tensor_on_mismatch() {
        let (source, target) = (mlp(5, 1), mlp(5, 2));
        assert_ne!(values(&source), values(&target));
        load_into(&target, &checkpoint(&source, ""), Path::new("a.safetensors")).unwrap();
        assert_eq!(values(&source), values(&target));

        let wider = mlp(6, 3);
        let before = values(&wider);
        let error = load_into(&wider, &checkpoint(&source, ""), Path::new("a.safetensors")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "model.init_from: tensor `fc1.weight` has shape [5, 4] in a.safetensors, but the model's `fc1.weight` has shape [6, 4]"
        );
        assert_eq!(values(&wider), before, "nothing was loaded");
        let error = load_into(&target, &checkpoint(&source, "fc2.weight"), Path::new("a.safetensors")).unwrap_err();
        assert!(
            matches!(&error, PretrainedError::Missing { name, model, .. } if name == "fc2.weight" && model == &[3, 5])
        );
    }

    #[test]
    fn a_project_means_its_overfit_checkpoint() {
        let dir = std::env::temp_dir().join(format!("pipe-pretrained-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(resolve(&dir, ""), None);
        assert_eq!(resolve(Path::new("/"), dir.to_str().unwrap()), Some(dir.join(OVERFIT_CHECKPOINT)));
        assert_eq!(resolve(&dir, "other/pipe.toml"), Some(dir.join("other").join(OVERFIT_CHECKPOINT)));
        assert_eq!(resolve(&dir, "w.safetensors"), Some(dir.join("w.safetensors")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
