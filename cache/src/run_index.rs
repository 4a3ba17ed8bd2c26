//! The run index: one compact JSON line per run in `runs/index.jsonl`, so `pipe runs`
//! lists a thousand runs without parsing a thousand full records.
//!
//! The records stay the truth. A line is appended after its record is written (with
//! the cache lock held); a reader keeps only lines whose record exists and rebuilds
//! the summary of any record the index lacks, so a crash between the two writes, a
//! torn line or a deleted record never shows wrong history. `pipe gc` and `pipe fsck`
//! rewrite the index from what they keep.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{write_atomic, CacheError, RunRecord, Runs, StageKey};

/// What `pipe runs` shows of one run: no config, only what changed since the run before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: u64,
    pub started_unix_secs: u64,
    pub targets: Vec<String>,
    pub device: String,
    /// Stages by status (`ran`, `cached`, `failed`, `skipped`).
    pub stages: BTreeMap<String, u32>,
    /// blake3 of the resolved config's canonical text: equal hashes, equal configs.
    pub config_hash: String,
    /// The run `changed` is relative to (`None`: the first run).
    pub previous: Option<u64>,
    /// Knobs whose canonical value differs from `previous`'s: name -> [before, after].
    pub changed: BTreeMap<String, [Option<String>; 2]>,
    /// The run's headline numbers: every metric named in [`HEADLINE_METRICS`] of a
    /// stage that produced it in this run, as `stage/metric` (the last stage wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headline: BTreeMap<String, f64>,
    /// blake3 of the run's (stage, key) list ([`stages_hash`]): a no-op build compares
    /// it instead of reading the latest full record (megabytes for a 1,000-trial tune).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages_hash: Option<String>,
}

/// Metric names shown as a run's headline by `pipe runs` (generic names, no stage ids).
pub const HEADLINE_METRICS: [&str; 2] = ["val_acc", "test_acc"];

impl RunSummary {
    /// The summary of `run`, with its changes relative to `previous`.
    pub fn new(run: &RunRecord, previous: Option<&RunRecord>) -> RunSummary {
        let mut stages = BTreeMap::new();
        for stage in &run.stages {
            *stages.entry(stage.status.clone()).or_insert(0) += 1;
        }
        let changed = previous.map_or_else(BTreeMap::new, |previous| {
            changed_knobs(&previous.config, &run.config).into_iter().map(|(name, a, b)| (name, [a, b])).collect()
        });
        let mut headline = BTreeMap::new();
        for stage in run.stages.iter().filter(|stage| stage.status == "ran" || stage.status == "cached") {
            for name in HEADLINE_METRICS {
                if let Some(value) = stage.metrics.get(name).filter(|value| value.is_finite()) {
                    headline.retain(|key: &String, _| !key.ends_with(&format!("/{name}")));
                    headline.insert(format!("{}/{name}", stage.stage), *value);
                }
            }
        }
        RunSummary {
            headline,
            id: run.id,
            started_unix_secs: run.started_unix_secs,
            targets: run.targets.clone(),
            device: run.device.clone(),
            stages,
            config_hash: config_hash(&run.config),
            previous: previous.map(|previous| previous.id),
            changed,
            stages_hash: Some(stages_hash(run.stages.iter().map(|stage| (stage.stage.as_str(), stage.key)))),
        }
    }
}

/// blake3 of a run's stages in order: each one's name and key.
pub fn stages_hash<'a>(stages: impl IntoIterator<Item = (&'a str, Option<StageKey>)>) -> String {
    let mut hasher = blake3::Hasher::new();
    for (name, key) in stages {
        hasher.update(name.as_bytes());
        match key {
            Some(key) => hasher.update(b"=").update(key.as_bytes()),
            None => hasher.update(b"-"),
        };
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

fn config_hash(config: &BTreeMap<String, String>) -> String {
    let mut hasher = blake3::Hasher::new();
    for (name, value) in config {
        hasher.update(name.as_bytes());
        hasher.update(b"=");
        hasher.update(value.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

/// Knobs whose canonical values differ: name, A's value, B's value (`None`: absent).
pub fn changed_knobs(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>, Option<String>)> {
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter(|name| a.get(*name) != b.get(*name))
        .map(|name| (name.clone(), a.get(name).cloned(), b.get(name).cloned()))
        .collect()
}

impl Runs {
    fn index_path(&self) -> PathBuf {
        self.dir().join("index.jsonl")
    }

    /// Appends one line to the index. Call with the cache lock held.
    pub(crate) fn append_index(&self, summary: &RunSummary) -> Result<(), CacheError> {
        let path = self.index_path();
        let io = |source| CacheError::Io { path: path.clone(), source };
        let mut line = serde_json::to_vec(summary).map_err(|source| CacheError::Json { path: path.clone(), source })?;
        line.push(b'\n');
        let mut file = crate::fs::open_append(self.root(), &path)?;
        // One write: concurrent readers see a whole line or none of it.
        file.write_all(&line).map_err(io)
    }

    /// Whether the latest recorded run had these targets, resolved config, device and
    /// stages (name and key, in order; [`stages_hash`]), from its line in the index:
    /// a no-op build of the same config is not recorded again. `false` when unsure
    /// (no line for the latest record, or a line of an older version).
    pub fn latest_is(&self, targets: &[String], config: &BTreeMap<String, String>, device: &str, stages: &str) -> bool {
        let Some(latest) = self.ids().last().copied() else { return false };
        let Some(summary) = self.last_indexed() else { return false };
        summary.id == latest
            && summary.targets == targets
            && summary.device == device
            && summary.stages_hash.as_deref() == Some(stages)
            && summary.config_hash == config_hash(config)
    }

    /// The last line of the index (only its tail is read).
    fn last_indexed(&self) -> Option<RunSummary> {
        use std::io::{Read as _, Seek as _};
        const TAIL: u64 = 64 << 10;
        let path = self.index_path();
        let mut file = crate::fs::open_read(self.root(), &path).ok()?;
        let len = file.metadata().ok()?.len();
        file.seek(std::io::SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).ok()?;
        let line = tail.strip_suffix(b"\n")?.rsplit(|b| *b == b'\n').next()?;
        serde_json::from_slice(line).ok()
    }

    /// Summaries of every recorded run, oldest first, from the index, reconciled with
    /// the records on disk: each one's `changed` is relative to the run listed before it.
    pub fn summaries(&self) -> Vec<RunSummary> {
        let mut indexed: BTreeMap<u64, RunSummary> = BTreeMap::new();
        let text =
            crate::fs::read(self.root(), &self.index_path()).ok().and_then(|bytes| String::from_utf8(bytes).ok());
        if let Some(text) = text {
            for line in text.lines() {
                // A torn or unreadable line is rebuilt from its record below.
                if let Ok(summary) = serde_json::from_str::<RunSummary>(line) {
                    indexed.insert(summary.id, summary);
                }
            }
        }
        // Records read while reconciling, each at most once.
        let mut loaded: BTreeMap<u64, Option<RunRecord>> = BTreeMap::new();
        let mut load = |id: u64| loaded.entry(id).or_insert_with(|| self.load(id).ok()).clone();
        let mut summaries: Vec<RunSummary> = self
            .ids()
            .into_iter()
            .filter_map(|id| indexed.remove(&id).or_else(|| load(id).map(|run| RunSummary::new(&run, None))))
            .collect();
        for i in 1..summaries.len() {
            let before = &summaries[i - 1];
            if summaries[i].previous == Some(before.id) {
                continue;
            }
            // The run before was deleted or the line was rebuilt: compare with the one listed before.
            let (before_id, same) = (before.id, before.config_hash == summaries[i].config_hash);
            if same {
                summaries[i].previous = Some(before_id);
                summaries[i].changed.clear();
            } else if let (Some(before), Some(run)) = (load(before_id), load(summaries[i].id)) {
                summaries[i] = RunSummary::new(&run, Some(&before));
            }
        }
        summaries
    }

    /// The summaries of `runs` (oldest first, each compared with the one before) as
    /// the whole index. Call with the cache lock held.
    pub fn rewrite_index(&self, runs: &[RunRecord]) -> Result<(), CacheError> {
        let path = self.index_path();
        let mut bytes = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            let summary = RunSummary::new(run, i.checked_sub(1).map(|before| &runs[before]));
            serde_json::to_writer(&mut bytes, &summary)
                .map_err(|source| CacheError::Json { path: path.clone(), source })?;
            bytes.push(b'\n');
        }
        write_atomic(self.root(), &path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cache, RunStage};

    fn run(id: u64, lr: &str) -> RunRecord {
        RunRecord {
            id,
            started_unix_secs: 1_700_000_000 + id,
            targets: vec!["overfit".into()],
            config: BTreeMap::from([("train.lr".into(), format!("f64:{lr}"))]),
            device: "cpu".into(),
            stages: vec![RunStage {
                stage: "data".into(),
                key: None,
                status: "ran".into(),
                artifacts: BTreeMap::new(),
                metrics: BTreeMap::new(),
                verdicts: serde_json::Value::Null,
            }],
        }
    }

    #[test]
    fn the_latest_run_is_told_from_its_index_line() {
        let dir = crate::store::tests::test_dir("run-latest");
        let cache = Cache::open(&dir).unwrap();
        let runs = cache.runs();
        let first = run(1, "0.1");
        let stages = |run: &RunRecord| stages_hash(run.stages.iter().map(|s| (s.stage.as_str(), s.key)));
        assert!(!runs.latest_is(&first.targets, &first.config, "cpu", &stages(&first)), "nothing recorded");
        runs.record(&first).unwrap();
        assert!(runs.latest_is(&first.targets, &first.config, "cpu", &stages(&first)));
        let second = run(2, "0.2");
        assert!(!runs.latest_is(&second.targets, &second.config, "cpu", &stages(&second)), "another config");
        assert!(!runs.latest_is(&first.targets, &first.config, "cuda", &stages(&first)), "another device");
        assert!(!runs.latest_is(&["tune".into()], &first.config, "cpu", &stages(&first)), "other targets");
        let mut keyed = first.clone();
        keyed.stages[0].key = Some(StageKey::from_bytes([7; 32]));
        assert!(!runs.latest_is(&first.targets, &first.config, "cpu", &stages(&keyed)), "another key");
        // A record the index does not know (a crash before its line): unsure, so no.
        std::fs::write(runs.path(2), serde_json::to_vec(&second).unwrap()).unwrap();
        assert!(!runs.latest_is(&second.targets, &second.config, "cpu", &stages(&second)));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn index_follows_the_records_through_torn_lines_and_deletions() {
        let dir = crate::store::tests::test_dir("run-index");
        let cache = Cache::open(&dir).unwrap();
        let runs = cache.runs();
        for (id, lr) in [(1, "0.1"), (2, "0.2"), (3, "0.3")] {
            runs.record(&run(id, lr)).unwrap();
        }
        let ids = |summaries: Vec<RunSummary>| summaries.iter().map(|s| s.id).collect::<Vec<_>>();
        let lr = |a: &str, b: &str| {
            BTreeMap::from([("train.lr".to_string(), [Some(format!("f64:{a}")), Some(format!("f64:{b}"))])])
        };
        assert_eq!(ids(runs.summaries()), [1, 2, 3]);
        assert_eq!(runs.summaries()[0].changed, BTreeMap::new());
        assert_eq!(runs.summaries()[1].changed, lr("0.1", "0.2"));
        assert_eq!(runs.summaries()[0].stages["ran"], 1);

        // A torn last line (a crash mid-append) and a record the index never heard of.
        let index = dir.join("runs/index.jsonl");
        let mut text = std::fs::read_to_string(&index).unwrap();
        text.truncate(text.len() - 10);
        std::fs::write(&index, text).unwrap();
        let record = serde_json::to_vec(&run(4, "0.4")).unwrap();
        std::fs::write(runs.path(4), record).unwrap();
        assert_eq!(ids(runs.summaries()), [1, 2, 3, 4]);
        assert_eq!(runs.summaries()[2].changed, lr("0.2", "0.3"), "rebuilt from the record");
        assert_eq!(runs.summaries()[3].changed, lr("0.3", "0.4"));

        // A deleted record disappears from the listing; the next run compares with the one before.
        std::fs::remove_file(runs.path(2)).unwrap();
        assert_eq!(ids(runs.summaries()), [1, 3, 4]);
        assert_eq!(runs.summaries()[1].changed, lr("0.1", "0.3"));
        let kept: Vec<RunRecord> = [3, 4].iter().map(|id| runs.load(*id).unwrap()).collect();
        runs.rewrite_index(&kept).unwrap();
        assert_eq!(std::fs::read_to_string(&index).unwrap().lines().count(), 2);
        let summaries = runs.summaries();
        assert_eq!((summaries[1].previous, &summaries[1].changed), (Some(1), &lr("0.1", "0.3")), "recomputed");
        std::fs::remove_dir_all(&dir).ok();
    }
}
