//! `pipe runs`, `pipe fsck` and `pipe gc`, and what `pipe diff` shares with them:
//! run references (`@latest`, `@prev`, `@N`), knob text for people, UTC times.

use std::collections::BTreeMap;
use std::io::Write;

use cache::{Cache, GcOptions, Problem, Runs};
use serde_json::json;

use crate::{failed, locate, usage, Cli, Failure};

/// `println!` that ignores a closed stdout (`pipe runs | head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(&mut std::io::stdout().lock(), format_args!("{}\n", format_args!($($arg)*)));
    }};
}
pub(crate) use say;

/// The cache directory of this pipeline if it exists (`None`: nothing was ever built).
pub fn existing_cache(cli: &Cli) -> Result<Option<Cache>, Failure> {
    let (_, dir) = locate(cli);
    if !dir.is_dir() {
        return Ok(None);
    }
    Cache::open(&dir).map(Some).map_err(|err| failed(anyhow::anyhow!("opening cache {}: {err}", dir.display())))
}

/// Resolves `@latest`, `@prev`, `@N` or `N` to a recorded run id.
pub fn resolve_run(runs: &Runs, text: &str) -> Result<u64, Failure> {
    let ids = runs.ids();
    let err = |message: String| usage(anyhow::anyhow!(message));
    let recorded = || match (ids.first(), ids.last()) {
        (Some(first), Some(last)) if first == last => format!("the only recorded run is {first}"),
        (Some(first), Some(last)) => format!("recorded runs: {first}..{last}; see `pipe runs`"),
        _ => "no runs are recorded yet; `pipe build` records one".to_string(),
    };
    let id = match text.strip_prefix('@').unwrap_or(text) {
        "latest" => ids.last().copied().ok_or_else(|| err(format!("no run for `{text}`: {}", recorded())))?,
        "prev" => match ids.len() {
            n if n >= 2 => ids[n - 2],
            _ => return Err(err(format!("no run for `{text}` (the run before the latest): {}", recorded()))),
        },
        number => match number.parse::<u64>() {
            Ok(id) if ids.contains(&id) => id,
            Ok(_) => return Err(err(format!("no run {text}: {}", recorded()))),
            Err(_) => {
                return Err(err(format!("`{text}` is not a run reference (use @latest, @prev, @N or N)")));
            }
        },
    };
    Ok(id)
}

/// Whether `text` names a run rather than a pipeline file.
pub fn is_run_reference(text: &str) -> bool {
    text.starts_with('@') || (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
}

/// A knob's canonical text (`f64:0.0003`, `list[int:2,int:32]`) as a person writes it
/// (`0.0003`, `[2, 32]`); also valid as the value of `--set`.
pub use cache::value_text as knob_text;

pub use cache::changed_knobs;

/// `name a -> b` with person-readable values.
pub fn change_text(name: &str, a: &Option<String>, b: &Option<String>) -> String {
    let show = |v: &Option<String>| v.as_deref().map_or("(absent)".to_string(), knob_text);
    format!("{name} {} -> {}", show(a), show(b))
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn runs(cli: &Cli, json: bool) -> Result<u8, Failure> {
    let Some(cache) = existing_cache(cli)? else {
        if !json {
            say!("no runs recorded yet (`pipe build` records one)");
        }
        return Ok(0);
    };
    let summaries = cache.runs().summaries();
    if summaries.is_empty() && !json {
        say!("no runs recorded yet (`pipe build` records one)");
        return Ok(0);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !json {
        let _ = writeln!(
            out,
            "{:>5}  {:<19}  {:<12}  {:<24}  changes since the run before",
            "run", "started (UTC)", "targets", "stages"
        );
    }
    let mut previous: Option<&cache::RunSummary> = None;
    for summary in &summaries {
        // `summaries()` makes each `changed` relative to the run listed before it.
        let mut changes: Vec<(String, Option<String>, Option<String>)> = match previous {
            Some(_) => summary.changed.iter().map(|(name, [a, b])| (name.clone(), a.clone(), b.clone())).collect(),
            None => Vec::new(),
        };
        if let Some(p) = previous.filter(|p| p.device != summary.device) {
            changes.push(("--device".into(), Some(p.device.clone()), Some(summary.device.clone())));
        }
        if json {
            let changed: BTreeMap<&str, [Option<String>; 2]> = changes
                .iter()
                .map(|(name, a, b)| (name.as_str(), [a.as_deref().map(knob_text), b.as_deref().map(knob_text)]))
                .collect();
            let line = json!({
                "event": "run",
                "id": summary.id,
                "started_unix_secs": summary.started_unix_secs,
                "targets": summary.targets,
                "device": summary.device,
                "stages": summary.stages,
                "changed": changed,
            });
            let _ = writeln!(out, "{line}");
        } else {
            let stages: Vec<String> = ["ran", "cached", "failed", "skipped"]
                .iter()
                .filter_map(|status| summary.stages.get(*status).map(|n| format!("{n} {status}")))
                .collect();
            let changes = match (previous, changes.is_empty()) {
                (None, _) => "(first recorded run)".to_string(),
                (Some(_), true) => "(same config)".to_string(),
                (Some(_), false) => changes.iter().map(|(n, a, b)| change_text(n, a, b)).collect::<Vec<_>>().join(", "),
            };
            let _ = writeln!(
                out,
                "{:>5}  {:<19}  {:<12}  {:<24}  {changes}",
                summary.id,
                utc(summary.started_unix_secs),
                summary.targets.join(","),
                stages.join(", ")
            );
        }
        previous = Some(summary);
    }
    Ok(0)
}

pub fn fsck(cli: &Cli, json: bool) -> Result<u8, Failure> {
    let Some(cache) = existing_cache(cli)? else {
        say!("nothing to check: no cache at {}", locate(cli).1.display());
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

/// Bytes for people: `105.2 KiB`.
pub fn bytes_text(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

pub fn gc(cli: &Cli, keep_runs: Option<usize>, dry_run: bool, json: bool) -> Result<u8, Failure> {
    let Some(cache) = existing_cache(cli)? else {
        say!("nothing to collect: no cache at {}", locate(cli).1.display());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knob_text_and_times() {
        assert_eq!(knob_text("f64:0.0003"), "0.0003");
        assert_eq!(knob_text("str:builtin:digits"), "builtin:digits");
        assert_eq!(knob_text("list[int:128,int:64]"), "[128, 64]");
        assert_eq!(knob_text("list[]"), "[]");
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_709_210_096), "2024-02-29 12:34:56");
        assert!(is_run_reference("@prev") && is_run_reference("12") && !is_run_reference("b.toml"));
    }
}
