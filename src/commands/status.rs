//! `pipe status`: each stage instance cached or stale, and why; executes nothing.
//! A stale training instance with a saved state it may continue from says so
//! ("resumes from step 3000").

use workspace::{StaleReason, StatusReport};

use crate::output;
use crate::project::{failed, Failure, Project};

pub fn run(project: &Project, targets: &[String], json: bool) -> Result<u8, Failure> {
    let mut session = project.open()?;
    let instances = session.instances(targets, "all")?;
    let mut reports = workspace::status(&mut session.db, &instances);
    add_resume_notes(&mut session, &instances, &mut reports);
    output::print_status(&reports, json);
    session.cache.save_stats().map_err(failed)?;
    Ok(0)
}

/// Appends "resumes from step N" (or why not) to the reason of each stale instance
/// with a saved training state of the same configuration.
fn add_resume_notes(
    session: &mut crate::project::Session,
    instances: &[workspace::InstanceSpec],
    reports: &mut [StatusReport],
) {
    if !reports.iter().any(|report| report.stale.is_some()) {
        return;
    }
    let snapshots = workspace::snapshot(&mut session.db, instances);
    for report in reports.iter_mut() {
        let Some(stale) = &report.stale else { continue };
        let Some(inputs) = snapshots.iter().find(|s| s.name == report.name).and_then(|s| s.inputs.as_ref()) else {
            continue;
        };
        if let Some(note) = pipelines::stages::overfit::status_note(&session.cache, inputs) {
            let mut reasons = match stale {
                StaleReason::Changed(reasons) => reasons.clone(),
                other => vec![other.to_string()],
            };
            reasons.push(note);
            report.stale = Some(StaleReason::Changed(reasons));
        }
    }
}
