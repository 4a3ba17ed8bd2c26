//! The resume index: saved training states a stage can continue from.
//!
//! A training stage saves its full state (weights, optimizer moments, data order,
//! what it recorded so far) as an ordinary object of the store, and registers it here
//! under a *prefix key*: the stage's key inputs without the one knob that only says
//! how far to go (`train.steps`). A later execution with the same prefix key and a
//! larger step count starts from the longest usable state instead of from scratch.
//!
//! ```text
//! .pipe/resume/<prefix key>/<step, 12 digits>-<only>-<object hash>.state
//! ```
//!
//! Everything is in the file name (the file is empty), so two processes registering
//! states at once never overwrite each other's entries and no file is ever edited.
//! `<only>` is `any` for a state that serves any longer run, or the one step count
//! whose run may use it (a learning-rate schedule that depends on the run's length).
//! The objects are not results: `pipe gc` may remove them, and [`ResumeIndex::states`]
//! lists entries whatever their object's fate; a reader that cannot load one skips it.
//!
//! Like every path below the cache root, nothing here follows a symlink.

use std::path::{Path, PathBuf};

use crate::{fs, ArtifactHash, CacheError, KeyInputs};

/// The key of a family of executions that differ only in how far they train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrefixKey([u8; 32]);

impl PrefixKey {
    /// The key inputs without knob `varying` (its value is what may differ), hashed.
    pub fn of(inputs: &KeyInputs, varying: &str) -> PrefixKey {
        let mut rest = inputs.clone();
        rest.knobs.remove(varying);
        let text = format!("pipe-resume-v1\nvarying={varying}\n{}", rest.canonical());
        PrefixKey(*blake3::hash(text.as_bytes()).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        ArtifactHash::from_bytes(self.0).to_hex()
    }
}

/// One saved state: how far it trained and where its bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedState {
    /// Optimizer steps taken.
    pub step: u64,
    /// `Some(n)`: only a run of exactly `n` steps may continue from it.
    pub only_for: Option<u64>,
    pub hash: ArtifactHash,
}

impl SavedState {
    /// Whether a run of `steps` steps may continue from this state.
    pub fn serves(&self, steps: u64) -> bool {
        self.step <= steps && self.only_for.is_none_or(|only| only == steps)
    }

    fn file_name(&self) -> String {
        let only = self.only_for.map_or("any".to_string(), |n| n.to_string());
        format!("{:012}-{only}-{}.state", self.step, self.hash.to_hex())
    }

    fn parse(name: &str) -> Option<SavedState> {
        let mut parts = name.strip_suffix(".state")?.splitn(3, '-');
        let step = parts.next()?.parse().ok()?;
        let only_for = match parts.next()? {
            "any" => None,
            n => Some(n.parse().ok()?),
        };
        let hash = parts.next()?.parse().ok()?;
        Some(SavedState { step, only_for, hash })
    }
}

/// The longest state among `states` that a run of `steps` steps may continue from.
pub fn best_state(states: &[SavedState], steps: u64) -> Option<SavedState> {
    states.iter().filter(|state| state.serves(steps)).max_by_key(|state| (state.step, state.hash)).copied()
}

/// `.pipe/resume/`: prefix key -> saved states.
#[derive(Debug, Clone)]
pub struct ResumeIndex {
    root: PathBuf,
}

impl ResumeIndex {
    pub(crate) fn new(root: &Path) -> ResumeIndex {
        ResumeIndex { root: root.to_path_buf() }
    }

    fn dir(&self, prefix: &PrefixKey) -> PathBuf {
        self.root.join("resume").join(prefix.to_hex())
    }

    /// Registers `state` (whose object is already in the store) under `prefix`.
    pub fn record(&self, prefix: &PrefixKey, state: &SavedState) -> Result<(), CacheError> {
        fs::write_atomic(&self.root, &self.dir(prefix).join(state.file_name()), b"")
    }

    /// Every state registered under `prefix`, by step (none when the directory is
    /// missing; a linked directory is refused).
    pub fn states(&self, prefix: &PrefixKey) -> Result<Vec<SavedState>, CacheError> {
        let dir = self.dir(prefix);
        fs::guard(&self.root, &dir)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(fs::io_error(&self.root, &dir, source)),
        };
        let mut states: Vec<SavedState> = entries
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
            .filter_map(|entry| SavedState::parse(entry.file_name().to_str()?))
            .collect();
        states.sort_by_key(|state| (state.step, state.only_for, state.hash));
        Ok(states)
    }

    /// Forgets `state` (its object is gone or damaged).
    pub fn forget(&self, prefix: &PrefixKey, state: &SavedState) {
        fs::remove_file(&self.root, &self.dir(prefix).join(state.file_name())).ok();
    }
}

/// For `pipe gc`: the objects of saved states registered within `retention` (roots),
/// after forgetting older entries (unless `dry_run`), whose objects then go as
/// garbage. A state is worth keeping while someone may still raise `train.steps`.
pub(crate) fn retained(
    root: &Path,
    retention: std::time::Duration,
    now: std::time::SystemTime,
    dry_run: bool,
) -> Result<std::collections::BTreeSet<ArtifactHash>, CacheError> {
    let mut kept = std::collections::BTreeSet::new();
    let dir = root.join("resume");
    fs::guard(root, &dir)?;
    for prefix in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if !prefix.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        for entry in std::fs::read_dir(prefix.path()).into_iter().flatten().flatten() {
            let Some(state) = entry.file_name().to_str().and_then(SavedState::parse) else { continue };
            let age = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| now.duration_since(t).ok());
            if age.is_some_and(|age| age < retention) {
                kept.insert(state.hash);
            } else if !dry_run {
                fs::remove_file(root, &entry.path())?;
            }
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    fn inputs(steps: &str, lr: &str) -> KeyInputs {
        KeyInputs {
            stage: "overfit".into(),
            stage_version: 1,
            tool_version: "0.1.0".into(),
            knobs: BTreeMap::from([
                ("train.steps".into(), format!("int:{steps}").into()),
                ("train.lr".into(), format!("f64:{lr}").into()),
            ]),
            upstream: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
            device: "cpu".into(),
            dtype: "f32".into(),
        }
    }

    #[test]
    fn prefix_ignores_only_the_varying_knob() {
        let base = PrefixKey::of(&inputs("40", "0.001"), "train.steps");
        assert_eq!(base, PrefixKey::of(&inputs("60", "0.001"), "train.steps"));
        assert_ne!(base, PrefixKey::of(&inputs("40", "0.002"), "train.steps"));
        assert_ne!(base, PrefixKey::of(&inputs("40", "0.001"), "train.lr"), "the varying knob is in the key");
    }

    #[test]
    fn states_round_trip_and_the_best_one_serves_the_run() {
        let root = crate::store::tests::test_dir("resume");
        let cache = crate::Cache::open(&root).unwrap();
        let index = cache.resume();
        let prefix = PrefixKey::of(&inputs("60", "0.001"), "train.steps");
        assert!(index.states(&prefix).unwrap().is_empty());
        let state = |step, only_for| SavedState { step, only_for, hash: ArtifactHash::of(&[step as u8]) };
        for saved in [state(20, None), state(40, None), state(50, Some(50)), state(70, None)] {
            index.record(&prefix, &saved).unwrap();
        }
        let states = index.states(&prefix).unwrap();
        assert_eq!(states.iter().map(|s| s.step).collect::<Vec<_>>(), [20, 40, 50, 70]);
        assert_eq!(best_state(&states, 60), Some(state(40, None)), "50 serves only a 50-step run, 70 is too far");
        assert_eq!(best_state(&states, 50), Some(state(50, Some(50))));
        assert_eq!(best_state(&states, 10), None);
        index.forget(&prefix, &state(40, None));
        assert_eq!(best_state(&index.states(&prefix).unwrap(), 60), Some(state(20, None)));
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn gc_keeps_young_states_and_forgets_old_ones() {
        let root = crate::store::tests::test_dir("resume-gc");
        let cache = crate::Cache::open(&root).unwrap();
        let prefix = PrefixKey::of(&inputs("60", "0.001"), "train.steps");
        let hash = cache.store().put(b"state").unwrap();
        cache.resume().record(&prefix, &SavedState { step: 40, only_for: None, hash }).unwrap();
        let lock = cache.lock().unwrap();
        let report = crate::gc(&cache, &lock, &crate::GcOptions::default()).unwrap();
        assert!(report.objects.is_empty(), "a young state is a root: {report:?}");
        assert_eq!(cache.resume().states(&prefix).unwrap().len(), 1);
        let report = crate::gc_retaining(&cache, &lock, &crate::GcOptions::default(), Duration::ZERO).unwrap();
        assert_eq!(report.objects.iter().map(|o| o.hash).collect::<Vec<_>>(), [hash], "an old state goes");
        assert!(cache.resume().states(&prefix).unwrap().is_empty());
        drop(lock);
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn a_linked_index_is_refused() {
        let root = crate::store::tests::test_dir("resume-link");
        let cache = crate::Cache::open(&root).unwrap();
        let outside = root.with_extension("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("resume")).unwrap();
        let prefix = PrefixKey::of(&inputs("1", "1"), "train.steps");
        let saved = SavedState { step: 1, only_for: None, hash: ArtifactHash::of(b"x") };
        assert!(cache.resume().record(&prefix, &saved).is_err());
        assert!(cache.resume().states(&prefix).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        std::fs::remove_dir_all(&outside).ok();
        std::fs::remove_dir_all(&root).ok();
    }
}
