//! The action cache: stage key -> manifest (artifact hashes, metrics, timings).
//!
//! A manifest is written atomically and only after every object it names is in the
//! store, so a manifest that exists always points at complete objects. On lookup
//! each object is re-verified; a missing or corrupt one turns the hit into a miss
//! (the stage re-runs) and is moved to `quarantine/`. Failures are never stored.
//!
//! On disk a manifest carries a digest of its own content (`"digest"`: blake3 of the
//! manifest's canonical JSON), so a manifest edited by hand (a metric changed, an
//! artifact swapped) no longer matches its digest: it is treated as corrupt, a miss
//! that is moved to `quarantine/`, and `pipe fsck` reports it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{write_atomic, ArtifactHash, CacheError, KeyInputs, StageKey, Store};

/// Named scalar results of a stage (`train_loss`, `n_train`, ...).
pub type Metrics = BTreeMap<String, f64>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub hash: ArtifactHash,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub stage: String,
    pub key: StageKey,
    pub inputs: KeyInputs,
    /// File name (with its natural extension) -> stored object.
    pub artifacts: BTreeMap<String, ArtifactRef>,
    pub metrics: Metrics,
    /// Seconds the stage took when it ran.
    pub secs: f64,
}

/// A stored manifest without its key inputs (skipped unparsed), for a build's hit on
/// an entry already checked whole ([`ActionCache::get_output`]).
#[derive(Deserialize)]
struct ManifestHead {
    key: StageKey,
    artifacts: BTreeMap<String, ArtifactRef>,
    metrics: Metrics,
}

/// What separates a stored manifest's JSON body from the digest of that body: the
/// digest is the last field, so the body is the file without it, byte for byte.
const DIGEST_FIELD: &str = ",\n  \"digest\": \"";

impl Manifest {
    /// The bytes stored in `actions/`: the manifest's pretty JSON with one last field,
    /// `"digest"`, the blake3 of the JSON without that field.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut body = serde_json::to_vec_pretty(self)?;
        let digest = blake3::hash(&body).to_hex();
        // `body` ends with "\n}": insert the field before the closing brace.
        body.truncate(body.len() - 2);
        body.extend_from_slice(format!("{DIGEST_FIELD}{digest}\"\n}}").as_bytes());
        Ok(body)
    }

    /// Parses stored bytes, checking the digest: a manifest edited after it was written
    /// (a metric, an artifact hash, even its formatting) is an error.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        let Some(at) = text.rfind(DIGEST_FIELD) else {
            // Parse anyway, to say "invalid JSON" when that is the problem.
            serde_json::from_str::<Manifest>(text).map_err(|err| format!("invalid JSON: {err}"))?;
            return Err("it carries no digest of its content".into());
        };
        let (body_head, rest) = text.split_at(at);
        let recorded = rest[DIGEST_FIELD.len()..].strip_suffix("\"\n}").unwrap_or_default();
        // The digest covers the body closed as it was written: `{body_head}\n}`.
        let actual = blake3::Hasher::new().update(body_head.as_bytes()).update(b"\n}").finalize().to_hex();
        let manifest: Manifest = serde_json::from_str(text).map_err(|err| format!("invalid JSON: {err}"))?;
        if recorded != actual.as_str() {
            return Err("its content does not match its digest (edited after it was written)".into());
        }
        Ok(manifest)
    }
}

#[derive(Debug, Clone)]
pub struct ActionCache {
    root: PathBuf,
    actions: PathBuf,
    last: PathBuf,
    quarantine: PathBuf,
    store: Store,
    /// A shared remote cache behind this one, if configured.
    remote: Option<std::sync::Arc<crate::remote::Tier>>,
}

impl ActionCache {
    pub(crate) fn new(root: &Path, store: Store) -> ActionCache {
        ActionCache {
            root: root.to_path_buf(),
            actions: root.join("actions"),
            last: root.join("last"),
            quarantine: root.join("quarantine"),
            store,
            remote: None,
        }
    }

    pub(crate) fn set_remote(&mut self, remote: std::sync::Arc<crate::remote::Tier>) {
        self.remote = Some(remote);
    }

    pub fn remote(&self) -> Option<&crate::remote::Tier> {
        self.remote.as_deref()
    }

    pub(crate) fn remote_tier(&self) -> Option<std::sync::Arc<crate::remote::Tier>> {
        self.remote.clone()
    }

    /// The entry of `key` from the remote cache, written locally once every object it
    /// names is in the local store and verified (a corrupt remote object is refused).
    pub(crate) fn fetch(&self, key: &StageKey) -> Option<Manifest> {
        let tier = self.remote.as_deref()?;
        let bytes = tier.call(|remote| remote.get_action(key))??;
        let manifest = match Manifest::decode(&bytes) {
            Ok(manifest) if manifest.key == *key && manifest.inputs.key() == *key => manifest,
            _ => {
                tracing::warn!(key = %key.short(), remote = %tier.describe(), "remote action entry is corrupt: not used");
                return None;
            }
        };
        for (name, artifact) in &manifest.artifacts {
            if self.store.verify(&artifact.hash) {
                continue;
            }
            let bytes = tier.call(|remote| remote.get_object(&artifact.hash))??;
            if crate::ArtifactHash::of(&bytes) != artifact.hash {
                tracing::warn!(stage = %manifest.stage, artifact = %name, hash = %artifact.hash.short(),
                    remote = %tier.describe(), "remote object is corrupt (its bytes do not match its hash): not used");
                return None;
            }
            tier.count_fetch(bytes.len());
            if let Err(err) = self.store.put(&bytes) {
                tracing::warn!(%err, "could not store a fetched object");
                return None;
            }
        }
        write_atomic(&self.root, &self.path(key), &bytes).ok()?;
        Some(manifest)
    }

    /// Uploads the objects of `manifest` the remote lacks, then the entry itself.
    fn upload(&self, manifest: &Manifest, entry: &[u8]) {
        let Some(tier) = self.remote.as_deref() else { return };
        for artifact in manifest.artifacts.values() {
            let Some(present) = tier.call(|remote| remote.has_object(&artifact.hash)) else { return };
            if present {
                continue;
            }
            let Ok(bytes) = self.store.get(&artifact.hash) else { return };
            if tier.call(|remote| remote.put_object(&artifact.hash, &bytes)).is_none() {
                return;
            }
            tier.count_upload();
        }
        tier.call(|remote| remote.put_action(&manifest.key, entry));
    }

    pub(crate) fn path(&self, key: &StageKey) -> PathBuf {
        let hex = key.to_hex();
        self.actions.join(&hex[..2]).join(format!("{hex}.json"))
    }

    /// The manifest stored under `key`, if it and every object it names are intact.
    pub fn get(&self, key: &StageKey) -> Option<Manifest> {
        self.get_local(key).or_else(|| self.fetch(key))
    }

    fn get_local(&self, key: &StageKey) -> Option<Manifest> {
        let path = self.path(key);
        self.check_entry(key, &path, &self.read_entry(&path)?)
    }

    /// The bytes of the entry at `path`, if it can be read.
    fn read_entry(&self, path: &Path) -> Option<Vec<u8>> {
        match crate::fs::read(&self.root, path) {
            Ok(bytes) => Some(bytes),
            Err(err) if crate::fs::is_not_found(&err) => None,
            Err(err) => {
                tracing::warn!(%err, "unreadable action entry, re-running its stage");
                None
            }
        }
    }

    /// The entry `bytes` read from `path` for `key`, checked whole: its digest, its key
    /// and inputs, its objects. A bad entry is moved aside, and so is a damaged object.
    fn check_entry(&self, key: &StageKey, path: &Path, bytes: &[u8]) -> Option<Manifest> {
        let manifest = match Manifest::decode(bytes) {
            Ok(manifest) => manifest,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "corrupt action entry, re-running its stage");
                self.quarantine_file(path);
                return None;
            }
        };
        if manifest.key != *key || manifest.inputs.key() != *key {
            tracing::warn!(path = %path.display(), "action entry does not match its key, re-running its stage");
            self.quarantine_file(path);
            return None;
        }
        for (name, artifact) in &manifest.artifacts {
            if !self.store.verify(&artifact.hash) {
                tracing::warn!(stage = %manifest.stage, artifact = %name, hash = %artifact.hash.short(),
                    "cached artifact is missing or corrupt, re-running its stage");
                self.store.quarantine(&artifact.hash).ok();
                return None;
            }
        }
        Some(manifest)
    }

    /// The artifacts and metrics of the entry under `key`, as [`ActionCache::get`]
    /// gives them, for a build (which knows the key inputs). An entry whose bytes are
    /// those [`ActionCache::get`] last checked whole (the stat cache holds its
    /// blake3 for its unchanged stat) is not decoded and re-keyed again: a tune's entry
    /// names every member artifact among its inputs, a megabyte of JSON. Its objects
    /// are verified either way.
    pub fn get_output(&self, key: &StageKey) -> Option<(BTreeMap<String, ArtifactRef>, Metrics)> {
        let path = self.path(key);
        let Some(bytes) = self.read_entry(&path) else {
            return self.fetch(key).map(|manifest| (manifest.artifacts, manifest.metrics));
        };
        let content = ArtifactHash::of(&bytes);
        let stats = self.store.stats();
        if stats.unchanged(&path, &content) {
            let head = serde_json::from_slice::<ManifestHead>(&bytes).ok().filter(|head| head.key == *key);
            if let Some(head) = head {
                if head.artifacts.values().all(|artifact| self.store.verify(&artifact.hash)) {
                    return Some((head.artifacts, head.metrics));
                }
            }
        }
        match self.check_entry(key, &path, &bytes) {
            Some(manifest) => {
                // Checked whole just now: remember its bytes for the next build.
                stats.remember_content(&path, content);
                Some((manifest.artifacts, manifest.metrics))
            }
            None => self.fetch(key).map(|manifest| (manifest.artifacts, manifest.metrics)),
        }
    }

    /// The manifest stored under `key` without checking its objects and without moving
    /// anything aside: for readers that must not change the cache (`pipe diff`, `pipe
    /// verify`, `pipe gc`). A build uses [`ActionCache::get`].
    pub fn peek(&self, key: &StageKey) -> Option<Manifest> {
        let bytes = crate::fs::read(&self.root, &self.path(key)).ok()?;
        let manifest = Manifest::decode(&bytes).ok()?;
        (manifest.key == *key && manifest.inputs.key() == *key).then_some(manifest)
    }

    /// Records a successful stage execution. Its objects must already be stored.
    pub fn put(&self, manifest: &Manifest) -> Result<(), CacheError> {
        for artifact in manifest.artifacts.values() {
            if self.store.path(&artifact.hash).symlink_metadata().is_err() {
                return Err(CacheError::Missing { hash: artifact.hash.to_hex() });
            }
        }
        let bytes = manifest.encode().map_err(|source| CacheError::Json { path: self.path(&manifest.key), source })?;
        write_atomic(&self.root, &self.path(&manifest.key), &bytes)?;
        self.set_last(manifest)?;
        // Write-through, after the local success.
        self.upload(manifest, &bytes);
        Ok(())
    }

    /// Remembers `manifest` as the latest build of its stage (used by `pipe status`):
    /// `last/<stage>.json`, its key inputs, then `last/<stage>.key`, their key. The key
    /// file is removed first, so one that exists always names the JSON beside it.
    pub fn set_last(&self, manifest: &Manifest) -> Result<(), CacheError> {
        let path = self.last.join(format!("{}.json", manifest.stage));
        let bytes = serde_json::to_vec_pretty(&manifest.inputs)
            .map_err(|source| CacheError::Json { path: path.clone(), source })?;
        let key_path = self.last.join(format!("{}.key", manifest.stage));
        match crate::fs::remove_file(&self.root, &key_path) {
            Err(err) if !crate::fs::is_not_found(&err) => return Err(err),
            _ => {}
        }
        write_atomic(&self.root, &path, &bytes)?;
        write_atomic(&self.root, &key_path, last_key_line(&manifest.inputs.key(), bytes.len() as u64).as_bytes())
    }

    /// Whether `last/<stage>.json` holds `inputs` (whose key is `key`) as
    /// [`ActionCache::set_last`] writes them: by its key file when there is one (a
    /// tune's inputs name thousands of member artifacts), else compared as bytes.
    pub fn last_is(&self, stage: &str, key: &StageKey, inputs: &KeyInputs) -> bool {
        let path = self.last.join(format!("{stage}.json"));
        let key_path = self.last.join(format!("{stage}.key"));
        if let Ok(recorded) = crate::fs::read(&self.root, &key_path) {
            // The key, and the JSON's length (a file edited to another length reads as changed).
            let len = crate::fs::guard(&self.root, &path).ok().and_then(|()| path.symlink_metadata().ok());
            return len.is_some_and(|meta| meta.is_file() && recorded == last_key_line(key, meta.len()).as_bytes());
        }
        let Ok(bytes) = crate::fs::read(&self.root, &path) else { return false };
        // Encoded straight against the file's bytes (no second megabyte for a tune).
        let mut rest = Compare { rest: &bytes };
        let same = serde_json::to_writer_pretty(&mut rest, inputs).is_ok() && rest.rest.is_empty();
        if same {
            // Written by a pipe before key files: the next build compares keys.
            write_atomic(&self.root, &key_path, last_key_line(key, bytes.len() as u64).as_bytes()).ok();
        }
        same
    }

    /// Key inputs of the latest build of `stage`, if any.
    pub fn last(&self, stage: &str) -> Option<KeyInputs> {
        let bytes = crate::fs::read(&self.root, &self.last.join(format!("{stage}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn quarantine_file(&self, path: &Path) {
        if let Some(name) = path.file_name() {
            crate::fs::rename(&self.root, path, &self.quarantine.join(name)).ok();
        }
    }
}

/// What `last/<stage>.key` holds: the key, then the length of `last/<stage>.json`.
fn last_key_line(key: &StageKey, json_len: u64) -> String {
    format!("{} {json_len}\n", key.to_hex())
}

/// A writer that checks what is written against `rest`, consuming it; the first
/// difference is an error, which stops the encoder.
struct Compare<'a> {
    rest: &'a [u8],
}

impl std::io::Write for Compare<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self.rest.strip_prefix(bytes) {
            Some(rest) => {
                self.rest = rest;
                Ok(bytes.len())
            }
            None => Err(std::io::Error::other("differs")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cache;

    fn manifest(cache: &Cache, payload: &[u8]) -> Manifest {
        let hash = cache.store().put(payload).unwrap();
        let inputs = KeyInputs {
            stage: "data".into(),
            stage_version: 1,
            tool_version: "test".into(),
            knobs: BTreeMap::from([("data.seed".into(), "int:0".into())]),
            upstream: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
            device: "cpu".into(),
            dtype: "f32".into(),
        };
        Manifest {
            stage: "data".into(),
            key: inputs.key(),
            inputs,
            artifacts: BTreeMap::from([(
                "dataset.safetensors".into(),
                ArtifactRef { hash, bytes: payload.len() as u64 },
            )]),
            metrics: Metrics::from([("n_train".into(), 3.0)]),
            secs: 0.5,
        }
    }

    #[test]
    fn a_build_reads_an_entry_checked_before_without_decoding_its_inputs_and_still_sees_edits() {
        let dir = crate::store::tests::test_dir("action-output");
        let cache = Cache::open(&dir).unwrap();
        let manifest = manifest(&cache, b"tensor bytes");
        cache.actions().put(&manifest).unwrap();
        let want = Some((manifest.artifacts.clone(), manifest.metrics.clone()));
        let path = cache.actions().path(&manifest.key);
        // The first read checks the entry whole and remembers its bytes by stat.
        assert_eq!(cache.actions().get_output(&manifest.key), want);
        let bytes = std::fs::read(&path).unwrap();
        assert!(cache.stats().unchanged(&path, &ArtifactHash::of(&bytes)));
        assert_eq!(cache.actions().get_output(&manifest.key), want);
        // An edit of the same length (and its stat put back) is still caught by its bytes.
        let text = String::from_utf8(bytes.clone()).unwrap().replace("\"int:0\"", "\"int:1\"");
        assert_eq!(text.len(), bytes.len());
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&path, perms).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        assert_eq!(cache.actions().get_output(&manifest.key), None, "an edited entry is a miss");
        // A lost object is a miss on the fast path too.
        cache.actions().put(&manifest).unwrap();
        assert_eq!(cache.actions().get_output(&manifest.key), want);
        std::fs::remove_file(cache.store().path(&manifest.artifacts["dataset.safetensors"].hash)).unwrap();
        assert_eq!(cache.actions().get_output(&manifest.key), None, "a missing object is a miss");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn hit_after_put_and_miss_after_corruption() {
        let dir = crate::store::tests::test_dir("action");
        let cache = Cache::open(&dir).unwrap();
        let manifest = manifest(&cache, b"tensor bytes");
        assert!(cache.actions().get(&manifest.key).is_none());
        cache.actions().put(&manifest).unwrap();
        assert_eq!(cache.actions().get(&manifest.key), Some(manifest.clone()));
        assert_eq!(cache.actions().last("data"), Some(manifest.inputs.clone()));
        let key = manifest.key;
        assert!(cache.actions().last_is("data", &key, &manifest.inputs));
        let mut other = manifest.inputs.clone();
        other.knobs.insert("train.lr".into(), "f64:0.5".into());
        assert!(!cache.actions().last_is("data", &other.key(), &other));
        assert!(!cache.actions().last_is("train", &key, &manifest.inputs));
        // A file with more, or fewer, bytes than the encoding is not the same either,
        // by its key file or (without one) by its bytes.
        let last = dir.join("last/data.json");
        let bytes = std::fs::read(&last).unwrap();
        for key_file in [true, false] {
            std::fs::write(&last, [bytes.as_slice(), b"\n"].concat()).unwrap();
            assert!(!cache.actions().last_is("data", &key, &manifest.inputs));
            std::fs::write(&last, &bytes[..bytes.len() - 1]).unwrap();
            assert!(!cache.actions().last_is("data", &key, &manifest.inputs));
            std::fs::write(&last, &bytes).unwrap();
            if !key_file {
                std::fs::remove_file(dir.join("last/data.key")).unwrap();
            }
            assert!(cache.actions().last_is("data", &key, &manifest.inputs));
            // The comparison by bytes wrote the key file again.
            assert!(dir.join("last/data.key").exists());
        }
        // A key file names the JSON beside it only: with the JSON gone, nothing is the last.
        std::fs::remove_file(&last).unwrap();
        assert!(!cache.actions().last_is("data", &key, &manifest.inputs));
        std::fs::write(&last, &bytes).unwrap();

        let object = cache.store().path(&manifest.artifacts["dataset.safetensors"].hash);
        std::fs::remove_file(&object).unwrap();
        assert!(cache.actions().get(&manifest.key).is_none(), "missing object is a miss");

        // A garbage manifest is a miss, not a crash.
        let manifest = self::manifest(&cache, b"tensor bytes");
        cache.actions().put(&manifest).unwrap();
        let path = cache.actions().path(&manifest.key);
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(cache.actions().get(&manifest.key).is_none());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn edited_manifest_is_corrupt() {
        let dir = crate::store::tests::test_dir("action-edited");
        let cache = Cache::open(&dir).unwrap();
        let manifest = manifest(&cache, b"tensor bytes");
        cache.actions().put(&manifest).unwrap();
        let path = cache.actions().path(&manifest.key);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"digest\""), "{text}");
        assert_eq!(Manifest::decode(text.as_bytes()), Ok(manifest.clone()));
        // A metric edited by hand is not served.
        std::fs::write(&path, text.replace("\"n_train\": 3.0", "\"n_train\": 4.0")).unwrap();
        assert!(cache.actions().peek(&manifest.key).is_none());
        assert!(cache.actions().get(&manifest.key).is_none());
        assert!(!path.exists(), "moved to quarantine");
        assert!(std::fs::read_dir(dir.join("quarantine")).unwrap().count() == 1);
        // A manifest without a digest is not trusted either.
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
        value.as_object_mut().unwrap().remove("digest");
        std::fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
        assert!(cache.actions().get(&manifest.key).is_none());
        std::fs::remove_dir_all(&dir).ok();
    }
}
