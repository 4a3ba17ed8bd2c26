//! An exclusive lock on a cache directory so two `pipe` processes never write the
//! same entries at once; the second waits, then finds the first one's results.

use std::fs::File;
use std::path::Path;

use crate::CacheError;

/// Held for the duration of a build; released on drop (or when the process dies).
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Locks `path`, the lock file inside the cache directory `root` (never through a link).
    pub fn acquire(root: &Path, path: &Path) -> Result<CacheLock, CacheError> {
        let io = |source| CacheError::Io { path: path.to_path_buf(), source };
        let file: File = crate::fs::open_lock(root, path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!(path = %path.display(), "waiting for another pipe process to release the cache lock");
                eprintln!("pipe: waiting for another pipe process using {}", path.display());
                file.lock().map_err(io)?;
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
        }
        Ok(CacheLock { _file: file })
    }
}
