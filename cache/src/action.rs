//! The action cache: stage key -> manifest (artifact hashes, metrics, timings).
//!
//! A manifest is written atomically and only after every object it names is in the
//! store, so a manifest that exists always points at complete objects. On lookup
//! each object is re-verified; a missing or corrupt one turns the hit into a miss
//! (the stage re-runs) and is moved to `quarantine/`. Failures are never stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{write_atomic, ArtifactHash, CacheError, KeyInputs, StageKey, Store};

/// Named scalar results of a stage (`train_loss`, `n_train`, ...).
pub type Metrics = BTreeMap<String, f64>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub hash: ArtifactHash,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub stage: String,
    pub key: StageKey,
    pub inputs: KeyInputs,
    /// File name (with its natural extension) -> stored object.
    pub artifacts: BTreeMap<String, ArtifactRef>,
    pub metrics: Metrics,
    /// Seconds the stage took when it ran.
    pub secs: f64,
}

#[derive(Debug, Clone)]
pub struct ActionCache {
    actions: PathBuf,
    last: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    store: Store,
}

impl ActionCache {
    pub(crate) fn new(root: &Path, store: Store) -> ActionCache {
        ActionCache {
            actions: root.join("actions"),
            last: root.join("last"),
            tmp: root.join("tmp"),
            quarantine: root.join("quarantine"),
            store,
        }
    }

    pub(crate) fn path(&self, key: &StageKey) -> PathBuf {
        let hex = key.to_hex();
        self.actions.join(&hex[..2]).join(format!("{hex}.json"))
    }

    /// The manifest stored under `key`, if it and every object it names are intact.
    pub fn get(&self, key: &StageKey) -> Option<Manifest> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        let manifest: Manifest = match serde_json::from_slice(&bytes) {
            Ok(manifest) => manifest,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "unreadable action entry, re-running its stage");
                self.quarantine_file(&path);
                return None;
            }
        };
        if manifest.key != *key || manifest.inputs.key() != *key {
            tracing::warn!(path = %path.display(), "action entry does not match its key, re-running its stage");
            self.quarantine_file(&path);
            return None;
        }
        for (name, artifact) in &manifest.artifacts {
            if !self.store.verify(&artifact.hash) {
                tracing::warn!(stage = %manifest.stage, artifact = %name, hash = %artifact.hash.short(),
                    "cached artifact is missing or corrupt, re-running its stage");
                self.store.quarantine(&artifact.hash).ok();
                return None;
            }
        }
        Some(manifest)
    }

    /// The manifest stored under `key` without checking its objects and without moving
    /// anything aside: for readers that must not change the cache (`pipe diff`, `pipe
    /// verify`, `pipe gc`). A build uses [`ActionCache::get`].
    pub fn peek(&self, key: &StageKey) -> Option<Manifest> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        let manifest: Manifest = serde_json::from_slice(&bytes).ok()?;
        (manifest.key == *key && manifest.inputs.key() == *key).then_some(manifest)
    }

    /// Records a successful stage execution. Its objects must already be stored.
    pub fn put(&self, manifest: &Manifest) -> Result<(), CacheError> {
        for artifact in manifest.artifacts.values() {
            if !self.store.path(&artifact.hash).exists() {
                return Err(CacheError::Missing { hash: artifact.hash.to_hex() });
            }
        }
        let bytes = serde_json::to_vec_pretty(manifest)
            .map_err(|source| CacheError::Json { path: self.path(&manifest.key), source })?;
        write_atomic(&self.tmp, &self.path(&manifest.key), &bytes)?;
        self.set_last(manifest)
    }

    /// Remembers `manifest` as the latest build of its stage (used by `pipe status`).
    pub fn set_last(&self, manifest: &Manifest) -> Result<(), CacheError> {
        let path = self.last.join(format!("{}.json", manifest.stage));
        let bytes = serde_json::to_vec_pretty(&manifest.inputs)
            .map_err(|source| CacheError::Json { path: path.clone(), source })?;
        write_atomic(&self.tmp, &path, &bytes)
    }

    /// Key inputs of the latest build of `stage`, if any.
    pub fn last(&self, stage: &str) -> Option<KeyInputs> {
        let bytes = std::fs::read(self.last.join(format!("{stage}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn quarantine_file(&self, path: &Path) {
        if let Some(name) = path.file_name() {
            std::fs::rename(path, self.quarantine.join(name)).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cache;

    fn manifest(cache: &Cache, payload: &[u8]) -> Manifest {
        let hash = cache.store().put(payload).unwrap();
        let inputs = KeyInputs {
            stage: "data".into(),
            stage_version: 1,
            tool_version: "test".into(),
            knobs: BTreeMap::from([("data.seed".into(), "int:0".into())]),
            upstream: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
            device: "cpu".into(),
            dtype: "f32".into(),
        };
        Manifest {
            stage: "data".into(),
            key: inputs.key(),
            inputs,
            artifacts: BTreeMap::from([(
                "dataset.safetensors".into(),
                ArtifactRef { hash, bytes: payload.len() as u64 },
            )]),
            metrics: Metrics::from([("n_train".into(), 3.0)]),
            secs: 0.5,
        }
    }

    #[test]
    fn hit_after_put_and_miss_after_corruption() {
        let dir = crate::store::tests::test_dir("action");
        let cache = Cache::open(&dir).unwrap();
        let manifest = manifest(&cache, b"tensor bytes");
        assert!(cache.actions().get(&manifest.key).is_none());
        cache.actions().put(&manifest).unwrap();
        assert_eq!(cache.actions().get(&manifest.key), Some(manifest.clone()));
        assert_eq!(cache.actions().last("data"), Some(manifest.inputs.clone()));

        let object = cache.store().path(&manifest.artifacts["dataset.safetensors"].hash);
        std::fs::remove_file(&object).unwrap();
        assert!(cache.actions().get(&manifest.key).is_none(), "missing object is a miss");

        // A garbage manifest is a miss, not a crash.
        let manifest = self::manifest(&cache, b"tensor bytes");
        cache.actions().put(&manifest).unwrap();
        let path = cache.actions().path(&manifest.key);
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(cache.actions().get(&manifest.key).is_none());
        std::fs::remove_dir_all(&dir).ok();
    }
}
