//! `pipe report`: one HTML page over built targets (config, scorecard, metrics,
//! inlined images, links to artifacts), rendered by `html.rs`. Builds nothing: a
//! stale stage exits 1 naming the build to run.

use std::io::Write as _;

use workspace::Db as _;

use crate::html;
use crate::project::{failed, targets_or, Failure, Project};

pub fn run(project: &Project, targets: &[String]) -> Result<u8, Failure> {
    let mut session = project.open()?;
    let targets = targets_or(targets, "overfit");
    let instances = session.instances(&targets, "overfit")?;
    // Under the lock, so no other build changes the cache between the check and the read.
    let _lock = session.cache.lock().map_err(failed)?;
    if let Some(stale) = workspace::status(&mut session.db, &instances).iter().find(|s| s.stale.is_some()) {
        let reason = stale.stale.as_ref().map(ToString::to_string).unwrap_or_default();
        let sets: String = project.sets.iter().map(|set| format!(" --set {set}")).collect();
        return Err(failed(anyhow::anyhow!(
            "stage `{}` is not built for this config ({reason}); run `pipe build {}{sets}` first \
             (`pipe report` builds nothing)",
            stale.name,
            targets.join(" ")
        )));
    }
    // Every stage is cached: answered from the action cache, nothing executes.
    let reports = workspace::cached_reports(&mut session.db, &instances)
        .ok_or_else(|| failed(anyhow::anyhow!("a stage of {} is not built", targets.join(" "))))?;
    let recipe = &session.db.engine().recipe;
    let pipeline = session
        .config
        .file
        .as_ref()
        .and_then(|file| file.file_name())
        .map_or_else(|| "pipe.toml".to_string(), |name| name.to_string_lossy().into_owned());
    let page = html::Page {
        targets: &targets,
        device: &session.device,
        pipeline: &pipeline,
        schema: &recipe.schema,
        config: &session.config,
        stage_docs: recipe.stages.iter().map(|stage| (stage.spec().id.0, stage.spec().doc)).collect(),
        reports: &reports,
    };
    let store = session.cache.store();
    let page_html = html::render(&page, &|hash| Ok(store.get(hash)?)).map_err(failed)?;
    let path = html::write(&session.cache, &page_html).map_err(failed)?;
    // stdout is the page's path alone (`xdg-open "$(pipe report)"`); a closed stdout is fine.
    let _ = writeln!(std::io::stdout(), "{}", path.display());
    session.cache.save_stats().map_err(failed)?;
    // Like `pipe show`: the page is written either way, and a failed check exits 1.
    if !reports.iter().any(|report| report.failed()) {
        return Ok(0);
    }
    let failed_checks: Vec<String> = reports
        .iter()
        .flat_map(|report| {
            report
                .verdicts
                .iter()
                .filter(|verdict| verdict.status == workspace::VerdictStatus::Fail)
                .map(move |verdict| format!("{} ({})", verdict.check, report.name))
        })
        .collect();
    eprintln!(
        "pipe: error: {} check(s) failed: {}; the report's scorecard says what to try",
        failed_checks.len(),
        failed_checks.join(", ")
    );
    Ok(1)
}
