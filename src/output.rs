//! What `pipe` prints: one human line per stage (plus compiler-style errors for
//! failed checks) or, with `--json`, the line protocol of shared/design.md.

use std::collections::BTreeMap;
use std::io::Write;

use cache::{OutDir, RunRecord, RunStage};
use serde_json::{json, Value};
use workspace::{StageReport, StageStatus, StatusReport, Verdict, VerdictStatus};

/// `println!` that ignores a closed stdout (`pipe build --json | head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub struct Printer {
    json: bool,
    out: OutDir,
    /// Stage lines not yet written: a no-op build settles a thousand members in one
    /// burst, and a `write` per line cost a tenth of it. Written at
    /// [`Printer::flush`] (the build waits or ends), before anything goes to stderr,
    /// and when large.
    pending: std::cell::RefCell<Vec<u8>>,
    /// Per stage, cached instances with overrides whose checks all pass: how many got
    /// a line, and how many more were only counted (see [`Printer::quiet`]).
    quiet: std::cell::RefCell<Vec<(String, usize, usize)>>,
}

/// Pending stage lines are written once they reach this many bytes.
const PENDING_LIMIT: usize = 1 << 16;

fn status_word(report: &StageReport) -> &'static str {
    report.status.map_or("skipped", StageStatus::as_str)
}

pub(crate) fn verdict_word(status: VerdictStatus) -> &'static str {
    match status {
        VerdictStatus::Pass => "pass",
        VerdictStatus::Warn => "warn",
        VerdictStatus::Fail => "FAIL",
    }
}

/// The JSON object of one stage, as the `--json` protocol and `pipe show --json` give it.
pub fn stage_json(report: &StageReport, out: &OutDir) -> Value {
    let artifacts: BTreeMap<&String, Value> = report
        .output
        .iter()
        .flat_map(|output| output.artifacts.iter())
        .map(|(name, artifact)| {
            // A lazy artifact (large, not copied into out/) points at its read-only object.
            let (path, lazy) = out.locate(report.name.as_str(), name, artifact);
            let mut value =
                json!({ "hash": artifact.hash.to_hex(), "path": path.display().to_string(), "bytes": artifact.bytes });
            if lazy {
                value["lazy"] = json!(true);
            }
            (name, value)
        })
        .collect();
    let metrics = report.output.as_ref().map(|output| output.metrics.clone()).unwrap_or_default();
    let mut value = json!({
        "event": "stage",
        "stage": report.name.as_str(),
        "key": report.key.map(|key| key.to_hex()),
        "status": status_word(report),
        "secs": report.secs,
        "artifacts": artifacts,
        "metrics": metrics,
        "verdicts": report.verdicts,
    });
    if let Some(error) = &report.error {
        value["error"] = json!(error);
    }
    value
}

fn print_failure(stage: &str, verdict: &Verdict, member: bool) {
    let level = if member { "warning" } else { "error" };
    eprintln!("{level}[{}]: {}", verdict.check, verdict.message);
    eprintln!("  --> stage `{stage}`");
    if let Some(hint) = &verdict.hint {
        eprintln!("  = help: {hint}");
    }
    if member {
        eprintln!("  = note: a member of a fan-in stage (a trial, rung or ensemble member): the stage that reads it judges it, so it does not fail the build");
    }
}

/// A number for people: four decimals, or scientific notation when tiny or huge.
pub(crate) fn short(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e9 {
        // Counts (steps, examples) read as integers: `3000`, not `3000.0000`.
        format!("{value:.0}")
    } else if value != 0.0 && (value.abs() < 1e-3 || value.abs() >= 1e5) {
        format!("{value:.3e}")
    } else {
        format!("{value:.4}")
    }
}

impl Printer {
    pub fn new(json: bool, out: OutDir) -> Printer {
        Printer { json, out, pending: std::cell::RefCell::default(), quiet: std::cell::RefCell::default() }
    }

    /// Writes the pending stage lines.
    pub fn flush(&self) {
        let mut pending = self.pending.borrow_mut();
        if !pending.is_empty() {
            // A closed stdout (`pipe build | head`) is not an error.
            let _ = std::io::stdout().lock().write_all(&pending);
            pending.clear();
        }
    }

    /// [`Printer::stage`] of a settled instance; a wait writes what is pending.
    pub fn event(&self, event: workspace::BuildEvent<'_>) {
        match event {
            workspace::BuildEvent::Settled(report) => self.stage(report),
            workspace::BuildEvent::Waiting => self.flush(),
        }
    }

    /// Whether `report` goes without a line of its own: a cached instance with
    /// overrides (a tune's trial, an ensemble's seed) whose checks all pass, past the
    /// first [`crate::scorecard::LISTED_INSTANCES`] of its stage. [`Printer::done`]
    /// counts them on one line; `--json` lists every one.
    fn quiet(&self, report: &StageReport) -> bool {
        if self.json || report.status != Some(StageStatus::Cached) {
            return false;
        }
        let Some(stage) = crate::scorecard::countable_stage(report) else { return false };
        let mut quiet = self.quiet.borrow_mut();
        let entry = match quiet.iter().position(|(s, _, _)| s == stage) {
            Some(at) => &mut quiet[at],
            None => {
                quiet.push((stage.to_string(), 0, 0));
                quiet.last_mut().expect("just pushed")
            }
        };
        if entry.1 < crate::scorecard::LISTED_INSTANCES {
            entry.1 += 1;
            false
        } else {
            entry.2 += 1;
            true
        }
    }

    pub fn stage(&self, report: &StageReport) {
        if self.quiet(report) {
            return;
        }
        let mut pending = self.pending.borrow_mut();
        if self.json {
            let _ = writeln!(pending, "{}", stage_json(report, &self.out));
        } else {
            // Few checks: name them all; many: count the passes and name the rest.
            let verdicts: Vec<String> = if report.verdicts.len() <= 3 {
                report.verdicts.iter().map(|v| format!("{} {}", verdict_word(v.status), v.check)).collect()
            } else {
                let passed = report.verdicts.iter().filter(|v| v.status == VerdictStatus::Pass).count();
                std::iter::once(format!("{passed}/{} pass", report.verdicts.len()))
                    .chain(
                        report
                            .verdicts
                            .iter()
                            .filter(|v| v.status != VerdictStatus::Pass)
                            .map(|v| format!("{} {}", verdict_word(v.status), v.check)),
                    )
                    .collect()
            };
            let secs =
                if report.status == Some(StageStatus::Ran) { format!("{:.2}s", report.secs) } else { "-".into() };
            let _ = writeln!(
                pending,
                "{:>8} {:<22} {:>8}  {}",
                status_word(report),
                report.name.as_str(),
                secs,
                verdicts.join(", ")
            );
        }
        let failing = report.status == Some(StageStatus::Failed)
            || report.verdicts.iter().any(|verdict| verdict.status == VerdictStatus::Fail);
        let full = pending.len() >= PENDING_LIMIT;
        drop(pending);
        if failing || full {
            // Its line comes before its errors on a terminal, as it always did.
            self.flush();
        }
        // Failures go to stderr in both modes: stdout stays the protocol.
        for verdict in report.verdicts.iter().filter(|v| v.status == VerdictStatus::Fail) {
            print_failure(report.name.as_str(), verdict, report.member);
        }
        if report.status == Some(StageStatus::Failed) {
            if let Some(error) = &report.error {
                eprintln!("error[{}]: {error}", report.name.as_str());
            }
        }
    }

    /// After the last stage: one line per stage for the instances only counted
    /// ([`Printer::quiet`]), then everything pending is written.
    pub fn end_stages(&self) {
        for (stage, _, hidden) in self.quiet.borrow().iter().filter(|(_, _, hidden)| *hidden > 0) {
            let _ = writeln!(
                self.pending.borrow_mut(),
                "{:>8} {hidden} more instance{} of {stage}, every check passing (`--json` lists each)",
                "cached",
                if *hidden == 1 { "" } else { "s" }
            );
        }
        self.flush();
    }

    pub fn done(&self, reports: &[StageReport], secs: f64) {
        self.flush();
        let count = |status: Option<StageStatus>| reports.iter().filter(|r| r.status == status).count();
        let (ran, cached, failed) =
            (count(Some(StageStatus::Ran)), count(Some(StageStatus::Cached)), count(Some(StageStatus::Failed)));
        let fails = |member: bool| {
            reports
                .iter()
                .filter(|r| r.member == member)
                .flat_map(|r| &r.verdicts)
                .filter(|v| v.status == VerdictStatus::Fail)
                .count()
        };
        let (failed_checks, member_checks) = (fails(false), fails(true));
        if self.json {
            say!(
                "{}",
                json!({ "event": "done", "ran": ran, "cached": cached, "failed": failed, "failed_checks": failed_checks, "failed_member_checks": member_checks, "secs": secs })
            );
        } else {
            let skipped = count(None);
            let mut line = format!("{ran} ran, {cached} cached, {failed} failed");
            if skipped > 0 {
                line.push_str(&format!(", {skipped} skipped"));
            }
            if failed_checks > 0 {
                line.push_str(&format!("; {failed_checks} check(s) failed"));
            }
            if member_checks > 0 {
                line.push_str(&format!("; {member_checks} check(s) of members failed (judged by their stage)"));
            }
            say!("{line} in {secs:.2}s");
        }
    }
}

/// The build's headline (`overfit: convnet, val acc 0.9213, test acc 0.9170 (10,000
/// examples)`): the `headline.txt` artifact of the last stage that wrote one, so no
/// stage is named here.
pub fn headline(reports: &[StageReport], load: &dyn Fn(&cache::ArtifactHash) -> Option<Vec<u8>>) -> Option<String> {
    let artifact = reports.iter().rev().find_map(|r| r.output.as_ref()?.artifacts.get("headline.txt"))?;
    let text = String::from_utf8(load(&artifact.hash)?).ok()?;
    Some(text.trim().to_string()).filter(|line| !line.is_empty())
}

/// Prints [`headline`] as the build's last line, when there is one.
pub fn print_headline(reports: &[StageReport], load: &dyn Fn(&cache::ArtifactHash) -> Option<Vec<u8>>) {
    if let Some(line) = headline(reports, load) {
        say!("{line}");
    }
}

/// Records the build as a run in the cache (for `pipe runs` / `pipe diff`). A no-op
/// build (nothing ran or failed, and the newest run had the same config, device,
/// targets and stage keys) is not recorded again: it would be a copy of that run.
pub fn record_run(
    cache: &cache::Cache,
    targets: &[String],
    config: &workspace::Config,
    device: &str,
    reports: &[StageReport],
) {
    let runs = cache.runs();
    let run = RunRecord {
        id: runs.next_id(),
        started_unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs()),
        targets: targets.to_vec(),
        config: config.canonical(),
        device: device.to_string(),
        stages: reports
            .iter()
            .map(|report| RunStage {
                stage: report.name.0.clone(),
                key: report.key,
                status: status_word(report).to_string(),
                artifacts: report.output.as_ref().map(|o| (*o.artifacts).clone()).unwrap_or_default(),
                metrics: report.output.as_ref().map(|o| (*o.metrics).clone()).unwrap_or_default(),
                verdicts: serde_json::to_value(&report.verdicts).unwrap_or(Value::Null),
            })
            .collect(),
    };
    let no_op = reports.iter().all(|report| report.status == Some(StageStatus::Cached));
    if no_op {
        let same = |before: &RunRecord| {
            before.config == run.config
                && before.device == run.device
                && before.targets == run.targets
                && before.stages.iter().map(|s| (&s.stage, s.key)).eq(run.stages.iter().map(|s| (&s.stage, s.key)))
        };
        if runs.ids().last().and_then(|id| runs.load(*id).ok()).is_some_and(|before| same(&before)) {
            tracing::debug!("a no-op build of the latest run's config: not recorded again");
            return;
        }
    }
    if let Err(error) = runs.record(&run) {
        tracing::warn!(%error, "could not record the run");
    }
}

pub fn print_status(reports: &[StatusReport], json: bool) {
    for report in reports {
        if json {
            say!(
                "{}",
                json!({
                    "event": "status",
                    "stage": report.name.as_str(),
                    "key": report.key.map(|k| k.to_hex()),
                    "status": if report.stale.is_some() { "stale" } else { "cached" },
                    "reason": report.stale.as_ref().map(|r| r.to_string()),
                })
            );
        } else {
            match &report.stale {
                None => {
                    say!(
                        "{:>8} {:<22} {}",
                        "cached",
                        report.name.as_str(),
                        report.key.map(|k| k.short()).unwrap_or_default()
                    )
                }
                Some(reason) => say!("{:>8} {:<22} {reason}", "stale", report.name.as_str()),
            }
        }
    }
}

pub fn print_show(report: &StageReport, out: &OutDir, json: bool) {
    if json {
        say!("{}", stage_json(report, out));
        return;
    }
    say!("stage {}  key {}", report.name.as_str(), report.key.map(|k| k.to_hex()).unwrap_or_default());
    if let Some(output) = &report.output {
        say!("artifacts:");
        for (name, artifact) in output.artifacts.iter() {
            let (path, lazy) = out.locate(report.name.as_str(), name, artifact);
            let note = if lazy { "  (read-only object: not copied into .pipe/out)" } else { "" };
            say!("  {name:<26} {:>10} bytes  {}  {}{note}", artifact.bytes, artifact.hash.short(), path.display());
        }
        say!("metrics:");
        for (name, value) in output.metrics.iter() {
            say!("  {name:<26} {}", short(*value));
        }
    }
    if !report.verdicts.is_empty() {
        say!("verdicts:");
        for verdict in &report.verdicts {
            say!("  {:<5} {:<22} {}", verdict_word(verdict.status), verdict.check, verdict.message);
            if let Some(hint) = &verdict.hint {
                say!("        help: {hint}");
            }
        }
    }
}
