//! A stat cache: (path, size, mtime, inode) -> content hash, so a no-op build does
//! not re-read gigabytes. A file whose stat changed is re-hashed once; if its bytes
//! are unchanged its hash (and so every key built on it) is too.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::{write_atomic, ArtifactHash, CacheError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    hash: ArtifactHash,
}

/// (size, mtime in ns, inode) of a file.
pub(crate) type FileStat = (u64, i128, u64);

/// A store object's name is its blake3 hash: already uniformly spread, so its first
/// eight bytes are the hash-map hash (no SipHash over 32 bytes per lookup).
#[derive(Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // A digest's first eight bytes are as spread as all of it: one word per write
        // (a no-op looks up 18,000 object hashes), the rest only for shorter input.
        let mut word = [0u8; 8];
        let take = bytes.len().min(8);
        word[..take].copy_from_slice(&bytes[..take]);
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
    }
}

pub(crate) type DigestMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<DigestHasher>>;

/// A stat cache: (path, size, mtime, inode) -> content hash, so a no-op build does
/// not re-read gigabytes. Saved to `stat-cache.txt` in the cache, one line per file
/// (`size mtime_ns inode hash path`): a cache of a 1,000-trial tune remembers ~10,000
/// objects, and a no-op build reads it, so the format is one `split` per line rather
/// than JSON (2 MB of which took ~40 ms to parse). Store objects (the lines whose path
/// is `<cache>/objects/ab/<its own hash>`) are kept in memory by their hash, so the
/// store asks about one without building or comparing its path.
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    root: PathBuf,
    /// `<absolute cache root>/objects/`, as bytes.
    objects: Vec<u8>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Other files, by the absolute path's bytes (a byte order: comparing `Path`s
    /// component by component cost a fifth of a no-op build with many objects).
    files: BTreeMap<OsString, Entry>,
    /// Store objects whose bytes were verified: hash -> their stat then.
    verified: DigestMap<ArtifactHash, FileStat>,
    dirty: bool,
}

fn stat(path: &Path) -> std::io::Result<FileStat> {
    Ok(stat_of(&std::fs::metadata(path)?))
}

/// (size, mtime in ns, inode) of `meta`.
pub(crate) fn stat_of(meta: &std::fs::Metadata) -> FileStat {
    use std::os::unix::fs::MetadataExt as _;
    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    (meta.len(), mtime_ns, meta.ino())
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
        let mut objects = key_of(&root.join("objects")).into_vec();
        objects.push(b'/');
        let state = crate::fs::read(root, &path).map(|bytes| parse(&bytes, &objects)).unwrap_or_default();
        StatCache { path, root: root.to_path_buf(), objects, state: Mutex::new(state) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The object `key` names, when it is `<cache>/objects/ab/<hash>`.
    fn object_of(&self, key: &[u8]) -> Option<ArtifactHash> {
        object_name(key.strip_prefix(self.objects.as_slice())?)
    }

    /// The content hash of `path`, re-reading the file only when its stat changed.
    pub fn hash(&self, path: &Path) -> Result<ArtifactHash, CacheError> {
        crate::check_regular(path)?;
        let now = stat(path).map_err(|source| CacheError::Io { path: path.to_path_buf(), source })?;
        let key = key_of(path);
        if let Some(object) = self.object_of(key.as_bytes()) {
            if self.state().verified.get(&object) == Some(&now) {
                return Ok(object);
            }
        } else if let Some(entry) = self.state().files.get(&key) {
            if (entry.size, entry.mtime_ns, entry.inode) == now {
                return Ok(entry.hash);
            }
        }
        tracing::debug!(path = %path.display(), bytes = now.0, "hashing file");
        let hash = hash_file(path)?;
        self.insert(key, now, hash);
        Ok(hash)
    }

    fn insert(&self, key: OsString, now: FileStat, hash: ArtifactHash) {
        let mut state = self.state();
        match self.object_of(key.as_bytes()) {
            Some(object) if object == hash => {
                state.verified.insert(object, now);
            }
            Some(object) => {
                // An object whose bytes are not its name: never remembered as good.
                state.verified.remove(&object);
            }
            None => {
                let (size, mtime_ns, inode) = now;
                state.files.insert(key, Entry { size, mtime_ns, inode, hash });
            }
        }
        state.dirty = true;
    }

    /// Whether `path` still has the stat recorded when it was last hashed to `hash`.
    pub fn unchanged(&self, path: &Path, hash: &ArtifactHash) -> bool {
        let Ok(now) = stat(path) else { return false };
        let key = key_of(path);
        let state = self.state();
        match self.object_of(key.as_bytes()) {
            Some(object) => object == *hash && state.verified.get(&object) == Some(&now),
            None => state
                .files
                .get(&key)
                .is_some_and(|entry| (entry.size, entry.mtime_ns, entry.inode) == now && entry.hash == *hash),
        }
    }

    /// Whether store object `hash`, whose file has stat `now`, was verified with that stat.
    pub(crate) fn object_unchanged(&self, hash: &ArtifactHash, now: FileStat) -> bool {
        self.state().verified.get(hash) == Some(&now)
    }

    /// Records that `path` was just verified (or written) with content `hash`.
    pub fn remember(&self, path: &Path, hash: ArtifactHash) {
        if let Ok(now) = stat(path) {
            self.insert(key_of(path), now, hash);
        }
    }

    /// Records that `path` (not an object) holds bytes of blake3 `hash`, read just now
    /// and checked by the caller, so [`StatCache::unchanged`] holds while its stat does.
    pub(crate) fn remember_content(&self, path: &Path, hash: ArtifactHash) {
        if let Ok(now) = stat(path) {
            let key = key_of(path);
            if self.object_of(key.as_bytes()).is_none() {
                self.insert(key, now, hash);
            }
        }
    }

    /// Forgets `path` (after it was found corrupt or removed).
    pub fn forget(&self, path: &Path) {
        let key = key_of(path);
        let mut state = self.state();
        let removed = match self.object_of(key.as_bytes()) {
            Some(object) => state.verified.remove(&object).is_some(),
            None => state.files.remove(&key).is_some(),
        };
        state.dirty |= removed;
    }

    /// Writes the cache back if anything changed.
    pub fn save(&self) -> Result<(), CacheError> {
        let mut state = self.state();
        if !state.dirty {
            return Ok(());
        }
        write_atomic(&self.root, &self.path, &format(&state))?;
        // The JSON file of earlier versions, now unread.
        crate::fs::remove_file(&self.root, &self.root.join("stat-cache.json")).ok();
        state.dirty = false;
        Ok(())
    }
}

/// The key of `path`: its absolute form.
fn key_of(path: &Path) -> OsString {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).into_os_string()
}

/// `ab/<64 hex digits starting with ab>`: the hash of an object's path below `objects/`.
fn object_name(rest: &[u8]) -> Option<ArtifactHash> {
    let (shard, name) = (rest.get(..3)?, rest.get(3..)?);
    let hash = crate::digest::hex_decode(name).map(ArtifactHash::from_bytes)?;
    (shard[2] == b'/' && shard[..2] == name[..2]).then_some(hash)
}

/// One line per entry: `size mtime_ns inode hash path` (the path last, as bytes; a
/// path holding a newline is not remembered: it is re-hashed instead). A store object
/// is named by its hash, so its line stops after the hash: `size mtime_ns inode hash`
/// (lines of earlier versions, with the object's path, are still read).
fn format(state: &State) -> Vec<u8> {
    use std::io::Write as _;
    let mut bytes = Vec::with_capacity(state.files.len() * 160 + state.verified.len() * 110);
    let mut line = |entry: Entry, path: Option<&[u8]>| {
        if path.is_some_and(|path| path.contains(&b'\n')) {
            return;
        }
        // Writing into a Vec cannot fail.
        let _ = write!(bytes, "{} {} {} {}", entry.size, entry.mtime_ns, entry.inode, entry.hash);
        if let Some(path) = path {
            bytes.push(b' ');
            bytes.extend_from_slice(path);
        }
        bytes.push(b'\n');
    };
    for (path, entry) in &state.files {
        line(*entry, Some(path.as_bytes()));
    }
    // In hash order, so an unchanged cache writes the same bytes.
    let mut verified: Vec<(&ArtifactHash, &FileStat)> = state.verified.iter().collect();
    verified.sort_unstable_by_key(|(hash, _)| **hash);
    for (hash, (size, mtime_ns, inode)) in verified {
        line(Entry { size: *size, mtime_ns: *mtime_ns, inode: *inode, hash: *hash }, None);
    }
    bytes
}

/// The unsigned decimal at the start of `text`, and the rest after one space. At most
/// 19 digits (what `{}` of a u64 below 10^19 writes; sizes, inodes and times in ns).
fn number(text: &[u8]) -> Option<(u64, &[u8])> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || text.get(digits) != Some(&b' ') {
        return None;
    }
    let value = text[..digits].iter().fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0'));
    Some((value, &text[digits + 1..]))
}

/// One line of [`format`]: the entry, and its path when it names one.
fn parse_line(line: &[u8]) -> Option<(Entry, Option<&[u8]>)> {
    let (size, rest) = number(line)?;
    let (negative, rest) = match rest.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let (mtime, rest) = number(rest)?;
    let mtime_ns = if negative { -i128::from(mtime) } else { i128::from(mtime) };
    let (inode, rest) = number(rest)?;
    let hash = ArtifactHash::from_bytes(crate::digest::hex_decode(rest.get(..64)?)?);
    let path = match rest.get(64) {
        None => None,
        Some(b' ') => Some(&rest[65..]),
        Some(_) => return None,
    };
    Some((Entry { size, mtime_ns, inode, hash }, path))
}

/// The entries of [`format`]'s bytes; a line that does not parse is skipped (its file
/// is re-hashed when next asked for). A cache of a 1,000-trial tune has ~10,000 lines,
/// read by every no-op build: one pass per line, newlines found by `memchr`.
fn parse(bytes: &[u8], objects: &[u8]) -> State {
    let mut state = State::default();
    // Sized once: growing a map of ~10,000 objects rehashes into fresh pages.
    state.verified.reserve(memchr::memchr_iter(b'\n', bytes).count());
    for line in crate::lines::lines(bytes) {
        let Some((entry, path)) = parse_line(&bytes[line]) else { continue };
        let stat = (entry.size, entry.mtime_ns, entry.inode);
        match path.map(|path| (path, path.strip_prefix(objects))) {
            None => {
                state.verified.insert(entry.hash, stat);
            }
            // An object is remembered only with its own name as its hash: `ab/<hex>`
            // (a line of an earlier version, which wrote the object's path).
            Some((_, Some(rest))) => {
                if object_name(rest) == Some(entry.hash) {
                    state.verified.insert(entry.hash, stat);
                }
            }
            Some((path, None)) => {
                state.files.insert(std::ffi::OsStr::from_bytes(path).to_os_string(), entry);
            }
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_remembered_by_hash_and_only_under_their_own_name() {
        let dir = crate::store::tests::test_dir("stat-objects");
        let cache = crate::Cache::open(&dir).unwrap();
        let hash = cache.store().put(b"object bytes").unwrap();
        let path = cache.store().path(&hash);
        cache.save_stats().unwrap();
        let text = std::fs::read_to_string(dir.join("stat-cache.txt")).unwrap();
        // An object's line ends at its hash: its path is its name.
        assert!(text.lines().any(|line| line.ends_with(&format!(" {hash}"))), "{text}");
        assert!(!text.contains("objects/"), "{text}");
        let reloaded = StatCache::load(&dir);
        assert!(reloaded.unchanged(&path, &hash));
        assert!(!reloaded.unchanged(&path, &ArtifactHash::of(b"other")));
        // A line of an earlier version, with the object's path, is still read...
        let line = text.lines().find(|line| line.ends_with(&hash.to_string())).unwrap();
        let old = format!("{line} {}\n", key_of(&path).to_string_lossy());
        std::fs::write(dir.join("stat-cache.txt"), &old).unwrap();
        assert!(StatCache::load(&dir).unchanged(&path, &hash));
        // ... but one naming an object under another hash is not trusted.
        let other = ArtifactHash::of(b"other");
        std::fs::write(dir.join("stat-cache.txt"), old.replacen(&format!("{hash} "), &format!("{other} "), 1)).unwrap();
        assert!(!StatCache::load(&dir).unchanged(&path, &other));
        assert!(!StatCache::load(&dir).unchanged(&path, &hash));
        // Damaged lines are skipped, not misread.
        for bad in
            [format!("x{line}"), line.replacen(' ', "  ", 1), format!("{line}0"), line[..line.len() - 1].to_string()]
        {
            std::fs::write(dir.join("stat-cache.txt"), format!("{bad}\n")).unwrap();
            assert!(!StatCache::load(&dir).unchanged(&path, &hash), "{bad}");
        }
        assert_eq!(number(b"12 x"), Some((12, &b"x"[..])));
        assert_eq!((number(b" 1"), number(b"1x"), number(b"+1 "), number(b"1")), (None, None, None, None));
        assert_eq!(number(b"99999999999999999999 "), None);
        std::fs::remove_dir_all(&dir).ok();
    }

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
