//! `pipe status`: each stage instance cached or stale, and why; executes nothing.

use crate::output;
use crate::project::{failed, Failure, Project};

pub fn run(project: &Project, targets: &[String], json: bool) -> Result<u8, Failure> {
    let mut session = project.open()?;
    let instances = session.instances(targets, "all")?;
    let reports = workspace::status(&mut session.db, &instances);
    output::print_status(&reports, json);
    session.cache.save_stats().map_err(failed)?;
    Ok(0)
}
