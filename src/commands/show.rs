//! `pipe show STAGE`: a built stage instance's artifacts, metrics and verdicts, and the
//! scorecard of the stages it was built from. Builds nothing.

use workspace::Db as _;

use crate::output;
use crate::project::{failed, usage, Failure, Project};
use crate::scorecard;

pub fn run(project: &Project, stage: &str, json: bool) -> Result<u8, Failure> {
    let mut session = project.open()?;
    let recipe = &session.db.engine().recipe;
    let target = match workspace::parse_instance(recipe, stage).map_err(|e| usage(anyhow::anyhow!(e)))? {
        Some(instance) => instance,
        None => {
            let resolved = workspace::resolve_targets(&session.db, &[stage.to_string()]);
            return Err(usage(anyhow::anyhow!(match resolved {
                Err(message) => message,
                Ok(_) => format!("`{stage}` is a target; `pipe show` takes a stage id"),
            })));
        }
    };
    let instances = workspace::closure(&session.db, vec![target.clone()]);
    // Under the lock, so no build changes the cache between the check and the read.
    let _lock = session.cache.lock().map_err(failed)?;
    let status = workspace::status(&mut session.db, &instances);
    let name = target.name();
    if let Some(reason) = status.iter().find(|s| s.name == name).and_then(|s| s.stale.as_ref()) {
        return Err(failed(anyhow::anyhow!(
            "stage `{name}` is not built for this config ({reason}); run `pipe build '{name}'`"
        )));
    }
    let reports = workspace::cached_reports(&mut session.db, &instances)
        .ok_or_else(|| failed(anyhow::anyhow!("stage `{name}` is not built for this config")))?;
    let Some(report) = reports.iter().find(|r| r.name == name) else {
        return Err(failed(anyhow::anyhow!("stage `{name}` is not built for this config")));
    };
    output::print_show(report, &session.cache.out(), json);
    if !json {
        // Every check of the stage and of the upstream stages it was built from.
        scorecard::print(&reports);
    }
    session.cache.save_stats().map_err(failed)?;
    Ok(if report.failed() { 1 } else { 0 })
}
