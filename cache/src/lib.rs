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
//!   last/<stage>.json         key inputs of the latest build of each stage (for `pipe status`)
//!   out/<stage>/<name>.<ext>  copies of the latest artifacts at a stable path
//!   runs/<id>.json            one record per `pipe build`
//!   stat-cache.json           (path, size, mtime, inode) -> hash of data files and objects
//!   runs/index.jsonl          one compact line per run, for `pipe runs`
//!   quarantine/               corrupt objects and manifests moved aside
//!   queue/<key>.json          an action's full description, while it waits or runs
//!   tmp/                      temp files, renamed into place when complete
//! ```

mod action;
mod digest;
mod error;
mod fsck;
mod gc;
mod key;
mod lock;
mod out;
mod queue;
mod run_index;
mod runs;
mod stat;
mod store;

pub use action::{ActionCache, ArtifactRef, Manifest, Metrics};
pub use digest::{ArtifactHash, StageKey};
pub use error::CacheError;
pub use fsck::{fsck, FsckReport, Problem};
pub use gc::{gc, FreedAction, FreedObject, GcOptions, GcReport};
pub use key::{value_text, KeyInputs, KnobValueText};
pub use lock::CacheLock;
pub use out::OutDir;
pub use queue::ActionQueue;
pub use run_index::{changed_knobs, RunSummary};
pub use runs::{RunRecord, RunStage, Runs};
pub use stat::{hash_file, StatCache};
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
    /// Opens (creating if needed) the cache directory at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache, CacheError> {
        let root = root.into();
        for sub in ["objects", "actions", "last", "out", "runs", "quarantine", "tmp"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(|source| CacheError::Io { path: dir, source })?;
        }
        let stats = std::sync::Arc::new(StatCache::load(&root));
        let store = Store::new(&root, stats);
        let actions = ActionCache::new(&root, store.clone());
        Ok(Cache { root, store, actions })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn actions(&self) -> &ActionCache {
        &self.actions
    }

    /// Takes the exclusive cache lock, waiting for another `pipe` process if needed.
    pub fn lock(&self) -> Result<CacheLock, CacheError> {
        CacheLock::acquire(&self.root.join("lock"))
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

    pub fn runs(&self) -> Runs {
        Runs::new(&self.root)
    }

    /// Actions described for another process to execute.
    pub fn queue(&self) -> ActionQueue {
        ActionQueue::new(&self.root)
    }
}

/// Writes `bytes` to `path` atomically: a temp file in `tmp_dir`, fsync'd, then renamed.
pub(crate) fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    use std::io::Write;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CacheError::Io { path, source }
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = tmp_dir.join(format!("{}-{n}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}
