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

use crate::{write_atomic, CacheError, RunRecord, Runs};

/// What `pipe runs` shows of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: u64,
    pub started_unix_secs: u64,
    pub targets: Vec<String>,
    pub device: String,
    /// Resolved knob values, canonical text (as in the record).
    pub config: BTreeMap<String, String>,
    /// Stages by status (`ran`, `cached`, `failed`, `skipped`).
    pub stages: BTreeMap<String, u32>,
}

impl RunSummary {
    pub fn of(run: &RunRecord) -> RunSummary {
        let mut stages = BTreeMap::new();
        for stage in &run.stages {
            *stages.entry(stage.status.clone()).or_insert(0) += 1;
        }
        RunSummary {
            id: run.id,
            started_unix_secs: run.started_unix_secs,
            targets: run.targets.clone(),
            device: run.device.clone(),
            config: run.config.clone(),
            stages,
        }
    }
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
        let mut file = std::fs::File::options().create(true).append(true).open(&path).map_err(io)?;
        // One write: concurrent readers see a whole line or none of it.
        file.write_all(&line).map_err(io)
    }

    /// Summaries of every recorded run, oldest first, from the index, reconciled with
    /// the records on disk.
    pub fn summaries(&self) -> Vec<RunSummary> {
        let mut indexed: BTreeMap<u64, RunSummary> = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(self.index_path()) {
            for line in text.lines() {
                // A torn or unreadable line is rebuilt from its record below.
                if let Ok(summary) = serde_json::from_str::<RunSummary>(line) {
                    indexed.insert(summary.id, summary);
                }
            }
        }
        self.ids()
            .into_iter()
            .filter_map(|id| indexed.remove(&id).or_else(|| self.load(id).ok().map(|run| RunSummary::of(&run))))
            .collect()
    }

    /// Replaces the index with `summaries`. Call with the cache lock held.
    pub fn rewrite_index(&self, summaries: &[RunSummary]) -> Result<(), CacheError> {
        let path = self.index_path();
        let mut bytes = Vec::new();
        for summary in summaries {
            serde_json::to_writer(&mut bytes, summary)
                .map_err(|source| CacheError::Json { path: path.clone(), source })?;
            bytes.push(b'\n');
        }
        write_atomic(self.tmp(), &path, &bytes)
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
    fn index_follows_the_records_through_torn_lines_and_deletions() {
        let dir = crate::store::tests::test_dir("run-index");
        let cache = Cache::open(&dir).unwrap();
        let runs = cache.runs();
        for (id, lr) in [(1, "0.1"), (2, "0.2"), (3, "0.3")] {
            runs.record(&run(id, lr)).unwrap();
        }
        let ids = |summaries: Vec<RunSummary>| summaries.iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(runs.summaries()), [1, 2, 3]);
        assert_eq!(runs.summaries()[1].config["train.lr"], "f64:0.2");
        assert_eq!(runs.summaries()[0].stages["ran"], 1);

        // A torn last line (a crash mid-append) and a record the index never heard of.
        let index = dir.join("runs/index.jsonl");
        let mut text = std::fs::read_to_string(&index).unwrap();
        text.truncate(text.len() - 10);
        std::fs::write(&index, text).unwrap();
        let record = serde_json::to_vec(&run(4, "0.4")).unwrap();
        std::fs::write(runs.path(4), record).unwrap();
        assert_eq!(ids(runs.summaries()), [1, 2, 3, 4]);
        assert_eq!(runs.summaries()[2].config["train.lr"], "f64:0.3", "rebuilt from the record");

        // A deleted record disappears from the listing.
        std::fs::remove_file(runs.path(2)).unwrap();
        assert_eq!(ids(runs.summaries()), [1, 3, 4]);
        runs.rewrite_index(&runs.summaries()).unwrap();
        assert_eq!(std::fs::read_to_string(&index).unwrap().lines().count(), 3);
        std::fs::remove_dir_all(&dir).ok();
    }
}
