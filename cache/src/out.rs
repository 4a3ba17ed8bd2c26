//! Stable, human-friendly paths to the latest artifacts of each stage:
//! `.pipe/out/<stage>/<name>`. These are copies, so editing one can never corrupt
//! the store; they are refreshed whenever a stage's manifest changes.

use std::path::{Path, PathBuf};

use crate::{write_atomic, CacheError, Manifest, Store};

#[derive(Debug, Clone)]
pub struct OutDir {
    out: PathBuf,
    tmp: PathBuf,
    store: Store,
}

impl OutDir {
    pub(crate) fn new(root: &Path, store: Store) -> OutDir {
        OutDir { out: root.join("out"), tmp: root.join("tmp"), store }
    }

    /// The stable path of artifact `name` of `stage`.
    pub fn path(&self, stage: &str, name: &str) -> PathBuf {
        self.out.join(stage).join(name)
    }

    /// Makes `out/<stage>/` hold exactly the artifacts of `manifest`. Cheap when it
    /// already does (a marker file records the key it was written for).
    pub fn materialize(&self, manifest: &Manifest) -> Result<(), CacheError> {
        let dir = self.out.join(&manifest.stage);
        let marker = dir.join(".key");
        let up_to_date = std::fs::read_to_string(&marker).is_ok_and(|key| key == manifest.key.to_hex())
            && manifest.artifacts.iter().all(|(name, artifact)| {
                std::fs::metadata(dir.join(name)).is_ok_and(|meta| meta.len() == artifact.bytes)
            });
        if up_to_date {
            return Ok(());
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for (name, artifact) in &manifest.artifacts {
            let bytes = self.store.get(&artifact.hash)?;
            write_atomic(&self.tmp, &dir.join(name), &bytes)?;
        }
        write_atomic(&self.tmp, &marker, manifest.key.to_hex().as_bytes())
    }
}
