//! `pipe fsck`: re-hash every object, action entry and run record; move corrupt ones aside.

use cache::Problem;
use serde_json::json;

use crate::project::{existing_cache, failed, Failure, Project};
use crate::text::say;

pub fn run(project: &Project, json: bool) -> Result<u8, Failure> {
    let Some(cache) = existing_cache(project)? else {
        say!("nothing to check: no cache at {}", project.cache_dir.display());
        return Ok(0);
    };
    let lock = cache.lock().map_err(failed)?;
    let report = cache::fsck(&cache, &lock).map_err(failed)?;
    if json {
        let problems: Vec<serde_json::Value> = report.problems.iter().map(problem_json).collect();
        say!(
            "{}",
            json!({
                "event": "fsck",
                "objects": report.objects,
                "actions": report.actions,
                "runs": report.runs,
                "problems": problems,
            })
        );
    } else {
        for problem in &report.problems {
            say!("{problem}");
        }
        say!(
            "checked {} objects, {} action entries, {} runs: {}",
            report.objects,
            report.actions,
            report.runs,
            match report.problems.len() {
                0 => "all intact".to_string(),
                n => format!("{n} problem(s), moved aside; the affected stages re-run on the next `pipe build`"),
            }
        );
    }
    Ok(if report.problems.is_empty() { 0 } else { 1 })
}

fn problem_json(problem: &Problem) -> serde_json::Value {
    let mut value = match problem {
        Problem::CorruptObject { hash, actual, named_by, moved_to } => json!({
            "kind": "corrupt_object", "hash": hash.to_hex(), "actual": actual.to_hex(),
            "artifacts": named_by, "moved_to": moved_to.display().to_string(),
        }),
        Problem::StrayFile { path, moved_to } => json!({
            "kind": "stray_file", "path": path.display().to_string(), "moved_to": moved_to.display().to_string(),
        }),
        Problem::BadAction { key, stage, reason, moved_to } => json!({
            "kind": "bad_action", "key": key.map(|k| k.to_hex()), "stage": stage, "reason": reason,
            "moved_to": moved_to.display().to_string(),
        }),
        Problem::BadRun { id, reason, moved_to } => json!({
            "kind": "bad_run", "id": id, "reason": reason, "moved_to": moved_to.display().to_string(),
        }),
    };
    value["message"] = json!(problem.to_string());
    value
}
