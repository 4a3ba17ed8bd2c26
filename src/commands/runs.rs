//! `pipe runs`: recorded builds, newest last, with what changed since the run before.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;

use crate::project::{existing_cache, Failure, Project};
use crate::text::{change_text, knob_text, say, utc};

pub fn run(project: &Project, json: bool) -> Result<u8, Failure> {
    let Some(cache) = existing_cache(project)? else {
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
            "{:>5}  {:<19}  {:<12}  {:<24}  {:<26}  changes since the run before",
            "run", "started (UTC)", "targets", "stages", "headline"
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
                "headline": summary.headline,
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
            // `val 0.9750 test 0.9700`: the metric names without their `_acc`, stage left out.
            let headline: Vec<String> = summary
                .headline
                .iter()
                .map(|(key, value)| {
                    let metric = key.rsplit('/').next().unwrap_or(key);
                    format!("{} {value:.4}", metric.trim_end_matches("_acc"))
                })
                .collect();
            let headline = if headline.is_empty() { "-".to_string() } else { format!("acc {}", headline.join(" ")) };
            let _ = writeln!(
                out,
                "{:>5}  {:<19}  {:<12}  {:<24}  {headline:<26}  {changes}",
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
