//! Content-addressed artifact store, action cache and run records for `pipe`.
//!
//! Invariant: this crate knows nothing about salsa, candle or the recipe. It stores
//! bytes under their blake3 hash, maps stage keys to manifests and keeps the
//! bookkeeping files of a cache directory (lock, latest outputs, runs).
//!
//! Layout of a cache directory (`.pipe/` beside `pipe.toml` by default):
//!
//! ```text
//! .pipe/
//!   lock                      exclusive lock held by a running build
//!   objects/ab/abcdef...      artifact bytes, named by their blake3 hash, read-only
//!   actions/ab/<key>.json     stage key -> manifest, written after its objects exist
//!   last/<stage>.json         key inputs of the latest build of each stage (for `pipe status`),
//!   last/<stage>.key          and their key (written after the JSON; a no-op compares keys)
//!   out/<stage>/<name>.<ext>  copies of the latest artifacts at a stable path
//!   runs/<id>.json            one record per `pipe build`
//!   stat-cache.txt            (path, size, mtime, inode) -> hash of data files and objects
//!   tree-check.txt            (inode, ctime) of the directories found free of links
//!   runs/index.jsonl          one compact line per run, for `pipe runs`
//!   quarantine/               corrupt objects and manifests moved aside
//!   queue/<key>.json          an action's full description, while it waits or runs
//!   resume/<prefix>/<step>-.. saved training states a longer run may continue from
//!   tmp/                      temp files, renamed into place when complete
//! ```

mod action;
mod digest;
mod error;
mod fs;
mod fsck;
mod gc;
mod input;
mod key;
mod lines;
mod lock;
mod out;
mod queue;
mod record;
pub mod remote;
mod resume;
mod run_index;
mod runs;
mod stat;
mod store;
mod tree;

pub use action::{ActionCache, ArtifactRef, Manifest, Metrics};
pub use digest::{ArtifactHash, StageKey};
pub use error::CacheError;
pub use fsck::{fsck, FsckReport, Problem};
pub use gc::{gc, gc_retaining, FreedAction, FreedObject, GcOptions, GcReport, DEFAULT_RETENTION};
pub use input::{check_regular, open_input, read_input, read_input_text, InputError};
pub use key::{value_text, KeyInputs, KnobName, KnobValueText};
pub use lock::CacheLock;
pub use out::{MemberRecord, OutDir, RecordedMember};
pub use queue::ActionQueue;
pub use resume::{best_state, PrefixKey, ResumeIndex, SavedState};
pub use run_index::{changed_knobs, stages_hash, RunSummary};
pub use runs::{RunRecord, RunStage, Runs};
pub use stat::{hash_file, DigestHasher, StatCache};
pub use store::Store;

use std::path::{Path, PathBuf};

/// A cache directory with its store, action cache and bookkeeping files.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    store: Store,
    actions: ActionCache,
}

impl Cache {
    /// Opens (creating if needed) the cache directory at `root`. A symlink planted
    /// where `pipe` reads or writes by name (`out/`, `quarantine/`, the lock,
    /// `runs/index.jsonl`, a shard directory, `out/diff`, ...) is refused with
    /// [`CacheError::Symlink`]: nothing is read or written through it.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache, CacheError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| CacheError::Io { path: root.clone(), source })?;
        tree::check_tree(&root)?;
        for sub in ["objects", "actions", "last", "out", "runs", "quarantine", "tmp"] {
            fs::create_dirs(&root, &root.join(sub))?;
        }
        let stats = std::sync::Arc::new(StatCache::load(&root));
        let store = Store::new(&root, stats);
        let actions = ActionCache::new(&root, store.clone());
        Ok(Cache { root, store, actions })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The same cache with a shared remote tier behind its action cache.
    pub fn with_remote(mut self, remote: Box<dyn remote::Remote>) -> Cache {
        self.actions.set_remote(std::sync::Arc::new(remote::Tier::new(remote)));
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn actions(&self) -> &ActionCache {
        &self.actions
    }

    /// Takes the exclusive cache lock, waiting for another `pipe` process if needed,
    /// then removes the temp files of processes that died writing (kill -9, a full disk).
    pub fn lock(&self) -> Result<CacheLock, CacheError> {
        let lock = CacheLock::acquire(&self.root, &self.root.join("lock"))?;
        let removed = fs::sweep_dead_temps(&self.root);
        if removed > 0 {
            tracing::info!(removed, "removed temp files left by dead processes");
        }
        Ok(lock)
    }

    pub fn out(&self) -> OutDir {
        OutDir::new(&self.root, self.store.clone())
    }

    /// File hashes remembered by stat (dataset files and verified objects).
    pub fn stats(&self) -> &StatCache {
        self.store.stats()
    }

    /// Saves what was learned about file hashes; call at the end of a command.
    pub fn save_stats(&self) -> Result<(), CacheError> {
        self.store.stats().save()
    }

    /// Saved training states by prefix key (see [`ResumeIndex`]).
    pub fn resume(&self) -> ResumeIndex {
        ResumeIndex::new(&self.root)
    }

    pub fn runs(&self) -> Runs {
        Runs::new(&self.root)
    }

    /// Actions described for another process to execute.
    pub fn queue(&self) -> ActionQueue {
        ActionQueue::new(&self.root)
    }

    /// Writes `bytes` atomically to `relative` inside the cache (`out/diff/x.svg`,
    /// `report/index.html`), never through a symlink, and returns the full path. For
    /// files the CLI writes beside the store.
    pub fn write_file(&self, relative: &Path, bytes: &[u8]) -> Result<PathBuf, CacheError> {
        let path = self.root.join(relative);
        fs::write_atomic(&self.root, &path, bytes)?;
        Ok(path)
    }

    /// Creates `relative` (e.g. `tmp/verify-<pid>`) as a real directory inside the cache,
    /// refusing symlinks on the way, and returns its path.
    pub fn create_dir(&self, relative: &Path) -> Result<PathBuf, CacheError> {
        let path = self.root.join(relative);
        fs::create_dirs(&self.root, &path)?;
        Ok(path)
    }
}

/// Writes `bytes` to `path` (inside the cache `root`) atomically; see [`fs::write_atomic`].
pub(crate) fn write_atomic(root: &Path, path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    fs::write_atomic(root, path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_files_are_written_inside_the_cache_only() {
        let root = store::tests::test_dir("write-file");
        let cache = Cache::open(&root).unwrap();
        let path = cache.write_file(Path::new("out/diff/overfit.curves.svg"), b"<svg/>").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"<svg/>");
        let outside = root.with_extension("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::remove_dir_all(root.join("out/diff")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out/diff")).unwrap();
        let err = cache.write_file(Path::new("out/diff/overfit.curves.svg"), b"<svg/>").unwrap_err();
        assert!(err.to_string().contains("refusing to follow the symlink"), "{err}");
        assert!(cache.write_file(Path::new("../escape.txt"), b"x").is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        std::fs::remove_dir_all(&outside).ok();
        std::fs::remove_dir_all(&root).ok();
    }
}
