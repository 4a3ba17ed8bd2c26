//! `pipe exec-action KEY` (hidden): executes one queued action against the cache and
//! prints its outcome as one JSON line on stdout. The parent `pipe build` holds the
//! cache lock; this process writes objects and the manifest atomically, as a local
//! runner thread would, so the artifacts are the same bytes.

use cache::StageKey;
use workspace::{execute_and_store, Action, ActionOutcome, Cancel, NoProgress};

use crate::project::{failed, usage, Failure, Project};
use crate::text::say;

pub fn run(project: &Project, key: &str) -> Result<u8, Failure> {
    let key: StageKey = key.parse().map_err(|e| usage(anyhow::anyhow!("`{key}` is not a stage key: {e}")))?;
    let cache = project.open_cache()?;
    let bytes = cache.queue().get(&key).map_err(failed)?;
    let action = Action::from_json(&bytes).map_err(|e| failed(anyhow::anyhow!(e)))?;
    if action.key() != key {
        return Err(failed(anyhow::anyhow!(
            "the queued action under {} has key {}",
            key.short(),
            action.key().short()
        )));
    }
    let recipe = pipelines::recipe(&action.base_dir);
    let outcome: ActionOutcome = execute_and_store(&recipe, &cache, &action, &NoProgress, &Cancel::default());
    cache.save_stats().ok();
    let line = serde_json::to_string(&outcome).map_err(|e| failed(anyhow::anyhow!(e)))?;
    say!("{line}");
    Ok(if outcome.result.is_ok() { 0 } else { 1 })
}
