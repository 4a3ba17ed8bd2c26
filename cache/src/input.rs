//! Reading the user's files (data files, `pipe.toml`, label lists) without hanging or
//! running out of memory: regular files only, every read bounded.
//!
//! A FIFO would block the open (or the read) forever and a device such as `/dev/zero`
//! never ends, so both are refused with "not a regular file" before any byte is read.
//! The open itself uses `O_NONBLOCK`, so a FIFO swapped in after the check cannot hang
//! it either. Symlinks are followed: the user's data may be linked from anywhere.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// A user input file that cannot be read as one.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: not a regular file ({kind})")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: {size} bytes is more than {what} may hold ({limit} bytes)")]
    TooLarge { path: PathBuf, size: u64, limit: u64, what: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl InputError {
    pub fn path(&self) -> &Path {
        match self {
            InputError::NotRegular { path, .. } | InputError::TooLarge { path, .. } | InputError::Io { path, .. } => {
                path
            }
        }
    }

    /// Whether the file does not exist (rather than exists but is unreadable).
    pub fn is_not_found(&self) -> bool {
        matches!(self, InputError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Refuses `path` unless it is a regular file (after following links); returns its size.
pub fn check_regular(path: &Path) -> Result<u64, InputError> {
    let meta = std::fs::metadata(path).map_err(|source| InputError::Io { path: path.to_path_buf(), source })?;
    if !meta.is_file() {
        return Err(InputError::NotRegular { path: path.to_path_buf(), kind: kind_of(&meta) });
    }
    Ok(meta.len())
}

/// Opens a regular file for reading and returns it with its size.
pub fn open_input(path: &Path) -> Result<(File, u64), InputError> {
    let io = |source| InputError::Io { path: path.to_path_buf(), source };
    // Refuse before opening: even a non-blocking open of some devices has effects.
    check_regular(path)?;
    let file = File::options().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(InputError::NotRegular { path: path.to_path_buf(), kind: kind_of(&meta) });
    }
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `limit` bytes (`what` names the kind of file
/// in the error: "a CSV file", "classes.txt").
pub fn read_input(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, InputError> {
    let (file, size) = open_input(path)?;
    if size > limit {
        return Err(InputError::TooLarge { path: path.to_path_buf(), size, limit, what });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // The file may grow while it is read: never read more than the limit.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| InputError::Io { path: path.to_path_buf(), source })?;
    if bytes.len() as u64 > limit {
        return Err(InputError::TooLarge { path: path.to_path_buf(), size: bytes.len() as u64, limit, what });
    }
    Ok(bytes)
}

/// [`read_input`] as UTF-8 text.
pub fn read_input_text(path: &Path, limit: u64, what: &'static str) -> Result<String, InputError> {
    let bytes = read_input(path, limit, what)?;
    String::from_utf8(bytes).map_err(|err| InputError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (invalid byte at offset {})", err.utf8_error().valid_up_to()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_devices_are_refused_without_blocking() {
        let dir = crate::store::tests::test_dir("input");
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("classes.txt");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        let err = read_input(&fifo, 1 << 20, "classes.txt").unwrap_err();
        assert!(err.to_string().contains("not a regular file (a FIFO)"), "{err}");
        assert!(err.to_string().contains("classes.txt"), "{err}");
        let err = read_input(Path::new("/dev/zero"), 1 << 20, "a config file").unwrap_err();
        assert_eq!(err.to_string(), "/dev/zero: not a regular file (a character device)");
        let err = read_input(&dir, 1 << 20, "a config file").unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");

        let file = dir.join("big.txt");
        std::fs::write(&file, vec![b'a'; 100]).unwrap();
        assert_eq!(read_input(&file, 100, "x").unwrap().len(), 100);
        let err = read_input(&file, 99, "a test file").unwrap_err();
        assert!(matches!(err, InputError::TooLarge { size: 100, limit: 99, .. }), "{err}");
        assert!(read_input(&dir.join("missing"), 10, "x").unwrap_err().is_not_found());
        std::fs::remove_dir_all(&dir).ok();
    }
}
