//! `Cache::open`'s check that no symlink sits where `pipe` reads or writes by name,
//! remembered between processes.
//!
//! The check lists the cache root, each directory in it, and each `out/<stage>/`: a
//! 1,000-trial tune has a thousand of those, and listing them was a twentieth of a
//! no-op build. A directory's entries cannot change without its ctime changing (and
//! a ctime cannot be set back by hand), so `tree-check.txt` records the (inode, ctime)
//! of each directory found free of links; a directory whose stat is still the recorded
//! one is not listed again. A directory changed within [`SETTLE`] of the check is not
//! recorded (ctimes tick coarsely: an entry added in the same tick, after the listing,
//! would carry the same ctime), and a directory with subdirectories to check is
//! recorded only when every one of them is, so an unchanged `out/` stands for its
//! recorded subdirectories.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use crate::fs::symlink_error;
use crate::CacheError;

/// The file, in the cache root.
const MARKER: &str = "tree-check.txt";

/// How long ago a directory must have changed to be recorded as checked.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// (inode, ctime in ns) of a directory.
type Stamp = (u64, i128);

/// Refuses a cache directory that holds a symlink anywhere `pipe` reads or writes by
/// name: the top-level entries, the shard directories, every `out/<stage>/<name>`,
/// `runs/*`, `last/*`, `tmp/*`, `quarantine/*` and `report/*` ([`CacheError::Symlink`]).
/// Objects and action entries themselves are checked when they are used (`fs::guard`).
pub(crate) fn check_tree(root: &Path) -> Result<(), CacheError> {
    check_tree_settled(root, SETTLE)
}

/// [`check_tree`], recording directories that changed at least `settle` ago.
pub(crate) fn check_tree_settled(root: &Path, settle: std::time::Duration) -> Result<(), CacheError> {
    // Depth below each top-level directory to look at: out/<stage>/<name> is two.
    let depth = |name: &[u8]| if name == b"out" { 2 } else { 1 };
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(()) };
    let known = load(root);
    let mut check = Check { root, known: &known, clean: BTreeMap::new(), settle };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_symlink() {
            return Err(symlink_error(root, &entry.path()));
        }
        if kind.is_dir() {
            let name = entry.file_name();
            check.dir(name.as_bytes(), depth(name.as_bytes()))?;
        }
    }
    if check.clean != known {
        save(root, &check.clean);
    }
    Ok(())
}

struct Check<'a> {
    root: &'a Path,
    /// Relative directory -> its stamp when last found clean.
    known: &'a BTreeMap<Vec<u8>, Stamp>,
    clean: BTreeMap<Vec<u8>, Stamp>,
    settle: std::time::Duration,
}

impl Check<'_> {
    /// Checks the entries of `rel` (and, at depth 2, those of its subdirectories);
    /// returns whether `rel` was recorded as clean.
    fn dir(&mut self, rel: &[u8], depth: usize) -> Result<bool, CacheError> {
        let path = self.root.join(std::ffi::OsStr::from_bytes(rel));
        let Ok(meta) = std::fs::symlink_metadata(&path) else { return Ok(false) };
        if meta.file_type().is_symlink() {
            return Err(symlink_error(self.root, &path));
        }
        let stamp: Stamp = (meta.ino(), i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()));
        let unchanged = self.known.get(rel) == Some(&stamp);
        let mut all_clean = true;
        if !unchanged || depth > 1 {
            let subdirs = if unchanged { self.known_subdirs(rel) } else { self.list(&path, rel)? };
            if depth > 1 {
                for sub in subdirs {
                    all_clean &= self.dir(&sub, depth - 1)?;
                }
            }
        }
        let settled = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|now| i128::try_from(now.saturating_sub(self.settle).as_nanos()).is_ok_and(|at| stamp.1 < at));
        // A name holding a newline cannot be a line of the marker; `tmp/` changes with
        // every file written (this marker too), so it is always listed (it is small).
        let clean = all_clean && (unchanged || settled) && !rel.contains(&b'\n') && rel != b"tmp";
        if clean {
            self.clean.insert(rel.to_vec(), stamp);
        }
        Ok(clean)
    }

    /// The subdirectories of `rel` recorded with it (all of them: see the module).
    fn known_subdirs(&self, rel: &[u8]) -> Vec<Vec<u8>> {
        let mut prefix = rel.to_vec();
        prefix.push(b'/');
        self.known
            .range(prefix.clone()..)
            .take_while(|(name, _)| name.starts_with(&prefix))
            .filter(|(name, _)| !name[prefix.len()..].contains(&b'/'))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Lists `rel`, refusing a link; returns its subdirectories.
    fn list(&self, path: &Path, rel: &[u8]) -> Result<Vec<Vec<u8>>, CacheError> {
        let mut subdirs = Vec::new();
        let Ok(entries) = std::fs::read_dir(path) else { return Ok(subdirs) };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_symlink() {
                return Err(symlink_error(self.root, &entry.path()));
            }
            if kind.is_dir() {
                let mut sub = rel.to_vec();
                sub.push(b'/');
                sub.extend_from_slice(entry.file_name().as_bytes());
                subdirs.push(sub);
            }
        }
        Ok(subdirs)
    }
}

/// The recorded stamps: one line each, `inode ctime_ns relative/dir` (a line that does
/// not parse is dropped: its directory is listed again).
fn load(root: &Path) -> BTreeMap<Vec<u8>, Stamp> {
    let Ok(bytes) = crate::fs::read(root, &root.join(MARKER)) else { return BTreeMap::new() };
    let mut known = BTreeMap::new();
    for line in bytes.split(|b| *b == b'\n').filter(|line| !line.is_empty()) {
        let mut fields = line.splitn(3, |b| *b == b' ');
        let number = |text: Option<&[u8]>| std::str::from_utf8(text?).ok()?.parse::<i128>().ok();
        let (Some(inode), Some(ctime), Some(rel)) = (number(fields.next()), number(fields.next()), fields.next())
        else {
            continue;
        };
        if let Ok(inode) = u64::try_from(inode) {
            known.insert(rel.to_vec(), (inode, ctime));
        }
    }
    known
}

/// Writes the stamps back (best effort: without them the next open lists everything).
fn save(root: &Path, clean: &BTreeMap<Vec<u8>, Stamp>) {
    let mut bytes = Vec::with_capacity(clean.len() * 64);
    for (rel, (inode, ctime)) in clean {
        bytes.extend_from_slice(format!("{inode} {ctime} ").as_bytes());
        bytes.extend_from_slice(rel);
        bytes.push(b'\n');
    }
    if let Err(err) = crate::fs::write_atomic(root, &root.join(MARKER), &bytes) {
        tracing::debug!(%err, "could not record the checked directories");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link planted in a directory recorded as clean is still found: planting it
    /// changed the directory's ctime.
    #[test]
    fn a_link_planted_after_a_clean_check_is_found() {
        let root = crate::store::tests::test_dir("tree-check");
        for dir in ["out/overfit", "out/tune", "last", "objects/ab", "tmp"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("out/overfit/metrics.json"), b"{}").unwrap();
        let none = std::time::Duration::ZERO;
        // Coarse ctimes: let the clock tick past the directories' creation.
        std::thread::sleep(std::time::Duration::from_millis(30));
        check_tree_settled(&root, none).unwrap();
        let recorded = load(&root);
        for dir in ["out", "out/overfit", "out/tune", "last", "objects"] {
            assert!(recorded.contains_key(dir.as_bytes()), "{dir} recorded: {recorded:?}");
        }
        check_tree_settled(&root, none).unwrap();
        assert_eq!(load(&root), recorded, "an unchanged tree records the same stamps");

        std::thread::sleep(std::time::Duration::from_millis(30));
        let outside = root.with_extension("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::remove_file(root.join("out/overfit/metrics.json")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out/overfit/metrics.json")).unwrap();
        let err = check_tree_settled(&root, none).unwrap_err().to_string();
        assert!(err.contains("refusing to follow the symlink") && err.contains("out/overfit/metrics.json"), "{err}");

        // A directory changed just now is listed, not recorded.
        std::fs::remove_file(root.join("out/overfit/metrics.json")).unwrap();
        check_tree(&root).unwrap();
        let recorded = load(&root);
        assert!(!recorded.contains_key(b"out/overfit".as_slice()) && !recorded.contains_key(b"out".as_slice()));
        assert!(recorded.contains_key(b"out/tune".as_slice()), "{recorded:?}");
        std::fs::remove_dir_all(&root).ok();
        std::fs::remove_dir_all(&outside).ok();
    }
}
