//! `pipe gc`: removes what no kept run references.
//!
//! Roots are the run records that are kept (the newest `keep_runs`, or all). A kept
//! run keeps the action entry of every stage key it recorded and every object those
//! entries or the run itself name, so rebuilding a kept run's config runs nothing.
//! Everything else in `actions/` and `objects/` goes, as do run records that are not
//! kept, `quarantine/`, stale temp files and `last/` entries naming removed keys. It
//! runs with the cache lock held, so a build can never lose an object between writing
//! it and recording its manifest.
//! Removal order is runs, then action entries, then objects, so a crash part-way
//! never leaves a manifest naming a missing object.
//!
//! A complete action entry (intact manifest, every object present) that no run record
//! names at all, kept or not, is what a build interrupted before it recorded its run
//! leaves: its finished stages. Such an entry younger than the retention window
//! ([`DEFAULT_RETENTION`], or [`gc_retaining`]'s parameter) is kept with its objects,
//! so the next build does not redo them. Entries of runs that `--keep-runs` forgets go.
//! Saved training states (`resume/`, see [`crate::ResumeIndex`]) registered within the
//! same window keep their objects; older ones are forgotten.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::fsck::{action_key, object_hash, shard_files};
use crate::{ArtifactHash, Cache, CacheError, CacheLock, Manifest, StageKey};

/// Temp files younger than this may belong to a process that does not take the lock
/// (`pipe diff` writing its plot), so gc leaves them.
const TMP_GRACE: Duration = Duration::from_secs(3600);

/// How long gc keeps complete action entries that no run record names (7 days).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Keep the newest N runs (all when `None`).
    pub keep_runs: Option<usize>,
    /// Report what would be freed, remove nothing.
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FreedAction {
    pub key: StageKey,
    /// `None` when the entry is unreadable.
    pub stage: Option<String>,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FreedObject {
    pub hash: ArtifactHash,
    pub bytes: u64,
    /// `stage/name` of the artifact, as the freed action entries name it.
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcReport {
    pub dry_run: bool,
    pub kept_runs: Vec<u64>,
    pub removed_runs: Vec<(u64, u64)>,
    pub actions: Vec<FreedAction>,
    pub objects: Vec<FreedObject>,
    pub kept_objects: usize,
    pub kept_actions: usize,
    /// Bytes of quarantined files and stale temp files.
    pub scratch_bytes: u64,
}

impl GcReport {
    pub fn freed_bytes(&self) -> u64 {
        self.removed_runs.iter().map(|(_, bytes)| bytes).sum::<u64>()
            + self.actions.iter().map(|a| a.bytes).sum::<u64>()
            + self.objects.iter().map(|o| o.bytes).sum::<u64>()
            + self.scratch_bytes
    }
}

/// Collects garbage with the default retention window; call with the cache lock held
/// (the lock is the proof).
pub fn gc(cache: &Cache, lock: &CacheLock, options: &GcOptions) -> Result<GcReport, CacheError> {
    gc_retaining(cache, lock, options, DEFAULT_RETENTION)
}

/// Collects garbage, keeping complete action entries no run names that are younger
/// than `retention`.
pub fn gc_retaining(
    cache: &Cache,
    _lock: &CacheLock,
    options: &GcOptions,
    retention: Duration,
) -> Result<GcReport, CacheError> {
    let root = cache.root();
    let runs = cache.runs();
    let ids = runs.ids();
    let keep = options.keep_runs.unwrap_or(ids.len()).min(ids.len());
    let (removed, kept) = ids.split_at(ids.len() - keep);
    let mut report = GcReport { dry_run: options.dry_run, kept_runs: kept.to_vec(), ..GcReport::default() };

    // Roots. A kept run that cannot be read might reference anything: stop.
    let mut keys: BTreeSet<StageKey> = BTreeSet::new();
    let mut objects: BTreeSet<ArtifactHash> = BTreeSet::new();
    let mut records = Vec::new();
    for &id in kept {
        let run = runs.load(id).map_err(|err| CacheError::BadRun { id, reason: err.to_string() })?;
        for stage in &run.stages {
            keys.extend(stage.key);
            objects.extend(stage.artifacts.values().map(|artifact| artifact.hash));
        }
        records.push(run);
    }
    for key in &keys {
        if let Some(manifest) = cache.actions().peek(key) {
            objects.extend(manifest.artifacts.values().map(|artifact| artifact.hash));
        }
    }

    // Keys named by the runs that are forgotten now: their entries go, young or not.
    let mut forgotten: BTreeSet<StageKey> = BTreeSet::new();
    for &id in removed {
        if let Ok(run) = runs.load(id) {
            forgotten.extend(run.stages.iter().filter_map(|stage| stage.key));
        }
    }
    for &id in removed {
        let path = runs.path(id);
        report.removed_runs.push((id, file_len(&path)));
        remove(root, &path, options.dry_run)?;
    }
    if !options.dry_run {
        runs.rewrite_index(&records)?;
    }

    let now = SystemTime::now();
    let mut names: BTreeMap<ArtifactHash, Vec<String>> = BTreeMap::new();
    for path in shard_files(&root.join("actions"))? {
        // Files not named like an entry are fsck's business.
        let Some(key) = action_key(&path) else { continue };
        if keys.contains(&key) {
            report.kept_actions += 1;
            continue;
        }
        let manifest: Option<Manifest> = crate::fs::read(root, &path).ok().and_then(|b| Manifest::decode(&b).ok());
        let young = std::fs::symlink_metadata(&path)
            .ok()
            .and_then(|meta| meta.modified().ok())
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age < retention);
        if let Some(manifest) = manifest.as_ref().filter(|manifest| {
            young
                && !forgotten.contains(&key)
                && manifest.artifacts.values().all(|artifact| cache.store().path(&artifact.hash).is_file())
        }) {
            // The finished stages of a build that never recorded its run.
            report.kept_actions += 1;
            objects.extend(manifest.artifacts.values().map(|artifact| artifact.hash));
            continue;
        }
        if let Some(manifest) = &manifest {
            for (name, artifact) in &manifest.artifacts {
                names.entry(artifact.hash).or_default().push(format!("{}/{name}", manifest.stage));
            }
        }
        report.actions.push(FreedAction { key, stage: manifest.map(|m| m.stage), bytes: file_len(&path) });
        remove(root, &path, options.dry_run)?;
    }
    // `last/<stage>.json` naming a removed entry would make `pipe status` call the
    // stage damaged; without it the stage reads as never built, which it now is.
    let removed_keys: BTreeSet<StageKey> = report.actions.iter().map(|action| action.key).collect();
    for entry in std::fs::read_dir(root.join("last")).into_iter().flatten().flatten() {
        let path = entry.path();
        let last: Option<crate::KeyInputs> =
            crate::fs::read(root, &path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if last.is_some_and(|inputs| removed_keys.contains(&inputs.key())) {
            remove(root, &path, options.dry_run)?;
            // Its key file (`ActionCache::set_last`) goes with it.
            let key_file = path.with_extension("key");
            if key_file.symlink_metadata().is_ok() {
                remove(root, &key_file, options.dry_run)?;
            }
        }
    }

    // Saved training states (`resume/`) within the retention window are roots too.
    objects.extend(crate::resume::retained(root, retention, now, options.dry_run)?);
    for path in shard_files(&root.join("objects"))? {
        let Some(hash) = object_hash(&path) else { continue };
        if objects.contains(&hash) {
            report.kept_objects += 1;
            continue;
        }
        let names = names.remove(&hash).unwrap_or_default();
        report.objects.push(FreedObject { hash, bytes: file_len(&path), names });
        remove(root, &path, options.dry_run)?;
    }

    for (dir, grace) in [("quarantine", Duration::ZERO), ("tmp", TMP_GRACE)] {
        if crate::fs::guard(root, &root.join(dir)).is_err() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        for entry in entries.flatten() {
            // `DirEntry::metadata` does not follow links: a link is removed, never its target.
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta.modified().ok().and_then(|modified| now.duration_since(modified).ok());
            if age.is_none_or(|age| age < grace) {
                continue;
            }
            report.scratch_bytes += if meta.is_dir() { dir_len(&entry.path()) } else { meta.len() };
            if !options.dry_run {
                let path = entry.path();
                if meta.is_dir() {
                    crate::fs::remove_tree(root, &path)?;
                } else {
                    crate::fs::remove_file(root, &path)?;
                }
            }
        }
    }
    Ok(report)
}

fn file_len(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).map_or(0, |meta| meta.len())
}

fn dir_len(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_len(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn remove(root: &Path, path: &Path, dry_run: bool) -> Result<(), CacheError> {
    if dry_run {
        return Ok(());
    }
    crate::fs::remove_file(root, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsck::tests::manifest;
    use crate::{RunRecord, RunStage};

    fn record(cache: &Cache, id: u64, manifests: &[&Manifest]) {
        let stages = manifests
            .iter()
            .map(|m| RunStage {
                stage: m.stage.clone(),
                key: Some(m.key),
                status: "ran".into(),
                artifacts: m.artifacts.clone(),
                metrics: m.metrics.clone(),
                verdicts: serde_json::Value::Null,
            })
            .collect();
        let run = RunRecord {
            id,
            started_unix_secs: id,
            targets: vec!["all".into()],
            config: BTreeMap::new(),
            device: "cpu".into(),
            stages,
        };
        cache.runs().record(&run).unwrap();
    }

    #[test]
    fn frees_what_no_kept_run_references() {
        let dir = crate::store::tests::test_dir("gc");
        let cache = Cache::open(&dir).unwrap();
        let shared = manifest(&cache, "data", b"dataset");
        let old = manifest(&cache, "train", b"old weights");
        let new = manifest(&cache, "train", b"new weights");
        let orphan = cache.store().put(b"written by a build that crashed").unwrap();
        record(&cache, 1, &[&shared, &old]);
        record(&cache, 2, &[&shared, &new]);
        let lock = cache.lock().unwrap();

        // Keeping every run frees only the orphan.
        let all = gc(&cache, &lock, &GcOptions { keep_runs: None, dry_run: true }).unwrap();
        assert_eq!(all.objects.iter().map(|o| o.hash).collect::<Vec<_>>(), [orphan]);
        assert!(all.actions.is_empty() && all.removed_runs.is_empty());
        assert!(cache.store().path(&orphan).exists(), "a dry run removes nothing");

        let report = gc(&cache, &lock, &GcOptions { keep_runs: Some(1), dry_run: false }).unwrap();
        assert_eq!(report.kept_runs, [2]);
        assert_eq!(report.removed_runs.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1]);
        assert_eq!(report.actions.iter().map(|a| a.key).collect::<Vec<_>>(), [old.key]);
        let mut freed: Vec<_> = report.objects.iter().map(|o| o.hash).collect();
        freed.sort();
        let mut expected = vec![orphan, old.artifacts["out.txt"].hash];
        expected.sort();
        assert_eq!(freed, expected);
        let named = report.objects.iter().find(|o| o.hash == old.artifacts["out.txt"].hash).unwrap();
        assert_eq!(named.names, ["train/out.txt"]);
        assert_eq!((report.kept_objects, report.kept_actions), (2, 2));
        assert!(report.freed_bytes() > 0);

        assert_eq!(cache.actions().get(&shared.key), Some(shared));
        assert_eq!(cache.actions().get(&new.key), Some(new.clone()));
        assert!(cache.actions().peek(&old.key).is_none());
        assert_eq!(cache.actions().last("train"), Some(new.inputs.clone()), "the latest build stays");
        assert!(!cache.store().path(&orphan).exists());
        assert_eq!(cache.runs().summaries().iter().map(|s| s.id).collect::<Vec<_>>(), [2]);

        // With no run kept, everything goes, and `last/` no longer names removed entries.
        gc(&cache, &lock, &GcOptions { keep_runs: Some(0), dry_run: false }).unwrap();
        assert_eq!(cache.actions().last("train"), None);
        assert!(crate::fsck::shard_files(&dir.join("objects")).unwrap().is_empty());
        drop(lock);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn gc_keeps_young_entries_of_an_interrupted_build() {
        let dir = crate::store::tests::test_dir("gc-retention");
        let cache = Cache::open(&dir).unwrap();
        let recorded = manifest(&cache, "data", b"dataset");
        record(&cache, 1, &[&recorded]);
        // A build killed before it recorded its run: two finished stages, no record.
        let finished = manifest(&cache, "train", b"weights of a run that was killed");
        let finished_too = manifest(&cache, "eval", b"metrics of a run that was killed");
        let lock = cache.lock().unwrap();

        let report = gc(&cache, &lock, &GcOptions::default()).unwrap();
        assert!(report.actions.is_empty() && report.objects.is_empty(), "{report:?}");
        for kept in [&recorded, &finished, &finished_too] {
            assert_eq!(cache.actions().get(&kept.key).as_ref(), Some(kept), "{}", kept.stage);
        }
        // An incomplete entry (its object gone) is garbage, young or not.
        std::fs::remove_file(cache.store().path(&finished_too.artifacts["out.txt"].hash)).unwrap();
        let report = gc(&cache, &lock, &GcOptions::default()).unwrap();
        assert_eq!(report.actions.iter().map(|a| a.key).collect::<Vec<_>>(), [finished_too.key]);
        // Past the retention window it goes too.
        let report = gc_retaining(&cache, &lock, &GcOptions::default(), Duration::ZERO).unwrap();
        assert_eq!(report.actions.iter().map(|a| a.key).collect::<Vec<_>>(), [finished.key]);
        assert_eq!(cache.actions().get(&recorded.key), Some(recorded));
        drop(lock);
        std::fs::remove_dir_all(&dir).ok();
    }
}
