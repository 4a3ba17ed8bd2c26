//! `s3://bucket/prefix`: the same layout as the HTTP remote (`<prefix>/cas/<hash>`,
//! `<prefix>/ac/<key>`, `<prefix>/claims/<name>`) in an S3 bucket. Requests are
//! presigned with SigV4 by `rusty-s3` (no I/O of its own) and sent with our `ureq`.
//!
//! Everything comes from the environment, never from pipe.toml: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`; without a key the requests are
//! unsigned), `AWS_REGION` or `AWS_DEFAULT_REGION` (default `us-east-1`), and
//! `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` for an S3-compatible server (path-style
//! URLs; without one, AWS itself over https, virtual-host style). Messages name `s3://bucket/prefix/...`, never a signed URL. Claims are
//! created with a conditional `PUT` (`If-None-Match: *`: 412 when the object exists),
//! which S3 has honoured since 2024.

use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action as _, UrlStyle};

use super::http::{agent, get, head, unavailable};
use super::{Remote, RemoteError};
use crate::{ArtifactHash, StageKey};

/// How long a presigned URL stays valid: only for the request made right away.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);

pub struct S3Remote {
    bucket: Bucket,
    credentials: Option<Credentials>,
    prefix: String,
    /// `s3://bucket/prefix`, for messages.
    shown: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for S3Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("S3Remote").field("remote", &self.shown).finish_non_exhaustive()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|value| value.trim().to_string()).filter(|value| !value.is_empty())
}

impl S3Remote {
    /// Opens `s3://bucket/prefix` with the endpoint, region and credentials of the
    /// environment.
    pub fn open(url: &str) -> Result<S3Remote, RemoteError> {
        let invalid = |why: &str| RemoteError::Invalid { url: super::redact(url), message: why.to_string() };
        let rest = url.strip_prefix("s3://").ok_or_else(|| invalid("not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || bucket.contains(['@', ':']) {
            return Err(invalid("expected s3://bucket/prefix (credentials come from AWS_* variables, never the URL)"));
        }
        let region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into());
        let (endpoint, style) = match env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")) {
            Some(endpoint) => (endpoint, UrlStyle::Path),
            None => (format!("https://s3.{region}.amazonaws.com"), UrlStyle::VirtualHost),
        };
        let endpoint = endpoint.parse().map_err(|_| invalid("AWS_ENDPOINT_URL is not a URL"))?;
        let bucket = Bucket::new(endpoint, style, bucket.to_string(), region)
            .map_err(|error| invalid(&format!("bucket: {error}")))?;
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        Ok(S3Remote {
            shown: format!("s3://{}/{prefix}", bucket.name()).trim_end_matches('/').to_string(),
            bucket,
            credentials: Credentials::from_env(),
            prefix,
            agent: agent(),
        })
    }

    fn object(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}/{name}", self.prefix)
    }

    fn shown(&self, object: &str) -> String {
        format!("s3://{}/{object}", self.bucket.name())
    }

    fn get(&self, object: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let url = self.bucket.get_object(self.credentials.as_ref(), object).sign(SIGNED_FOR);
        get(&self.agent, url.as_str(), &self.shown(object))
    }

    /// `PUT`; with `create_only`, `Ok(false)` when the object already exists.
    fn put(&self, object: &str, bytes: &[u8], create_only: bool) -> Result<bool, RemoteError> {
        let mut action = self.bucket.put_object(self.credentials.as_ref(), object);
        if create_only {
            action.headers_mut().insert("if-none-match", "*");
        }
        let url = action.sign(SIGNED_FOR);
        let mut request = self.agent.put(url.as_str());
        if create_only {
            request = request.set("If-None-Match", "*");
        }
        match request.send_bytes(bytes) {
            Ok(_) => Ok(true),
            // 412: it exists; 409: another conditional write of it is under way.
            Err(ureq::Error::Status(412 | 409, _)) if create_only => Ok(false),
            Err(error) => Err(unavailable(&self.shown(object), error)),
        }
    }
}

impl Remote for S3Remote {
    fn get_object(&self, hash: &ArtifactHash) -> Result<Option<Vec<u8>>, RemoteError> {
        self.get(&self.object("cas", &hash.to_hex()))
    }

    fn has_object(&self, hash: &ArtifactHash) -> Result<bool, RemoteError> {
        let object = self.object("cas", &hash.to_hex());
        let url = self.bucket.head_object(self.credentials.as_ref(), &object).sign(SIGNED_FOR);
        head(&self.agent, url.as_str(), &self.shown(&object))
    }

    fn put_object(&self, hash: &ArtifactHash, bytes: &[u8]) -> Result<(), RemoteError> {
        self.put(&self.object("cas", &hash.to_hex()), bytes, false).map(drop)
    }

    fn get_action(&self, key: &StageKey) -> Result<Option<Vec<u8>>, RemoteError> {
        self.get(&self.object("ac", &key.to_hex()))
    }

    fn put_action(&self, key: &StageKey, bytes: &[u8]) -> Result<(), RemoteError> {
        self.put(&self.object("ac", &key.to_hex()), bytes, false).map(drop)
    }

    fn create_claim(&self, name: &str) -> Result<bool, RemoteError> {
        self.put(&self.object("claims", name), b"", true)
    }

    fn get_claim(&self, name: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        self.get(&self.object("claims", name))
    }

    fn put_claim(&self, name: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        self.put(&self.object("claims", name), bytes, false).map(drop)
    }

    fn remove_claim(&self, name: &str) {
        let object = self.object("claims", name);
        let url = self.bucket.delete_object(self.credentials.as_ref(), &object).sign(SIGNED_FOR);
        self.agent.delete(url.as_str()).call().ok();
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }
}
