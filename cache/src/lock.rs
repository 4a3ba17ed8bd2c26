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
    pub fn acquire(path: &Path) -> Result<CacheLock, CacheError> {
        let io = |source| CacheError::Io { path: path.to_path_buf(), source };
        let file = File::options().create(true).truncate(false).write(true).open(path).map_err(io)?;
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
