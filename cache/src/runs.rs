//! Run records: one JSON file per `pipe build`, numbered in order, holding the
//! resolved config and what happened to each stage. `pipe diff` and `pipe runs`
//! read them; `pipe runs` reads the compact index beside them (`run_index.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{write_atomic, ArtifactRef, CacheError, Metrics, StageKey};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStage {
    pub stage: String,
    pub key: Option<StageKey>,
    /// `ran`, `cached` or `failed`.
    pub status: String,
    pub artifacts: BTreeMap<String, ArtifactRef>,
    pub metrics: Metrics,
    /// Verdicts as the build reported them (an open JSON shape owned by the caller).
    pub verdicts: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: u64,
    pub started_unix_secs: u64,
    pub targets: Vec<String>,
    /// Resolved knob values, canonical text.
    pub config: BTreeMap<String, String>,
    pub device: String,
    pub stages: Vec<RunStage>,
}

#[derive(Debug, Clone)]
pub struct Runs {
    dir: PathBuf,
    root: PathBuf,
}

impl Runs {
    pub(crate) fn new(root: &Path) -> Runs {
        Runs { dir: root.join("runs"), root: root.to_path_buf() }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache directory the runs live in.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The file of run `id`.
    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:06}.json"))
    }

    /// Ids of recorded runs, oldest first.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The id the next recorded run will get. Call with the cache lock held.
    pub fn next_id(&self) -> u64 {
        self.ids().last().map_or(1, |last| last + 1)
    }

    pub fn record(&self, run: &RunRecord) -> Result<(), CacheError> {
        let path = self.path(run.id);
        let bytes = serde_json::to_vec_pretty(run).map_err(|source| CacheError::Json { path: path.clone(), source })?;
        write_atomic(&self.root, &path, &bytes)?;
        let previous = self.ids().into_iter().rfind(|id| *id < run.id).and_then(|id| self.load(id).ok());
        self.append_index(&crate::RunSummary::new(run, previous.as_ref()))
    }

    pub fn load(&self, id: u64) -> Result<RunRecord, CacheError> {
        let path = self.path(id);
        let bytes = crate::fs::read(&self.root, &path)?;
        serde_json::from_slice(&bytes).map_err(|source| CacheError::Json { path, source })
    }
}
