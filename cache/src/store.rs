//! The content-addressed object store: one read-only file per blake3 hash, sharded
//! by the first hex byte, written temp-then-rename so a crash never leaves a half
//! object under a valid name.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::{write_atomic, ArtifactHash, CacheError, StatCache};

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    objects: PathBuf,
    quarantine: PathBuf,
    stats: Arc<StatCache>,
    /// Shard directories found to be real directories (not links) in this process.
    shards: Arc<[AtomicBool; 256]>,
    /// `objects/`, opened once per process (never through a link): an object is
    /// looked up as `ab/<hash>` below it, two path components instead of the cache
    /// root's whole path (a no-op of a 1,000-trial tune checks 9,000 objects).
    objects_dir: Arc<OnceLock<Option<OwnedFd>>>,
}

impl Store {
    pub(crate) fn new(root: &Path, stats: Arc<StatCache>) -> Store {
        Store {
            root: root.to_path_buf(),
            objects: root.join("objects"),
            quarantine: root.join("quarantine"),
            stats,
            shards: Arc::new(std::array::from_fn(|_| AtomicBool::new(false))),
            objects_dir: Arc::default(),
        }
    }

    pub(crate) fn stats(&self) -> &StatCache {
        &self.stats
    }

    /// Where the object named `hash` lives (whether or not it exists).
    pub fn path(&self, hash: &ArtifactHash) -> PathBuf {
        let mut hex = [0u8; 64];
        crate::digest::hex_into(hash.as_bytes(), &mut hex);
        // Only ASCII hex digits were written.
        let hex = std::str::from_utf8(&hex).unwrap_or_default();
        let mut path = PathBuf::with_capacity(self.objects.as_os_str().len() + 68);
        path.push(&self.objects);
        path.push(&hex[..2]);
        path.push(hex);
        path
    }

    /// Whether the shard directory of `hash` is a real directory inside the cache
    /// (checked once per process: `Cache::open` refused a linked shard already).
    fn shard_ok(&self, hash: &ArtifactHash) -> bool {
        let checked = &self.shards[usize::from(hash.as_bytes()[0])];
        if checked.load(Ordering::Relaxed) {
            return true;
        }
        let Some(shard) = self.path(hash).parent().map(Path::to_path_buf) else { return false };
        let ok = crate::fs::guard(&self.root, &shard).is_ok()
            && std::fs::symlink_metadata(&shard).is_ok_and(|meta| meta.file_type().is_dir());
        if ok {
            checked.store(true, Ordering::Relaxed);
        }
        ok
    }

    /// Stores `bytes` and returns their hash. Storing the same bytes twice is a no-op;
    /// an existing object with wrong bytes is replaced.
    pub fn put(&self, bytes: &[u8]) -> Result<ArtifactHash, CacheError> {
        let hash = ArtifactHash::of(bytes);
        if self.verify(&hash) {
            return Ok(hash);
        }
        let path = self.path(&hash);
        if path.symlink_metadata().is_ok() {
            self.quarantine(&hash)?;
        }
        write_atomic(&self.root, &path, bytes)?;
        set_read_only(&path)?;
        self.stats.remember(&path, hash);
        Ok(hash)
    }

    /// Reads an object and checks its bytes against its name.
    pub fn get(&self, hash: &ArtifactHash) -> Result<Vec<u8>, CacheError> {
        let path = self.path(hash);
        let bytes = match crate::fs::read(&self.root, &path) {
            Ok(bytes) => bytes,
            Err(err) if crate::fs::is_not_found(&err) => return Err(CacheError::Missing { hash: hash.to_hex() }),
            Err(err) => return Err(err),
        };
        let actual = ArtifactHash::of(&bytes);
        if actual != *hash {
            self.stats.forget(&path);
            return Err(CacheError::Corrupt { hash: hash.to_hex(), actual: actual.to_hex() });
        }
        Ok(bytes)
    }

    /// True when the object exists and its bytes match its name. An object whose
    /// stat is unchanged since it was last verified is trusted without re-reading.
    pub fn verify(&self, hash: &ArtifactHash) -> bool {
        if !self.shard_ok(hash) {
            return false;
        }
        // One `lstat`: a link (or anything but a file) in the object's place is refused.
        // (A miss is looked up again by its full path: `objects/` may have been replaced.)
        match self.object_stat(hash) {
            Some(Some(now)) if self.stats.object_unchanged(hash, now) => return true,
            Some(Some(_)) => {}
            Some(None) | None => {
                let Ok(meta) = std::fs::symlink_metadata(self.path(hash)) else { return false };
                if !meta.file_type().is_file() {
                    return false;
                }
                if self.stats.object_unchanged(hash, crate::stat::stat_of(&meta)) {
                    return true;
                }
            }
        }
        let path = self.path(hash);
        let ok = crate::hash_file(&path).is_ok_and(|actual| actual == *hash);
        if ok {
            self.stats.remember(&path, *hash);
        }
        ok
    }

    /// The stat of object `hash` when it is a regular file (`Some(None)`: missing, or
    /// not a file), by `fstatat` below `objects/`; `None` when `objects/` cannot be
    /// opened (the caller falls back to the full path).
    fn object_stat(&self, hash: &ArtifactHash) -> Option<Option<crate::stat::FileStat>> {
        let dir = self.objects_dir.get_or_init(|| open_dir(&self.root, &self.objects)).as_ref()?;
        // `ab/<64 hex digits>\0`
        let mut hex = [0u8; 64];
        crate::digest::hex_into(hash.as_bytes(), &mut hex);
        let mut name = [0u8; 68];
        name[..2].copy_from_slice(&hex[..2]);
        name[2] = b'/';
        name[3..67].copy_from_slice(&hex);
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `name` is NUL-terminated, `stat` is written by the call before it is read.
        let rc = unsafe {
            libc::fstatat(dir.as_raw_fd(), name.as_ptr().cast(), stat.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW)
        };
        if rc != 0 {
            return Some(None);
        }
        // SAFETY: fstatat succeeded, so it filled `stat`.
        let stat = unsafe { stat.assume_init() };
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Some(None);
        }
        let mtime_ns = i128::from(stat.st_mtime) * 1_000_000_000 + i128::from(stat.st_mtime_nsec);
        Some(Some((stat.st_size as u64, mtime_ns, stat.st_ino)))
    }

    /// Re-reads the object and checks it, ignoring what the stat cache remembers.
    pub fn verify_deep(&self, hash: &ArtifactHash) -> bool {
        let path = self.path(hash);
        crate::fs::guard(&self.root, &path).is_ok() && crate::hash_file(&path).is_ok_and(|actual| actual == *hash)
    }

    /// Moves a (corrupt) object aside so it can be inspected and is never served.
    pub fn quarantine(&self, hash: &ArtifactHash) -> Result<(), CacheError> {
        let from = self.path(hash);
        self.stats.forget(&from);
        let to = self.quarantine.join(format!("{}.{}", hash.to_hex(), std::process::id()));
        match crate::fs::rename(&self.root, &from, &to) {
            Ok(()) => Ok(()),
            Err(err) if crate::fs::is_not_found(&err) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// `dir` (below `root`, reached without following a link) opened as a directory.
fn open_dir(root: &Path, dir: &Path) -> Option<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt as _;
    crate::fs::guard(root, dir).ok()?;
    let file = std::fs::File::options().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(dir).ok()?;
    Some(file.into())
}

fn set_read_only(path: &Path) -> Result<(), CacheError> {
    let io = |source| CacheError::Io { path: path.to_path_buf(), source };
    let mut permissions = std::fs::symlink_metadata(path).map_err(io)?.permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(path, permissions).map_err(io)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Cache;

    #[test]
    fn put_get_and_detect_corruption() {
        let dir = test_dir("store");
        let cache = Cache::open(&dir).unwrap();
        let store = cache.store();
        let hash = store.put(b"hello artifact").unwrap();
        assert_eq!(store.get(&hash).unwrap(), b"hello artifact");
        assert!(store.verify(&hash));
        let path = store.path(&hash);
        assert!(std::fs::metadata(&path).unwrap().permissions().readonly());

        // Flip a byte in place, as a disk error or a stray edit would.
        let mut permissions = std::fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        permissions.set_readonly(false);
        std::fs::set_permissions(&path, permissions).unwrap();
        std::fs::write(&path, b"hello artifacT").unwrap();
        assert!(!store.verify(&hash));
        assert!(matches!(store.get(&hash), Err(CacheError::Corrupt { .. })));

        // Putting the right bytes again repairs the object.
        assert_eq!(store.put(b"hello artifact").unwrap(), hash);
        assert_eq!(store.get(&hash).unwrap(), b"hello artifact");
        std::fs::remove_dir_all(&dir).ok();
    }

    pub(crate) fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pipe-cache-test-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        dir
    }
}
