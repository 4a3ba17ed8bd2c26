//! Named tensors to and from safetensors bytes, deterministically: tensors are
//! sorted by name and the metadata is one JSON string under a single key (the
//! format's metadata map is unordered, so several keys would reorder run to run).

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};
use serde::{de::DeserializeOwned, Serialize};

const META_KEY: &str = "pipe";

#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    #[error("safetensors: {0}")]
    Format(#[from] safetensors::SafeTensorError),
    #[error("tensor `{0}` is missing")]
    Missing(String),
    #[error("tensor `{name}` has dtype {found}, expected {expected}")]
    Dtype { name: String, found: String, expected: &'static str },
    #[error("metadata: {0}")]
    Meta(String),
}

enum Data {
    F32(Vec<f32>),
    U32(Vec<u32>),
}

/// A set of named tensors being written or read.
#[derive(Default)]
pub struct TensorFile {
    tensors: Vec<(String, Vec<usize>, Data)>,
    meta: Option<String>,
}

impl TensorFile {
    pub fn push_f32(&mut self, name: &str, shape: Vec<usize>, values: Vec<f32>) {
        self.tensors.push((name.to_string(), shape, Data::F32(values)));
    }

    pub fn push_u32(&mut self, name: &str, shape: Vec<usize>, values: Vec<u32>) {
        self.tensors.push((name.to_string(), shape, Data::U32(values)));
    }

    pub fn encode(&self, meta: &impl Serialize) -> Result<Vec<u8>, TensorFileError> {
        let meta = serde_json::to_string(meta).map_err(|err| TensorFileError::Meta(err.to_string()))?;
        let bytes: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, shape, data)| match data {
                Data::F32(v) => {
                    (name.clone(), shape.clone(), Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
                Data::U32(v) => {
                    (name.clone(), shape.clone(), Dtype::U32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
            })
            .collect();
        let mut views = Vec::with_capacity(bytes.len());
        for (name, shape, dtype, data) in &bytes {
            views.push((name.clone(), TensorView::new(*dtype, shape.clone(), data)?));
        }
        views.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(safetensors::serialize(views, Some(HashMap::from([(META_KEY.to_string(), meta)])))?)
    }

    pub fn decode(bytes: &[u8]) -> Result<TensorFile, TensorFileError> {
        let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes)?;
        let meta = metadata.metadata().as_ref().and_then(|map| map.get(META_KEY).cloned());
        let file = safetensors::SafeTensors::deserialize(bytes)?;
        let mut tensors = Vec::new();
        for (name, view) in file.tensors() {
            let data = match view.dtype() {
                Dtype::F32 => Data::F32(
                    view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                ),
                Dtype::U32 => Data::U32(
                    view.data().chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                ),
                other => {
                    return Err(TensorFileError::Dtype { name, found: format!("{other:?}"), expected: "F32 or U32" })
                }
            };
            tensors.push((name, view.shape().to_vec(), data));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(TensorFile { tensors, meta })
    }

    pub fn meta<T: DeserializeOwned>(&self) -> Result<T, TensorFileError> {
        let text = self.meta.as_deref().ok_or_else(|| TensorFileError::Meta("no `pipe` metadata".into()))?;
        serde_json::from_str(text).map_err(|err| TensorFileError::Meta(err.to_string()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(name, _, _)| name.as_str())
    }

    pub fn shape(&self, name: &str) -> Result<&[usize], TensorFileError> {
        self.find(name).map(|(_, shape, _)| shape.as_slice())
    }

    fn find(&self, name: &str) -> Result<&(String, Vec<usize>, Data), TensorFileError> {
        self.tensors.iter().find(|(n, _, _)| n == name).ok_or_else(|| TensorFileError::Missing(name.to_string()))
    }

    pub fn f32(&self, name: &str) -> Result<Vec<f32>, TensorFileError> {
        match self.find(name)? {
            (_, _, Data::F32(v)) => Ok(v.clone()),
            _ => Err(TensorFileError::Dtype { name: name.into(), found: "U32".into(), expected: "F32" }),
        }
    }

    pub fn u32(&self, name: &str) -> Result<Vec<u32>, TensorFileError> {
        match self.find(name)? {
            (_, _, Data::U32(v)) => Ok(v.clone()),
            _ => Err(TensorFileError::Dtype { name: name.into(), found: "F32".into(), expected: "U32" }),
        }
    }
}
