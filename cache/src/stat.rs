//! A stat cache: (path, size, mtime, inode) -> content hash, so a no-op build does
//! not re-read gigabytes. A file whose stat changed is re-hashed once; if its bytes
//! are unchanged its hash (and so every key built on it) is too.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::{write_atomic, ArtifactHash, CacheError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    hash: ArtifactHash,
}

/// File content hashes remembered by stat. Saved to `stat-cache.txt` in the cache, one
/// line per file (`size mtime_ns inode hash path`): a cache of a 1,000-trial tune
/// remembers ~10,000 objects, and a no-op build reads it, so the format is one
/// `split` per line rather than JSON (2 MB of which took ~40 ms to parse).
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    root: PathBuf,
    /// By the absolute path's bytes (a byte order: comparing `Path`s component by
    /// component cost a fifth of a no-op build with many cached objects).
    entries: Mutex<BTreeMap<OsString, Entry>>,
    dirty: Mutex<bool>,
}

fn stat(path: &Path) -> std::io::Result<(u64, i128, u64)> {
    let meta = std::fs::metadata(path)?;
    let mtime_ns = match meta.modified()?.duration_since(std::time::UNIX_EPOCH) {
        Ok(elapsed) => elapsed.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok((meta.len(), mtime_ns, inode))
}

/// blake3 of a regular file's bytes, streamed. A FIFO or a device is refused
/// ([`crate::InputError::NotRegular`]) instead of blocking or reading forever.
pub fn hash_file(path: &Path) -> Result<ArtifactHash, CacheError> {
    let io = |source| CacheError::Io { path: path.to_path_buf(), source };
    crate::check_regular(path)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap(path).map_err(io)?;
    Ok(ArtifactHash::from_bytes(*hasher.finalize().as_bytes()))
}

impl StatCache {
    pub(crate) fn load(root: &Path) -> StatCache {
        let path = root.join("stat-cache.txt");
        let entries = crate::fs::read(root, &path).map(|bytes| parse(&bytes)).unwrap_or_default();
        StatCache { path, root: root.to_path_buf(), entries: Mutex::new(entries), dirty: Mutex::new(false) }
    }

    /// The content hash of `path`, re-reading the file only when its stat changed.
    pub fn hash(&self, path: &Path) -> Result<ArtifactHash, CacheError> {
        crate::check_regular(path)?;
        let (size, mtime_ns, inode) =
            stat(path).map_err(|source| CacheError::Io { path: path.to_path_buf(), source })?;
        let key = key_of(path);
        if let Some(entry) = self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if entry.size == size && entry.mtime_ns == mtime_ns && entry.inode == inode {
                return Ok(entry.hash);
            }
        }
        tracing::debug!(path = %path.display(), bytes = size, "hashing file");
        let hash = hash_file(path)?;
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).insert(key, Entry { size, mtime_ns, inode, hash });
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
        Ok(hash)
    }

    /// Whether `path` still has the stat recorded when it was last hashed to `hash`.
    pub fn unchanged(&self, path: &Path, hash: &ArtifactHash) -> bool {
        let Ok((size, mtime_ns, inode)) = stat(path) else { return false };
        let key = key_of(path);
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(&key).is_some_and(|entry| {
            entry.size == size && entry.mtime_ns == mtime_ns && entry.inode == inode && entry.hash == *hash
        })
    }

    /// Records that `path` was just verified (or written) with content `hash`.
    pub fn remember(&self, path: &Path, hash: ArtifactHash) {
        if let Ok((size, mtime_ns, inode)) = stat(path) {
            let key = key_of(path);
            self.entries.lock().unwrap_or_else(|e| e.into_inner()).insert(key, Entry { size, mtime_ns, inode, hash });
            *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
        }
    }

    /// Forgets `path` (after it was found corrupt or removed).
    pub fn forget(&self, path: &Path) {
        let key = key_of(path);
        if self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(&key).is_some() {
            *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
        }
    }

    /// Writes the cache back if anything changed.
    pub fn save(&self) -> Result<(), CacheError> {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if !*dirty {
            return Ok(());
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        write_atomic(&self.root, &self.path, &format(&entries))?;
        // The JSON file of earlier versions, now unread.
        crate::fs::remove_file(&self.root, &self.root.join("stat-cache.json")).ok();
        *dirty = false;
        Ok(())
    }
}

/// The key of `path`: its absolute form.
fn key_of(path: &Path) -> OsString {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).into_os_string()
}

/// One line per entry: `size mtime_ns inode hash path` (the path last, as bytes; a
/// path holding a newline is not remembered: it is re-hashed instead).
fn format(entries: &BTreeMap<OsString, Entry>) -> Vec<u8> {
    use std::io::Write as _;
    use std::os::unix::ffi::OsStrExt as _;
    let mut bytes = Vec::with_capacity(entries.len() * 160);
    for (path, entry) in entries {
        let path = path.as_bytes();
        if path.contains(&b'\n') {
            continue;
        }
        // Writing into a Vec cannot fail.
        let _ = write!(bytes, "{} {} {} {} ", entry.size, entry.mtime_ns, entry.inode, entry.hash);
        bytes.extend_from_slice(path);
        bytes.push(b'\n');
    }
    bytes
}

/// The entries of [`format`]'s bytes; a line that does not parse is skipped (its file
/// is re-hashed when next asked for).
fn parse(bytes: &[u8]) -> BTreeMap<OsString, Entry> {
    use std::os::unix::ffi::OsStrExt as _;
    let mut entries = BTreeMap::new();
    for line in bytes.split(|b| *b == b'\n').filter(|line| !line.is_empty()) {
        let mut fields = line.splitn(5, |b| *b == b' ');
        let mut text = || fields.next().and_then(|field| std::str::from_utf8(field).ok());
        let parsed = (|| {
            let size = text()?.parse().ok()?;
            let mtime_ns = text()?.parse().ok()?;
            let inode = text()?.parse().ok()?;
            let hash = text()?.parse().ok()?;
            Some(Entry { size, mtime_ns, inode, hash })
        })();
        if let (Some(entry), Some(path)) = (parsed, fields.next()) {
            entries.insert(std::ffi::OsStr::from_bytes(path).to_os_string(), entry);
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rehashes_only_after_a_stat_change() {
        let dir = crate::store::tests::test_dir("stat");
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let file = dir.join("data.bin");
        std::fs::write(&file, b"abc").unwrap();
        let cache = StatCache::load(&dir);
        let hash = cache.hash(&file).unwrap();
        assert_eq!(hash, ArtifactHash::of(b"abc"));
        assert!(cache.unchanged(&file, &hash));
        cache.save().unwrap();
        let reloaded = StatCache::load(&dir);
        assert!(reloaded.unchanged(&file, &hash));
        // Same size, new bytes, new mtime: re-hashed.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&file, b"abd").unwrap();
        assert!(!reloaded.unchanged(&file, &hash));
        assert_eq!(reloaded.hash(&file).unwrap(), ArtifactHash::of(b"abd"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
