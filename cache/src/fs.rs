//! File system primitives of the cache directory, written so that nothing escapes it.
//!
//! | rule                                              | how                                          |
//! |---------------------------------------------------|----------------------------------------------|
//! | never follow a symlink inside the cache directory | [`guard`] lstat's every component below root |
//! | a planted link found on open is refused, loudly   | `tree::check_tree` in `Cache::open`          |
//! | new files never open through a link               | `O_NOFOLLOW` + `O_EXCL` temp files           |
//! | a crash or ENOSPC leaves no half file             | temp file, fsync, rename; temp removed on error |
//! | ENOSPC is one clear sentence                      | [`CacheError::NoSpace`] names the final path |
//!
//! The cache root itself may be a symlink (a user may put `.pipe` on a bigger disk):
//! that is the user's choice, made outside the cache.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::CacheError;

/// `root/rel` as people see it: `.pipe/out/overfit` (the root's own name, then the rest).
pub(crate) fn shown(root: &Path, path: &Path) -> PathBuf {
    let name = root.file_name().map_or_else(|| PathBuf::from("."), PathBuf::from);
    match path.strip_prefix(root) {
        Ok(rel) => name.join(rel),
        Err(_) => path.to_path_buf(),
    }
}

pub(crate) fn symlink_error(root: &Path, link: &Path) -> CacheError {
    let target = std::fs::read_link(link).unwrap_or_else(|_| PathBuf::from("?"));
    CacheError::Symlink { link: shown(root, link), target }
}

pub(crate) fn io_error(root: &Path, path: &Path, source: std::io::Error) -> CacheError {
    if is_no_space(&source) {
        return CacheError::NoSpace { path: shown(root, path) };
    }
    CacheError::Io { path: path.to_path_buf(), source }
}

fn is_no_space(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Fails when `path` is not below `root`, or when any existing component of it below
/// `root` (the last one included) is a symlink. Components that do not exist yet are
/// fine: whatever creates them creates real directories.
pub(crate) fn guard(root: &Path, path: &Path) -> Result<(), CacheError> {
    let Ok(rel) = path.strip_prefix(root) else {
        return Err(CacheError::Outside { path: path.to_path_buf() });
    };
    let mut at = root.to_path_buf();
    for component in rel.components() {
        match component {
            Component::Normal(name) => at.push(name),
            Component::CurDir => continue,
            _ => return Err(CacheError::Outside { path: path.to_path_buf() }),
        }
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(symlink_error(root, &at)),
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(CacheError::Io { path: at, source }),
        }
    }
    Ok(())
}

/// Creates `dir` (and its parents below `root`) as real directories.
pub(crate) fn create_dirs(root: &Path, dir: &Path) -> Result<(), CacheError> {
    guard(root, dir)?;
    std::fs::create_dir_all(dir).map_err(|source| io_error(root, dir, source))?;
    // A link planted between the check and the creation is still caught here.
    guard(root, dir)
}

/// Opens an existing file below `root` for reading, refusing links on the way.
pub(crate) fn open_read(root: &Path, path: &Path) -> Result<File, CacheError> {
    guard(root, path)?;
    File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| link_or_io(root, path, source))
}

/// Reads a whole file below `root`, refusing links.
pub(crate) fn read(root: &Path, path: &Path) -> Result<Vec<u8>, CacheError> {
    use std::io::Read as _;
    let mut file = open_read(root, path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|source| CacheError::Io { path: path.to_path_buf(), source })?;
    Ok(bytes)
}

/// Whether `err` says the file is not there (a miss rather than damage).
pub(crate) fn is_not_found(err: &CacheError) -> bool {
    matches!(err, CacheError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Opens `path` (below `root`) for appending, creating it; never through a link.
pub(crate) fn open_append(root: &Path, path: &Path) -> Result<File, CacheError> {
    guard(root, path)?;
    File::options()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| link_or_io(root, path, source))
}

/// Opens (creating) the lock file; never through a link.
pub(crate) fn open_lock(root: &Path, path: &Path) -> Result<File, CacheError> {
    guard(root, path)?;
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| link_or_io(root, path, source))
}

fn link_or_io(root: &Path, path: &Path, source: std::io::Error) -> CacheError {
    if source.raw_os_error() == Some(libc::ELOOP) {
        return symlink_error(root, path);
    }
    io_error(root, path, source)
}

/// Removes a file (or a link: never what it points to) below `root`.
pub(crate) fn remove_file(root: &Path, path: &Path) -> Result<(), CacheError> {
    if let Some(parent) = path.parent() {
        guard(root, parent)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CacheError::Io { path: path.to_path_buf(), source }),
    }
}

/// Removes a directory tree below `root`. `std::fs::remove_dir_all` never follows
/// links inside the tree; the guard makes sure the tree itself is not reached by one.
pub(crate) fn remove_tree(root: &Path, dir: &Path) -> Result<(), CacheError> {
    guard(root, dir)?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CacheError::Io { path: dir.to_path_buf(), source }),
    }
}

/// Renames `from` to `to`, both below `root`. A link at `to` is replaced, not followed.
pub(crate) fn rename(root: &Path, from: &Path, to: &Path) -> Result<(), CacheError> {
    for path in [from.parent(), to.parent()].into_iter().flatten() {
        guard(root, path)?;
    }
    std::fs::rename(from, to).map_err(|source| io_error(root, to, source))
}

/// A new, unique temp file in `root/tmp`, named `<pid>-<n>.tmp` so a later process can
/// tell whether its writer is still alive. Opened `O_EXCL | O_NOFOLLOW`.
pub(crate) fn temp_file(root: &Path) -> Result<(PathBuf, File), CacheError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = root.join("tmp");
    create_dirs(root, &tmp)?;
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = tmp.join(format!("{}-{n}.tmp", std::process::id()));
        match File::options().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(io_error(root, &path, source)),
        }
    }
}

/// Writes `bytes` to `path` (below `root`) atomically: a temp file in `root/tmp`,
/// fsync'd, then renamed. On any failure the temp file is removed, and running out of
/// space is reported as [`CacheError::NoSpace`] naming `path`.
pub(crate) fn write_atomic(root: &Path, path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    write_atomic_with(root, path, |file| file.write_all(bytes))
}

/// Like [`write_atomic`], with the temp file's content written by `fill`.
pub(crate) fn write_atomic_with(
    root: &Path,
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), CacheError> {
    guard(root, path)?;
    if let Some(parent) = path.parent() {
        create_dirs(root, parent)?;
    }
    let (tmp, mut file) = temp_file(root)?;
    let result = fill(&mut file).and_then(|()| file.sync_all());
    drop(file);
    let result = result.map_err(|source| io_error(root, path, source)).and_then(|()| rename(root, &tmp, path));
    if result.is_err() {
        std::fs::remove_file(&tmp).ok();
    }
    result
}

/// Makes `to` a copy of `from` that shares no writable state with it: a copy-on-write
/// clone (`FICLONE`: btrfs, XFS, bcachefs, ZFS) where the file system has them, which
/// costs no space until one side is edited. Returns whether it cloned; `false` means
/// the file system cannot clone and nothing was written.
pub(crate) fn try_clone(root: &Path, from: &Path, to: &Path) -> Result<bool, CacheError> {
    use std::os::fd::AsRawFd as _;
    let source = open_read(root, from)?;
    let mut cloned = false;
    write_atomic_with(root, to, |file| {
        // SAFETY: both descriptors are open for the duration of the call; FICLONE
        // reads no memory of ours.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) };
        if rc == 0 {
            cloned = true;
            return Ok(());
        }
        Err(std::io::Error::last_os_error())
    })
    .or_else(|err| match err {
        // Not supported here (ext4, tmpfs, across file systems): the caller copies.
        CacheError::Io { ref source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::EOPNOTSUPP)
                    | Some(libc::EXDEV)
                    | Some(libc::EINVAL)
                    | Some(libc::ENOTTY)
                    | Some(libc::ENOSYS)
            ) =>
        {
            Ok(())
        }
        other => Err(other),
    })?;
    Ok(cloned)
}

/// Removes the temp files in `root/tmp` whose writer is dead (killed, or stopped by a
/// full disk): their names start with the writer's pid. Called with the cache lock held.
/// Returns how many were removed.
pub(crate) fn sweep_dead_temps(root: &Path) -> usize {
    let tmp = root.join("tmp");
    if guard(root, &tmp).is_err() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(&tmp) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = writer_pid(&name) else { continue };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        // A file, or a link (removed itself, never followed).
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(err) => tracing::warn!(path = %path.display(), %err, "could not remove a dead process's temp file"),
        }
    }
    removed
}

/// The pid in a temp file name, `<pid>-<n>.tmp`. (`verify-<pid>/` directories are not
/// crash leftovers: `pipe verify` keeps them for inspection, and gc ages them out.)
fn writer_pid(name: &str) -> Option<u32> {
    name.strip_suffix(".tmp")?.split_once('-')?.0.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_carry_the_writer_pid() {
        assert_eq!(writer_pid("1234-7.tmp"), Some(1234));
        assert_eq!(writer_pid("verify-99"), None, "kept for inspection");
        assert_eq!(writer_pid("notes.txt"), None);
        assert!(process_alive(std::process::id()));
    }

    /// Plants each link the hostile review used and checks that the cache refuses to
    /// open, names the link, and leaves the outside alone.
    #[test]
    fn planted_symlinks_are_refused() {
        use crate::Cache;
        let base = crate::store::tests::test_dir("symlinks");
        let outside = base.join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("precious.txt"), b"keep me").unwrap();
        let plants: [(&str, bool); 7] = [
            ("out", true),
            ("quarantine", true),
            ("runs/index.jsonl", false),
            ("lock", false),
            ("objects/ab", true),
            ("out/diff", true),
            ("tmp/verify-1", true),
        ];
        for (i, (link, is_dir)) in plants.iter().enumerate() {
            let root = base.join(format!("cache-{i}/.pipe"));
            Cache::open(&root).unwrap();
            let path = root.join(link);
            std::fs::remove_dir_all(&path).ok();
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let target = if *is_dir { outside.clone() } else { outside.join("precious.txt") };
            std::os::unix::fs::symlink(&target, &path).unwrap();
            let err = Cache::open(&root).unwrap_err().to_string();
            let expected = format!("refusing to follow the symlink .pipe/{link} -> {}", target.display());
            assert!(err.starts_with(&expected), "{err}");
            assert_eq!(std::fs::read(outside.join("precious.txt")).unwrap(), b"keep me");
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "nothing created outside");
        }

        // Links made after opening are still not followed by the cache's own writes.
        let root = base.join("late/.pipe");
        let cache = Cache::open(&root).unwrap();
        std::fs::remove_dir_all(root.join("objects")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("objects")).unwrap();
        let err = cache.store().put(b"bytes").unwrap_err().to_string();
        assert!(err.contains("refusing to follow the symlink .pipe/objects"), "{err}");
        std::fs::remove_file(root.join("lock")).ok();
        std::os::unix::fs::symlink(outside.join("new-lock"), root.join("lock")).unwrap();
        assert!(cache.lock().unwrap_err().to_string().contains("refusing to follow the symlink .pipe/lock"));
        assert!(!outside.join("new-lock").exists());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "nothing created outside");
        std::fs::remove_dir_all(&base).ok();
    }

    #[test]
    fn dead_writers_temp_files_are_removed_when_the_lock_is_taken() {
        use crate::Cache;
        let root = crate::store::tests::test_dir("dead-temps");
        let cache = Cache::open(&root).unwrap();
        // A pid that cannot be alive (above pid_max), and a live one: ours.
        let dead = root.join("tmp/4194999-0.tmp");
        let kept = root.join("tmp/verify-4194999");
        let alive = root.join(format!("tmp/{}-999.tmp", std::process::id()));
        std::fs::write(&dead, b"half an object").unwrap();
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::write(&alive, b"being written").unwrap();
        let lock = cache.lock().unwrap();
        assert!(!dead.exists());
        assert!(alive.exists() && kept.exists());
        drop(lock);
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn no_space_is_one_clear_sentence() {
        let err = io_error(
            Path::new("/x/.pipe"),
            Path::new("/x/.pipe/objects/ab/abcd"),
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(err.to_string(), "no space left on device while writing .pipe/objects/ab/abcd");

        // A write that runs out of space leaves no temp file behind.
        let root = crate::store::tests::test_dir("enospc").join(".pipe");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        let target = root.join("objects/ab/abcd");
        let err =
            write_atomic_with(&root, &target, |_| Err(std::io::Error::from_raw_os_error(libc::ENOSPC))).unwrap_err();
        assert_eq!(err.to_string(), "no space left on device while writing .pipe/objects/ab/abcd");
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        assert!(!target.exists());
        std::fs::remove_dir_all(root.parent().unwrap()).ok();
    }
}
