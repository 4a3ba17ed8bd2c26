//! `pipe fsck`: re-hashes every object, re-checks every action entry and run record,
//! and moves whatever is corrupt to `quarantine/`. A stage whose object or entry was
//! moved aside misses the action cache and re-runs on the next build; nothing that
//! is intact is touched.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::hash_file;
use crate::{ArtifactHash, Cache, CacheError, CacheLock, Manifest, StageKey};

/// One thing found wrong, and where it was moved.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// An object whose bytes do not hash to its name.
    CorruptObject { hash: ArtifactHash, actual: ArtifactHash, named_by: Vec<String>, moved_to: PathBuf },
    /// A file in `objects/` or `actions/` that is not named like one.
    StrayFile { path: PathBuf, moved_to: PathBuf },
    /// An action entry that is unreadable, does not match its key, or names an object
    /// that is missing or corrupt.
    BadAction { key: Option<StageKey>, stage: Option<String>, reason: String, moved_to: PathBuf },
    /// A run record that cannot be read.
    BadRun { id: u64, reason: String, moved_to: PathBuf },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::CorruptObject { hash, actual, named_by, moved_to } => {
                write!(f, "corrupt object {}", hash.short())?;
                if !named_by.is_empty() {
                    write!(f, " ({})", named_by.join(", "))?;
                }
                write!(f, ": its bytes hash to {}; moved to {}", actual.short(), moved_to.display())
            }
            Problem::StrayFile { path, moved_to } => {
                write!(f, "stray file {}: moved to {}", path.display(), moved_to.display())
            }
            Problem::BadAction { key, stage, reason, moved_to } => {
                write!(f, "bad action entry")?;
                if let Some(stage) = stage {
                    write!(f, " of stage `{stage}`")?;
                }
                if let Some(key) = key {
                    write!(f, " {}", key.short())?;
                }
                write!(f, ": {reason}; moved to {}", moved_to.display())
            }
            Problem::BadRun { id, reason, moved_to } => {
                write!(f, "unreadable run record {id}: {reason}; moved to {}", moved_to.display())
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FsckReport {
    pub objects: usize,
    pub actions: usize,
    pub runs: usize,
    pub problems: Vec<Problem>,
}

/// Checks the whole cache; call with the cache lock held (the lock is the proof).
pub fn fsck(cache: &Cache, _lock: &CacheLock) -> Result<FsckReport, CacheError> {
    let root = cache.root();
    let mut report = FsckReport::default();

    // Action entries first: they name the objects, so a corrupt object can be reported
    // as the artifact a person knows.
    let mut manifests: Vec<(PathBuf, Manifest)> = Vec::new();
    for path in shard_files(&root.join("actions"))? {
        report.actions += 1;
        let is_link = path.symlink_metadata().is_ok_and(|meta| !meta.file_type().is_file());
        let key = action_key(&path).filter(|_| !is_link);
        let Some(key) = key else {
            let moved_to = move_aside(cache, &path, "stray")?;
            report.problems.push(Problem::StrayFile { path, moved_to });
            continue;
        };
        let parsed =
            crate::fs::read(root, &path).map_err(|err| err.to_string()).and_then(|bytes| Manifest::decode(&bytes));
        let manifest = match parsed {
            Ok(manifest) => manifest,
            Err(reason) => {
                let moved_to = move_aside(cache, &path, "action")?;
                report.problems.push(Problem::BadAction { key: Some(key), stage: None, reason, moved_to });
                continue;
            }
        };
        let mismatch = if manifest.key != key {
            Some(format!("it records key {}", manifest.key.short()))
        } else if manifest.inputs.key() != key {
            Some("its key inputs hash to another key".to_string())
        } else {
            None
        };
        match mismatch {
            Some(reason) => {
                let moved_to = move_aside(cache, &path, "action")?;
                report.problems.push(Problem::BadAction {
                    key: Some(key),
                    stage: Some(manifest.stage),
                    reason,
                    moved_to,
                });
            }
            None => manifests.push((path, manifest)),
        }
    }
    let mut names: BTreeMap<ArtifactHash, BTreeSet<String>> = BTreeMap::new();
    for (_, manifest) in &manifests {
        for (name, artifact) in &manifest.artifacts {
            names.entry(artifact.hash).or_default().insert(format!("{}/{name}", manifest.stage));
        }
    }

    let mut intact: BTreeSet<ArtifactHash> = BTreeSet::new();
    let mut corrupt: BTreeSet<ArtifactHash> = BTreeSet::new();
    for path in shard_files(&root.join("objects"))? {
        report.objects += 1;
        let is_link = path.symlink_metadata().is_ok_and(|meta| !meta.file_type().is_file());
        let Some(hash) = object_hash(&path).filter(|_| !is_link) else {
            let moved_to = move_aside(cache, &path, "stray")?;
            report.problems.push(Problem::StrayFile { path, moved_to });
            continue;
        };
        let actual = hash_file(&path)?;
        if actual == hash {
            intact.insert(hash);
            continue;
        }
        cache.store().quarantine(&hash)?;
        corrupt.insert(hash);
        report.problems.push(Problem::CorruptObject {
            hash,
            actual,
            named_by: names.get(&hash).map(|names| names.iter().cloned().collect()).unwrap_or_default(),
            moved_to: root.join("quarantine").join(format!("{}.{}", hash.to_hex(), std::process::id())),
        });
    }

    // An entry whose objects are not all intact can never be a hit: move it aside so
    // every remaining manifest names complete objects again.
    for (path, manifest) in manifests {
        let broken = manifest.artifacts.iter().find(|(_, artifact)| !intact.contains(&artifact.hash));
        if let Some((name, artifact)) = broken {
            let state = if corrupt.contains(&artifact.hash) { "corrupt" } else { "missing" };
            let reason = format!("its artifact `{name}` ({}) is {state}", artifact.hash.short());
            let moved_to = move_aside(cache, &path, "action")?;
            report.problems.push(Problem::BadAction {
                key: Some(manifest.key),
                stage: Some(manifest.stage),
                reason,
                moved_to,
            });
        }
    }

    let runs = cache.runs();
    let mut records = Vec::new();
    for id in runs.ids() {
        report.runs += 1;
        match runs.load(id) {
            Ok(run) => records.push(run),
            Err(err) => {
                let moved_to = move_aside(cache, &runs.path(id), "run")?;
                report.problems.push(Problem::BadRun { id, reason: err.to_string(), moved_to });
            }
        }
    }
    runs.rewrite_index(&records)?;
    Ok(report)
}

/// Regular files one shard level below `dir` (`dir/ab/<name>`), sorted; anything else
/// directly in `dir` is returned too, so a stray file is seen.
pub(crate) fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, CacheError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CacheError::Io { path, source }
    };
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(err) => return Err(io(dir)(err)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        // Never descend through a link: it is listed (and moved aside) as a stray file.
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            for inner in std::fs::read_dir(&path).map_err(io(&path))? {
                files.push(inner.map_err(io(&path))?.path());
            }
        } else {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The hash an object file is named by, if it is named and sharded like one.
pub(crate) fn object_hash(path: &Path) -> Option<ArtifactHash> {
    let name = path.file_name()?.to_str()?;
    let shard = path.parent()?.file_name()?.to_str()?;
    let hash: ArtifactHash = name.parse().ok()?;
    (name.get(..2) == Some(shard)).then_some(hash)
}

/// The key an action entry file is named by, if it is named and sharded like one.
pub(crate) fn action_key(path: &Path) -> Option<StageKey> {
    let name = path.file_name()?.to_str()?.strip_suffix(".json")?;
    let shard = path.parent()?.file_name()?.to_str()?;
    let key: StageKey = name.parse().ok()?;
    (name.get(..2) == Some(shard)).then_some(key)
}

/// Moves `path` into `quarantine/` as `<what>-<name>.<pid>`, and forgets its stat.
fn move_aside(cache: &Cache, path: &Path, what: &str) -> Result<PathBuf, CacheError> {
    cache.stats().forget(path);
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let to = cache.root().join("quarantine").join(format!("{what}-{name}.{}", std::process::id()));
    crate::fs::rename(cache.root(), path, &to)?;
    Ok(to)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{ArtifactRef, KeyInputs, Metrics};

    pub(crate) fn manifest(cache: &Cache, stage: &str, payload: &[u8]) -> Manifest {
        let hash = cache.store().put(payload).unwrap();
        let inputs = KeyInputs {
            stage: stage.into(),
            stage_version: 1,
            tool_version: "test".into(),
            knobs: BTreeMap::from([("x".into(), format!("str:{}", String::from_utf8_lossy(payload)).into())]),
            upstream: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
            device: "cpu".into(),
            dtype: "f32".into(),
        };
        let manifest = Manifest {
            stage: stage.into(),
            key: inputs.key(),
            inputs,
            artifacts: BTreeMap::from([("out.txt".into(), ArtifactRef { hash, bytes: payload.len() as u64 })]),
            metrics: Metrics::new(),
            secs: 0.1,
        };
        cache.actions().put(&manifest).unwrap();
        manifest
    }

    pub(crate) fn flip_byte(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[0] ^= 0x01;
        let mut permissions = std::fs::metadata(path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        permissions.set_readonly(false);
        std::fs::set_permissions(path, permissions).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn finds_a_flipped_byte_and_a_bad_entry_and_moves_them_aside() {
        let dir = crate::store::tests::test_dir("fsck");
        let cache = Cache::open(&dir).unwrap();
        let good = manifest(&cache, "a", b"alpha");
        let bad = manifest(&cache, "b", b"beta");
        let lock = cache.lock().unwrap();
        let clean = fsck(&cache, &lock).unwrap();
        assert_eq!((clean.objects, clean.actions, clean.problems.len()), (2, 2, 0), "{clean:?}");

        let object = cache.store().path(&bad.artifacts["out.txt"].hash);
        flip_byte(&object);
        std::fs::write(dir.join("objects/zz"), b"stray").unwrap();
        let report = fsck(&cache, &lock).unwrap();
        assert_eq!(report.problems.len(), 3, "{:#?}", report.problems);
        assert!(report.problems.iter().any(|p| matches!(p, Problem::StrayFile { .. })), "{:?}", report.problems);
        let corrupt = report.problems.iter().find(|p| matches!(p, Problem::CorruptObject { .. })).unwrap();
        match corrupt {
            Problem::CorruptObject { hash, named_by, moved_to, .. } => {
                assert_eq!(*hash, bad.artifacts["out.txt"].hash);
                assert_eq!(named_by, &["b/out.txt".to_string()]);
                assert!(moved_to.exists());
            }
            other => panic!("{other:?}"),
        }
        let entry = report.problems.iter().find(|p| matches!(p, Problem::BadAction { .. })).unwrap();
        assert!(entry.to_string().contains("of stage `b`"), "{entry}");
        assert!(entry.to_string().contains("`out.txt`") && entry.to_string().contains("is corrupt"), "{entry}");
        assert!(!object.exists());
        assert!(cache.actions().peek(&bad.key).is_none(), "the entry that named it is gone");
        assert_eq!(cache.actions().get(&good.key), Some(good.clone()), "intact entries stay");
        assert!(fsck(&cache, &lock).unwrap().problems.is_empty(), "a second pass finds nothing");

        // A metric edited inside a manifest: the digest no longer matches.
        let path = cache.actions().path(&good.key);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"secs\": 0.1", "\"secs\": 0.2")).unwrap();
        let report = fsck(&cache, &lock).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].to_string().contains("does not match its digest"), "{}", report.problems[0]);
        let good = manifest(&cache, "a", b"alpha");

        std::fs::write(cache.actions().path(&good.key), b"{ not json").unwrap();
        let report = fsck(&cache, &lock).unwrap();
        assert_eq!(report.problems.len(), 1);
        assert!(report.problems[0].to_string().contains("invalid JSON"), "{}", report.problems[0]);
        assert!(!cache.actions().path(&good.key).exists());
        drop(lock);
        std::fs::remove_dir_all(&dir).ok();
    }
}
