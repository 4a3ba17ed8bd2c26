//! Actions waiting to run: `queue/<key>.json`, the full description of one stage
//! execution (what a `pipe exec-action KEY` process, or a cluster node, needs),
//! written before it runs and removed once its result is in the action cache.
//! The bytes are opaque here: this crate knows nothing about stages.

use std::path::{Path, PathBuf};

use crate::{write_atomic, CacheError, StageKey};

#[derive(Debug, Clone)]
pub struct ActionQueue {
    dir: PathBuf,
    tmp: PathBuf,
}

impl ActionQueue {
    pub(crate) fn new(root: &Path) -> ActionQueue {
        ActionQueue { dir: root.join("queue"), tmp: root.join("tmp") }
    }

    pub fn path(&self, key: &StageKey) -> PathBuf {
        self.dir.join(format!("{}.json", key.to_hex()))
    }

    /// Stores the description of the action under `key` (atomically).
    pub fn put(&self, key: &StageKey, bytes: &[u8]) -> Result<(), CacheError> {
        write_atomic(&self.tmp, &self.path(key), bytes)
    }

    /// The description stored under `key`.
    pub fn get(&self, key: &StageKey) -> Result<Vec<u8>, CacheError> {
        let path = self.path(key);
        std::fs::read(&path).map_err(|source| CacheError::Io { path, source })
    }

    /// Forgets the action (its result is in the action cache, or it was abandoned).
    pub fn remove(&self, key: &StageKey) {
        std::fs::remove_file(self.path(key)).ok();
    }
}
