//! `pipe gc`: remove objects and action entries that no kept run references.

use cache::GcOptions;
use serde_json::json;

use crate::project::{existing_cache, failed, Failure, Project};
use crate::text::{bytes_text, say};

pub fn run(project: &Project, keep_runs: Option<usize>, dry_run: bool, json: bool) -> Result<u8, Failure> {
    let Some(cache) = existing_cache(project)? else {
        say!("nothing to collect: no cache at {}", project.cache_dir.display());
        return Ok(0);
    };
    let lock = cache.lock().map_err(failed)?;
    let report = cache::gc(&cache, &lock, &GcOptions { keep_runs, dry_run }).map_err(failed)?;
    drop(lock);
    if json {
        let line = json!({
            "event": "gc",
            "dry_run": report.dry_run,
            "kept_runs": report.kept_runs,
            "removed_runs": report.removed_runs.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            "actions": report.actions.iter().map(|a| json!({"key": a.key.to_hex(), "stage": a.stage, "bytes": a.bytes})).collect::<Vec<_>>(),
            "objects": report.objects.iter().map(|o| json!({"hash": o.hash.to_hex(), "bytes": o.bytes, "artifacts": o.names})).collect::<Vec<_>>(),
            "kept_objects": report.kept_objects,
            "kept_actions": report.kept_actions,
            "scratch_bytes": report.scratch_bytes,
            "freed_bytes": report.freed_bytes(),
        });
        say!("{line}");
        return Ok(0);
    }
    let verb = if dry_run { "would free" } else { "free" };
    for (id, bytes) in &report.removed_runs {
        say!("{verb:>10}  run {id:<10} {:>10}", bytes_text(*bytes));
    }
    for action in &report.actions {
        let stage = action.stage.as_deref().unwrap_or("(unreadable)");
        say!("{verb:>10}  action {}  {stage}", action.key.short());
    }
    for object in &report.objects {
        let names =
            if object.names.is_empty() { "(no action entry names it)".to_string() } else { object.names.join(", ") };
        say!("{verb:>10}  object {}  {:>10}  {names}", object.hash.short(), bytes_text(object.bytes));
    }
    if report.scratch_bytes > 0 {
        say!("{verb:>10}  quarantine and stale temp files  {}", bytes_text(report.scratch_bytes));
    }
    let kept = match (report.kept_runs.first(), report.kept_runs.last()) {
        (Some(first), Some(last)) if first == last => format!("run {first}"),
        (Some(first), Some(last)) => format!("runs {first}..{last}"),
        _ => "no runs".to_string(),
    };
    say!(
        "{} {} ({} objects, {} action entries, {} run records); kept {kept}: {} objects, {} action entries",
        if dry_run { "would free" } else { "freed" },
        bytes_text(report.freed_bytes()),
        report.objects.len(),
        report.actions.len(),
        report.removed_runs.len(),
        report.kept_objects,
        report.kept_actions,
    );
    Ok(0)
}
