//! A shared remote cache behind the local one: objects (`cas/<blake3>`) and action
//! entries (`ac/<key>`), the layout of Bazel's HTTP remote-cache protocol, so any
//! WebDAV-capable server (nginx with `dav_methods PUT`) or a Bazel cache server holds
//! them.
//!
//! The local cache stays the only owner of paths, gc and fsck; the remote is tiered
//! behind it: a local miss asks the remote, every downloaded object is verified
//! against its blake3 name before it enters the local store, an entry is written
//! locally only once all of its objects are in, and uploads happen after a local
//! success, objects first and the entry last (so a remote entry never names a missing
//! object). A remote that is down, slow or refuses a request costs one warning and
//! the rest of the build runs locally: it never fails a build. Credentials never
//! appear in pipe.toml or anything `pipe` writes.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{ArtifactHash, StageKey};

pub mod claim;
mod http;
mod s3;

pub use claim::{ClaimGuard, Claimed};
pub use http::HttpRemote;
pub use s3::S3Remote;

/// The largest object or entry fetched from a remote (a bound, not a hope).
pub(crate) const MAX_DOWNLOAD: u64 = 8 << 30;

/// Why a remote request did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{url}: {message}")]
    Unavailable { url: String, message: String },
    #[error("remote cache URL `{0}`: expected http://, https:// or s3://")]
    Unsupported(String),
    #[error("remote cache `{url}`: {message}")]
    Invalid { url: String, message: String },
}

/// A remote content-addressed store and action cache.
pub trait Remote: Send + Sync + std::fmt::Debug {
    /// The bytes stored under `cas/<hash>`, `None` when absent. Not verified here.
    fn get_object(&self, hash: &ArtifactHash) -> Result<Option<Vec<u8>>, RemoteError>;
    fn has_object(&self, hash: &ArtifactHash) -> Result<bool, RemoteError>;
    fn put_object(&self, hash: &ArtifactHash, bytes: &[u8]) -> Result<(), RemoteError>;
    /// The manifest bytes stored under `ac/<key>`, `None` when absent.
    fn get_action(&self, key: &StageKey) -> Result<Option<Vec<u8>>, RemoteError>;
    fn put_action(&self, key: &StageKey, bytes: &[u8]) -> Result<(), RemoteError>;
    /// Creates the claim `name` (empty) only if it does not exist: `Ok(true)` when this
    /// call created it, `Ok(false)` when it was there (see [`claim`]).
    fn create_claim(&self, name: &str) -> Result<bool, RemoteError>;
    /// The lease written into claim `name`, `None` when absent.
    fn get_claim(&self, name: &str) -> Result<Option<Vec<u8>>, RemoteError>;
    /// Writes the lease of a claim this process holds (renewal, release).
    fn put_claim(&self, name: &str, bytes: &[u8]) -> Result<(), RemoteError>;
    /// Removes claim `name`, best effort (only the probe's, see [`claim`]).
    fn remove_claim(&self, name: &str);
    /// Where it is, for messages (no credentials).
    fn describe(&self) -> String;
}

/// The remote of a build: a backend and whether it still answers. After the first
/// failure it is switched off for the rest of the process, with one warning.
#[derive(Debug)]
pub struct Tier {
    backend: Box<dyn Remote>,
    down: AtomicBool,
    /// Whether the remote creates claims only when absent (probed once, see [`claim`]).
    pub(crate) claims: std::sync::OnceLock<bool>,
    /// Objects and entries fetched or uploaded, for `pipe` to report.
    pub stats: TierStats,
}

#[derive(Debug, Default)]
pub struct TierStats {
    pub fetched_bytes: std::sync::atomic::AtomicU64,
    pub fetched_objects: std::sync::atomic::AtomicU64,
    pub uploaded_objects: std::sync::atomic::AtomicU64,
}

impl Tier {
    pub fn new(backend: Box<dyn Remote>) -> Tier {
        Tier { backend, down: AtomicBool::new(false), claims: std::sync::OnceLock::new(), stats: TierStats::default() }
    }

    /// Runs `request` unless the remote is down; a failure switches it off (warning once).
    pub(crate) fn call<T>(&self, request: impl FnOnce(&dyn Remote) -> Result<T, RemoteError>) -> Option<T> {
        if self.down.load(Ordering::SeqCst) {
            return None;
        }
        match request(self.backend.as_ref()) {
            Ok(value) => Some(value),
            Err(error) => {
                if !self.down.swap(true, Ordering::SeqCst) {
                    tracing::warn!(
                        "remote cache unavailable ({error}): building locally; results are not shared this time"
                    );
                }
                None
            }
        }
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    pub(crate) fn count_fetch(&self, bytes: usize) {
        self.stats.fetched_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.stats.fetched_objects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_upload(&self) {
        self.stats.uploaded_objects.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens the remote named by `url` (`http[s]://host:port/prefix` or `s3://bucket/prefix`).
pub fn open(url: &str) -> Result<Box<dyn Remote>, RemoteError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(Box::new(HttpRemote::new(url)))
    } else if url.starts_with("s3://") {
        Ok(Box::new(S3Remote::open(url)?))
    } else {
        Err(RemoteError::Unsupported(redact(url)))
    }
}

/// `url` without the credentials it might carry (`http://user:secret@host` -> `http://host`).
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            if path.is_empty() && !rest.contains('/') {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}/{path}")
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_never_shown() {
        assert_eq!(redact("http://user:secret@host:8080/prefix"), "http://host:8080/prefix");
        assert_eq!(redact("s3://key:secret@bucket"), "s3://bucket");
        assert_eq!(redact("http://host/x"), "http://host/x");
        let error = open("ftp://u:secret@example.org/x").unwrap_err().to_string();
        assert!(!error.contains("secret"), "{error}");
        // Credentials in an s3:// URL are refused (they come from AWS_* only), unechoed.
        let error = open("s3://key:secret@bucket/prefix").unwrap_err().to_string();
        assert!(error.contains("AWS_") && !error.contains("secret"), "{error}");
        assert!(open("s3:///prefix").is_err());
    }
}
