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
}
