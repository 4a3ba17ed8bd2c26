//! Actions waiting to run: `queue/<key>.json`, the full description of one stage
//! execution (what a `pipe exec-action KEY` process, or a cluster node, needs),
//! written before it runs and removed once its result is in the action cache.
//! The bytes are opaque here: this crate knows nothing about stages. Like every path
//! below the cache root, nothing here follows a symlink.

use std::path::{Path, PathBuf};

use crate::{fs, CacheError, StageKey};

#[derive(Debug, Clone)]
pub struct ActionQueue {
    root: PathBuf,
    dir: PathBuf,
}

impl ActionQueue {
    pub(crate) fn new(root: &Path) -> ActionQueue {
        ActionQueue { root: root.to_path_buf(), dir: root.join("queue") }
    }

    pub fn path(&self, key: &StageKey) -> PathBuf {
        self.dir.join(format!("{}.json", key.to_hex()))
    }

    /// Stores the description of the action under `key` (atomically).
    pub fn put(&self, key: &StageKey, bytes: &[u8]) -> Result<(), CacheError> {
        fs::write_atomic(&self.root, &self.path(key), bytes)
    }

    /// The description stored under `key`.
    pub fn get(&self, key: &StageKey) -> Result<Vec<u8>, CacheError> {
        fs::read(&self.root, &self.path(key))
    }

    /// Forgets the action (its result is in the action cache, or it was abandoned).
    pub fn remove(&self, key: &StageKey) {
        fs::remove_file(&self.root, &self.path(key)).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_actions_round_trip_and_a_linked_queue_is_refused() {
        let root = crate::store::tests::test_dir("queue");
        let cache = crate::Cache::open(&root).unwrap();
        let key = StageKey::from_bytes([7; 32]);
        cache.queue().put(&key, b"{\"action\":1}").unwrap();
        assert_eq!(cache.queue().get(&key).unwrap(), b"{\"action\":1}");
        cache.queue().remove(&key);
        assert!(cache.queue().get(&key).is_err());
        let outside = root.with_extension("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::remove_dir_all(root.join("queue")).ok();
        std::os::unix::fs::symlink(&outside, root.join("queue")).unwrap();
        assert!(cache.queue().put(&key, b"x").is_err(), "never written through a link");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        std::fs::remove_dir_all(&outside).ok();
        std::fs::remove_dir_all(&root).ok();
    }
}
