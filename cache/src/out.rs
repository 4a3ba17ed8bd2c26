//! Stable, human-friendly paths to the latest artifacts of each stage:
//! `.pipe/out/<stage>/<name>`. Editing one can never corrupt the store, so they are
//! never links to objects: each is a copy-on-write clone of its object where the file
//! system has them (btrfs, XFS: no extra space), else a copy; and an artifact of at
//! least [`LAZY_BYTES`] on a file system without clones is not copied at all until
//! someone asks for it ([`OutDir::ensure`]), so a 220 MB dataset is not stored twice.
//! `out/<stage>/<name>.lazy.txt` then says where its bytes are.
//!
//! A marker (`out/<stage>/.key`) records the key the directory was written for and the
//! (size, mtime, inode) of every file written; a file whose stat differs was edited
//! (or removed, or replaced) and is written again on the next refresh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fs::{create_dirs, guard, remove_file, write_atomic};
use crate::{ArtifactHash, ArtifactRef, CacheError, Manifest, Metrics, StageKey, Store};

/// Artifacts at least this large are materialised lazily where clones are not available.
pub const LAZY_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum How {
    Clone,
    Copy,
    Lazy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Written {
    hash: ArtifactHash,
    how: How,
    /// (size, mtime in ns, inode) right after writing; absent for a lazy artifact.
    stat: Option<(u64, i128, u64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    key: String,
    files: BTreeMap<String, Written>,
}

#[derive(Debug, Clone)]
pub struct OutDir {
    root: PathBuf,
    out: PathBuf,
    store: Store,
    lazy_bytes: u64,
}

fn stat(path: &Path) -> Option<(u64, i128, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    Some((meta.len(), mtime_ns, meta.ino()))
}

impl OutDir {
    pub(crate) fn new(root: &Path, store: Store) -> OutDir {
        OutDir { root: root.to_path_buf(), out: root.join("out"), store, lazy_bytes: LAZY_BYTES }
    }

    /// The same directory with another lazy threshold (`u64::MAX`: always copy).
    pub fn with_lazy_bytes(mut self, bytes: u64) -> OutDir {
        self.lazy_bytes = bytes;
        self
    }

    /// The stable path of artifact `name` of `stage`.
    pub fn path(&self, stage: &str, name: &str) -> PathBuf {
        self.out.join(stage).join(name)
    }

    fn marker_path(&self, stage: &str) -> PathBuf {
        self.out.join(stage).join(".key")
    }

    fn marker(&self, stage: &str) -> Marker {
        crate::fs::read(&self.root, &self.marker_path(stage))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save_marker(&self, stage: &str, marker: &Marker) -> Result<(), CacheError> {
        let path = self.marker_path(stage);
        let bytes =
            serde_json::to_vec_pretty(marker).map_err(|source| CacheError::Json { path: path.clone(), source })?;
        write_atomic(&self.root, &path, &bytes)
    }

    /// Whether `out/<stage>/<name>` is what was written for `artifact` and untouched since.
    fn intact(&self, stage: &str, name: &str, artifact: &ArtifactRef, written: Option<&Written>) -> bool {
        let Some(written) = written.filter(|w| w.hash == artifact.hash) else { return false };
        let path = self.path(stage, name);
        match written.how {
            How::Lazy => std::fs::symlink_metadata(&path).is_err(),
            How::Clone | How::Copy => {
                written.stat.is_some()
                    && stat(&path) == written.stat
                    && written.stat.map(|s| s.0) == Some(artifact.bytes)
            }
        }
    }

    /// Makes `out/<stage>/` hold exactly the artifacts of `manifest`. Cheap when it
    /// already does; a file edited, removed or replaced since it was written is written
    /// again, and nothing else is touched.
    pub fn materialize(&self, manifest: &Manifest) -> Result<(), CacheError> {
        let stage = &manifest.stage;
        let dir = self.out.join(stage);
        create_dirs(&self.root, &dir)?;
        let old = self.marker(stage);
        let mut marker = Marker { key: manifest.key.to_hex(), files: BTreeMap::new() };
        let mut changed = old.key != marker.key;
        for (name, artifact) in &manifest.artifacts {
            if let Some(previous) = old.files.get(name).filter(|w| self.intact(stage, name, artifact, Some(w))) {
                marker.files.insert(name.clone(), previous.clone());
                continue;
            }
            changed = true;
            marker.files.insert(name.clone(), self.write(stage, name, artifact, false)?);
        }
        // Files of an earlier manifest that this one does not have.
        let keep: Vec<String> = manifest
            .artifacts
            .keys()
            .flat_map(|name| [name.clone(), format!("{name}.lazy.txt")])
            .chain([".key".to_string()])
            .collect();
        for entry in std::fs::read_dir(&dir).map_err(|source| CacheError::Io { path: dir.clone(), source })?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            changed = true;
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => crate::fs::remove_tree(&self.root, &entry.path())?,
                _ => remove_file(&self.root, &entry.path())?,
            }
        }
        if changed || marker != old {
            self.save_marker(stage, &marker)?;
        }
        Ok(())
    }

    /// Where the bytes of artifact `name` of `stage` can be read now: its copy in
    /// `out/` when there is one, else (a lazy artifact, or a copy not made yet) the
    /// read-only object in the store; `true` in the second case. Never a path that
    /// does not exist while the object does.
    pub fn locate(&self, stage: &str, name: &str, artifact: &ArtifactRef) -> (PathBuf, bool) {
        let path = self.path(stage, name);
        let copied = std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_file() && meta.len() == artifact.bytes);
        if copied {
            (path, false)
        } else {
            (self.store.path(&artifact.hash), true)
        }
    }

    /// Makes sure `out/<stage>/<name>` exists as a file of its own (materialising a lazy
    /// artifact now) and returns its path. `manifest` must be the stage's latest.
    pub fn ensure(&self, manifest: &Manifest, name: &str) -> Result<PathBuf, CacheError> {
        let stage = &manifest.stage;
        let artifact =
            manifest.artifacts.get(name).ok_or_else(|| CacheError::Missing { hash: format!("{stage}/{name}") })?;
        let mut marker = self.marker(stage);
        if marker.key != manifest.key.to_hex() {
            self.materialize(manifest)?;
            marker = self.marker(stage);
        }
        let written = marker.files.get(name);
        let present = written.is_some_and(|w| w.how != How::Lazy) && self.intact(stage, name, artifact, written);
        if !present {
            let written = self.write(stage, name, artifact, true)?;
            marker.files.insert(name.to_string(), written);
            self.save_marker(stage, &marker)?;
        }
        Ok(self.path(stage, name))
    }

    /// Writes one artifact: a clone, a copy, or (large, no clones, not `eager`) nothing
    /// but a note saying where its bytes are.
    fn write(&self, stage: &str, name: &str, artifact: &ArtifactRef, eager: bool) -> Result<Written, CacheError> {
        let path = self.path(stage, name);
        let note = self.out.join(stage).join(format!("{name}.lazy.txt"));
        guard(&self.root, &path)?;
        if !self.store.verify(&artifact.hash) {
            return Err(CacheError::Corrupt { hash: artifact.hash.to_hex(), actual: "something else".into() });
        }
        let object = self.store.path(&artifact.hash);
        if crate::fs::try_clone(&self.root, &object, &path)? {
            remove_file(&self.root, &note)?;
            return Ok(Written { hash: artifact.hash, how: How::Clone, stat: stat(&path) });
        }
        if artifact.bytes >= self.lazy_bytes && !eager {
            remove_file(&self.root, &path)?;
            let text = format!(
                "{name} ({} bytes) is not copied here, to save space: its bytes are the read-only object\n\
                 {} (blake3 {}).\nCopy that file before editing it; `pipe` materialises this path when it needs it.\n",
                artifact.bytes,
                crate::fs::shown(&self.root, &object).display(),
                artifact.hash.to_hex(),
            );
            write_atomic(&self.root, &note, text.as_bytes())?;
            return Ok(Written { hash: artifact.hash, how: How::Lazy, stat: None });
        }
        let mut source = crate::fs::open_read(&self.root, &object)?;
        crate::fs::write_atomic_with(&self.root, &path, |file| std::io::copy(&mut source, file).map(|_| ()))?;
        remove_file(&self.root, &note)?;
        Ok(Written { hash: artifact.hash, how: How::Copy, stat: stat(&path) })
    }
}

/// The member record's file in `out/`.
const MEMBERS_FILE: &str = ".members.txt";

/// What `out/` holds for the members of fan-in stages (trials, rungs, ensemble
/// members), by instance name: the key each was last settled under and its output.
/// Saved as `out/.members.txt` (`record.rs`: tab-separated lines, then their blake3;
/// a torn or hand-edited file is ignored). A build settles a member whose key is recorded from
/// here instead of reading and verifying its action entry and re-checking its copies
/// in `out/` and `last/`: a no-op of a 1,000-trial tune is then one read, not 1,000
/// entry decodes, 1,000 `last/` reads and 1,000 directories. Copies of members are
/// written whenever a member's key or output changes.
#[derive(Debug)]
pub struct MemberRecord {
    root: PathBuf,
    path: PathBuf,
    members: BTreeMap<String, RecordedMember>,
    dirty: bool,
}

/// One member's latest key and output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedMember {
    pub key: StageKey,
    /// Shared with the outputs made from the record (`Arc`: no copies per lookup).
    pub artifacts: std::sync::Arc<BTreeMap<String, ArtifactRef>>,
    pub metrics: std::sync::Arc<Metrics>,
}

impl OutDir {
    /// The member record (empty when there is none, or it cannot be trusted).
    pub fn members(&self) -> MemberRecord {
        let path = self.out.join(MEMBERS_FILE);
        let members =
            crate::fs::read(&self.root, &path).ok().and_then(|bytes| crate::record::decode(&bytes)).unwrap_or_default();
        MemberRecord { root: self.root.clone(), path, members, dirty: false }
    }
}

impl MemberRecord {
    /// The output recorded for member `name` under exactly `key`.
    pub fn get(&self, name: &str, key: &StageKey) -> Option<&RecordedMember> {
        self.members.get(name).filter(|member| member.key == *key)
    }

    /// Records `member` as the latest result of `name`.
    pub fn insert(&mut self, name: &str, member: RecordedMember) {
        if self.members.get(name) != Some(&member) {
            self.members.insert(name.to_string(), member);
            self.dirty = true;
        }
    }

    /// Forgets `name` (its objects were found damaged: the next build looks it up again).
    pub fn forget(&mut self, name: &str) {
        self.dirty |= self.members.remove(name).is_some();
    }

    /// Keeps only the members `keep` names (those of the latest build): the record
    /// does not grow with every count and space ever searched.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let before = self.members.len();
        self.members.retain(|name, _| keep(name));
        self.dirty |= self.members.len() != before;
    }

    /// The hashes of every object the record names (repeats included).
    pub fn hashes(&self) -> impl Iterator<Item = &ArtifactHash> {
        self.members.values().flat_map(|member| member.artifacts.values().map(|artifact| &artifact.hash))
    }

    /// The names of the members recorded.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// Writes the record back if anything changed.
    pub fn save(&mut self) -> Result<(), CacheError> {
        if !self.dirty {
            return Ok(());
        }
        let bytes = crate::record::encode(&self.members);
        let dir = self.path.parent().unwrap_or(&self.root);
        create_dirs(&self.root, dir)?;
        write_atomic(&self.root, &self.path, &bytes)?;
        // The JSON record of earlier versions, now unread.
        remove_file(&self.root, &dir.join(".members.json")).ok();
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cache;

    fn manifest(cache: &Cache, files: &[(&str, &[u8])]) -> Manifest {
        let mut artifacts = BTreeMap::new();
        for (name, bytes) in files {
            let hash = cache.store().put(bytes).unwrap();
            artifacts.insert(name.to_string(), ArtifactRef { hash, bytes: bytes.len() as u64 });
        }
        let mut manifest = crate::fsck::tests::manifest(cache, "train", b"x");
        manifest.artifacts = artifacts;
        manifest
    }

    #[test]
    fn edited_out_copy_is_refreshed_and_never_touches_the_store() {
        let dir = crate::store::tests::test_dir("out-edit");
        let cache = Cache::open(&dir).unwrap();
        let manifest = manifest(&cache, &[("metrics.json", b"{\"loss\": 1}"), ("weights.bin", b"0123456789")]);
        let out = cache.out();
        out.materialize(&manifest).unwrap();
        let path = out.path("train", "metrics.json");
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"loss\": 1}");

        // Same size, new bytes: caught by the mtime.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"{\"loss\": 0}").unwrap();
        out.materialize(&manifest).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"loss\": 1}", "the edited copy is refreshed");
        assert!(cache.store().verify_deep(&manifest.artifacts["metrics.json"].hash), "the store was never touched");

        // Removed, or replaced by a link: written again as a file.
        std::fs::remove_file(out.path("train", "weights.bin")).unwrap();
        out.materialize(&manifest).unwrap();
        assert_eq!(std::fs::read(out.path("train", "weights.bin")).unwrap(), b"0123456789");
        std::fs::write(out.path("train", "stray.txt"), b"left over").unwrap();
        out.materialize(&manifest).unwrap();
        assert!(!out.path("train", "stray.txt").exists());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn large_artifacts_are_materialised_lazily_without_clones() {
        let dir = crate::store::tests::test_dir("out-lazy");
        let cache = Cache::open(&dir).unwrap();
        let manifest = manifest(&cache, &[("dataset.bin", &[7u8; 4096]), ("small.json", b"{}")]);
        let out = cache.out().with_lazy_bytes(1024);
        out.materialize(&manifest).unwrap();
        let path = out.path("train", "dataset.bin");
        let object = cache.store().path(&manifest.artifacts["dataset.bin"].hash);
        let cloned = crate::fs::try_clone(cache.root(), &object, &dir.join("tmp/probe")).unwrap();
        if cloned {
            assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 4096], "a clone costs nothing: always there");
        } else {
            assert!(!path.exists(), "not copied");
            // What `pipe show` and `--json` report: a path that exists, with the bytes.
            let artifact = &manifest.artifacts["dataset.bin"];
            let (located, lazy) = out.locate("train", "dataset.bin", artifact);
            assert!(lazy && located == object, "{located:?}");
            assert_eq!(std::fs::read(&located).unwrap(), vec![7u8; 4096]);
            let small = &manifest.artifacts["small.json"];
            assert_eq!(out.locate("train", "small.json", small), (out.path("train", "small.json"), false));
            let note = std::fs::read_to_string(out.path("train", "dataset.bin.lazy.txt")).unwrap();
            assert!(note.contains("objects/"), "{note}");
            assert!(out.path("train", "small.json").exists());
            assert_eq!(out.ensure(&manifest, "dataset.bin").unwrap(), path);
            assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 4096]);
            // Once materialised it stays, and an edit is refreshed like any copy.
            out.materialize(&manifest).unwrap();
            assert!(path.exists());
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Bytes allocated on disk under `path` (what `du` counts).
    fn disk_usage(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
        let own = meta.blocks() * 512;
        if !meta.is_dir() {
            return own;
        }
        own + std::fs::read_dir(path).unwrap().flatten().map(|entry| disk_usage(&entry.path())).sum::<u64>()
    }

    #[test]
    fn out_dir_costs_at_most_15_percent_for_a_large_artifact() {
        let dir = crate::store::tests::test_dir("out-ratio");
        let cache = Cache::open(&dir).unwrap();
        let big: Vec<u8> = (0..LAZY_BYTES + (16 << 20)).map(|i| (i * 31 % 251) as u8).collect();
        let manifest = manifest(&cache, &[("dataset.safetensors", &big), ("metrics.json", b"{\"n\": 1}")]);
        drop(big);
        cache.out().materialize(&manifest).unwrap();
        let (objects, total) = (disk_usage(&dir.join("objects")), disk_usage(&dir));
        let ratio = total as f64 / objects as f64;
        eprintln!("objects {objects} bytes, .pipe {total} bytes: {ratio:.3}x");
        assert!(ratio <= 1.15, "{ratio}");
        // Editing what out/ holds never reaches the store.
        let note = cache.out().path("train", "dataset.safetensors.lazy.txt");
        let path = cache.out().path("train", "dataset.safetensors");
        if note.exists() {
            std::fs::write(&note, b"edited").unwrap();
        } else {
            let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            std::io::Write::write_all(&mut file, b"edited in place").unwrap();
        }
        assert!(cache.store().verify_deep(&manifest.artifacts["dataset.safetensors"].hash));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn member_record_round_trips_and_ignores_an_edited_file() {
        let dir = crate::store::tests::test_dir("out-members");
        let cache = Cache::open(&dir).unwrap();
        let manifest = manifest(&cache, &[("metrics.json", b"{}")]);
        let member = RecordedMember {
            key: manifest.key,
            artifacts: manifest.artifacts.clone().into(),
            metrics: BTreeMap::from([("val_acc".to_string(), 0.5)]).into(),
        };
        let mut record = cache.out().members();
        assert!(record.get("overfit[train.lr=0.1]", &manifest.key).is_none());
        record.insert("overfit[train.lr=0.1]", member.clone());
        record.save().unwrap();
        let record = cache.out().members();
        assert_eq!(record.get("overfit[train.lr=0.1]", &manifest.key), Some(&member));
        let other = StageKey::from_bytes([9; 32]);
        assert!(record.get("overfit[train.lr=0.1]", &other).is_none(), "another key is not this member's");
        // A hand edit (here: the metric) breaks the digest: nothing is trusted.
        let path = dir.join("out").join(MEMBERS_FILE);
        let text = std::fs::read_to_string(&path).unwrap().replace("0.5", "0.9");
        std::fs::write(&path, text).unwrap();
        assert!(cache.out().members().get("overfit[train.lr=0.1]", &manifest.key).is_none());
        std::fs::remove_dir_all(&dir).ok();
    }
}
