//! The Bazel HTTP remote-cache protocol: `GET`/`PUT`/`HEAD` on `<base>/cas/<hash>`
//! and `<base>/ac/<key>`; 404 means absent. Claims (see [`super::claim`]) are WebDAV
//! collections: `MKCOL` is create-if-absent (201 created, 405 already there), which
//! nginx's dav module honours, whereas it ignores `If-None-Match: *` on `PUT`.

use std::io::Read as _;
use std::time::Duration;

use super::{redact, Remote, RemoteError, MAX_DOWNLOAD};
use crate::{ArtifactHash, StageKey};

pub struct HttpRemote {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for HttpRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials a URL may carry.
        f.debug_struct("HttpRemote").field("base", &redact(&self.base)).finish_non_exhaustive()
    }
}

impl HttpRemote {
    pub fn new(base: &str) -> HttpRemote {
        HttpRemote { base: base.trim_end_matches('/').to_string(), agent: agent() }
    }

    fn url(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.base)
    }

    /// `MKCOL` on `url`: `Some(true)` created, `Some(false)` already there (405),
    /// `None` when its parent collection is missing (409).
    fn mkcol(&self, url: &str) -> Result<Option<bool>, RemoteError> {
        match self.agent.request("MKCOL", url).call() {
            Ok(_) => Ok(Some(true)),
            Err(ureq::Error::Status(405, _)) => Ok(Some(false)),
            Err(ureq::Error::Status(409, _)) => Ok(None),
            Err(error) => Err(unavailable(url, error)),
        }
    }
}

/// The client of every remote: short connect timeout, bounded reads and writes.
pub(super) fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(3))
        .timeout_read(Duration::from_secs(60))
        .timeout_write(Duration::from_secs(60))
        .build()
}

/// A request that gave no answer; `shown` is what messages may say of its URL.
pub(super) fn unavailable(shown: &str, error: impl std::fmt::Display) -> RemoteError {
    let message = error.to_string();
    // ureq's transport errors name the URL (a presigned one carries a signature):
    // keep only what follows it.
    let message = match message.split_once(": ") {
        Some((head, rest)) if head.contains("://") => rest.to_string(),
        _ => message,
    };
    RemoteError::Unavailable { url: redact(shown), message }
}

/// The body of a `GET` (`None` on 404).
pub(super) fn get(agent: &ureq::Agent, url: &str, shown: &str) -> Result<Option<Vec<u8>>, RemoteError> {
    match agent.get(url).call() {
        Ok(response) => {
            let mut bytes = Vec::new();
            response.into_reader().take(MAX_DOWNLOAD).read_to_end(&mut bytes).map_err(|e| unavailable(shown, e))?;
            Ok(Some(bytes))
        }
        Err(ureq::Error::Status(404, _)) => Ok(None),
        Err(error) => Err(unavailable(shown, error)),
    }
}

/// Whether a `HEAD` finds something.
pub(super) fn head(agent: &ureq::Agent, url: &str, shown: &str) -> Result<bool, RemoteError> {
    match agent.head(url).call() {
        Ok(_) => Ok(true),
        Err(ureq::Error::Status(404, _)) => Ok(false),
        Err(error) => Err(unavailable(shown, error)),
    }
}

impl Remote for HttpRemote {
    fn get_object(&self, hash: &ArtifactHash) -> Result<Option<Vec<u8>>, RemoteError> {
        let url = self.url("cas", &hash.to_hex());
        get(&self.agent, &url, &url)
    }

    fn has_object(&self, hash: &ArtifactHash) -> Result<bool, RemoteError> {
        let url = self.url("cas", &hash.to_hex());
        head(&self.agent, &url, &url)
    }

    fn put_object(&self, hash: &ArtifactHash, bytes: &[u8]) -> Result<(), RemoteError> {
        self.put_raw("cas", &hash.to_hex(), bytes)
    }

    fn get_action(&self, key: &StageKey) -> Result<Option<Vec<u8>>, RemoteError> {
        let url = self.url("ac", &key.to_hex());
        get(&self.agent, &url, &url)
    }

    fn put_action(&self, key: &StageKey, bytes: &[u8]) -> Result<(), RemoteError> {
        self.put_raw("ac", &key.to_hex(), bytes)
    }

    fn create_claim(&self, name: &str) -> Result<bool, RemoteError> {
        let claims = format!("{}/claims/", self.base);
        let url = format!("{claims}{name}/");
        if let Some(created) = self.mkcol(&url)? {
            return Ok(created);
        }
        // The parent collections do not exist yet (a fresh remote): make each of them,
        // outermost first, from the first one of the URL's path down to `claims/`.
        let path = self.base.find("://").and_then(|at| self.base[at + 3..].find('/').map(|slash| at + 3 + slash));
        if let Some(path) = path {
            for (at, _) in claims.match_indices('/').filter(|(at, _)| *at > path) {
                self.mkcol(&claims[..=at])?;
            }
        }
        self.mkcol(&url)?.ok_or_else(|| unavailable(&url, "MKCOL: 409 Conflict"))
    }

    fn get_claim(&self, name: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let url = format!("{}/claims/{name}/lease", self.base);
        get(&self.agent, &url, &url)
    }

    fn put_claim(&self, name: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        self.put_raw("claims", &format!("{name}/lease"), bytes)
    }

    fn remove_claim(&self, name: &str) {
        // Needs `dav_methods ... DELETE`; without it the empty collection stays.
        let url = format!("{}/claims/{name}/", self.base);
        self.agent.delete(&format!("{url}lease")).call().ok();
        self.agent.delete(&url).call().ok();
    }

    fn describe(&self) -> String {
        redact(&self.base)
    }
}

impl HttpRemote {
    fn put_raw(&self, kind: &str, name: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        let url = self.url(kind, name);
        match self.agent.put(&url).send_bytes(bytes) {
            Ok(_) => Ok(()),
            Err(error) => Err(unavailable(&url, error)),
        }
    }
}
