//! Errors of the cache crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("object {hash} is corrupt: its bytes hash to {actual}")]
    Corrupt { hash: String, actual: String },
    #[error("object {hash} is missing from the store")]
    Missing { hash: String },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid hex digest `{0}`")]
    BadDigest(String),
    #[error("run record {id} is unreadable ({reason}); `pipe fsck` moves it aside")]
    BadRun { id: u64, reason: String },
    #[error(
        "refusing to follow the symlink {link} -> {target}: pipe never reads or writes outside its cache \
         directory; remove the link"
    )]
    Symlink { link: PathBuf, target: PathBuf },
    #[error("{path} is outside the cache directory")]
    Outside { path: PathBuf },
    #[error("no space left on device while writing {path}")]
    NoSpace { path: PathBuf },
    #[error(transparent)]
    Input(#[from] crate::InputError),
}
