//! `pipe build`: plan the targets, run what is missing (in parallel, in this process
//! or in `pipe exec-action` children), print each stage as it settles, the scorecard
//! and a summary, and record the run. Ctrl-C abandons running actions (nothing
//! partial enters the cache), releases the lock and exits 130.

use std::sync::Arc;
use std::time::Instant;

use workspace::{BuildOptions, Cancel, ProcessRunner, Runner};

use crate::cli::RunnerKind;
use crate::output::{self, Printer};
use crate::progress::Bars;
use crate::project::{failed, targets_or, Failure, Project};
use crate::scorecard;

/// Exit code of a build stopped by Ctrl-C (128 + SIGINT).
pub const INTERRUPTED: u8 = 130;

pub fn run(
    project: &Project,
    targets: &[String],
    keep_going: bool,
    jobs: Option<usize>,
    runner: RunnerKind,
    json: bool,
) -> Result<u8, Failure> {
    let started = Instant::now();
    let mut session = project.open()?;
    let targets = targets_or(targets, "overfit");
    let instances = session.instances(&targets, "overfit")?;
    let _lock = session.cache.lock().map_err(failed)?;
    let printer = Printer::new(json, session.cache.out());
    session.db.set_progress(Arc::new(Bars::new(!json)));
    let interrupt = interrupt_on_ctrl_c();
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let options = BuildOptions { keep_going, jobs, interrupt };
    let runner: Arc<dyn Runner> = match runner {
        RunnerKind::Local => Arc::new(session.db.local_runner()),
        RunnerKind::Process => Arc::new(process_runner(project, &session)?),
    };
    let result = workspace::build(&mut session.db, &instances, &options, runner, |report| printer.stage(report));
    if result.interrupted {
        eprintln!("pipe: interrupted: running stages were abandoned; finished ones are cached");
        session.cache.save_stats().ok();
        return Ok(INTERRUPTED);
    }
    let reports = result.reports;
    if !json {
        // Stage lines carry the verdicts in --json; the scorecard is for people.
        scorecard::print(&reports);
    }
    printer.done(&reports, started.elapsed().as_secs_f64());
    if !json {
        // The line a person looks for first; in --json it is the evaluate stage's metrics.
        output::print_headline(&reports, &|hash| session.cache.store().get(hash).ok());
    }
    output::record_run(&session.cache, &targets, &session.config, &session.device, &reports);
    session.cache.save_stats().map_err(failed)?;
    Ok(if reports.iter().any(|r| r.bad_input) {
        2
    } else if reports.iter().any(|r| r.failed()) {
        1
    } else {
        0
    })
}

/// The first Ctrl-C asks the build to stop; a second one exits at once.
fn interrupt_on_ctrl_c() -> Cancel {
    let interrupt = Cancel::default();
    let flag = interrupt.clone();
    let installed = ctrlc::set_handler(move || {
        if flag.is_cancelled() {
            std::process::exit(i32::from(INTERRUPTED));
        }
        flag.cancel();
    });
    if let Err(error) = installed {
        tracing::warn!(%error, "Ctrl-C will not stop the build cleanly");
    }
    interrupt
}

/// `pipe exec-action` children of this very executable, on this cache.
fn process_runner(project: &Project, session: &crate::project::Session) -> Result<ProcessRunner, Failure> {
    let program = std::env::current_exe().map_err(|e| failed(anyhow::anyhow!("finding the pipe executable: {e}")))?;
    let mut args = vec!["--cache-dir".to_string(), project.cache_dir.display().to_string()];
    args.extend(["--device".to_string(), project.device.clone()]);
    if let Ok(threads) = std::env::var("RAYON_NUM_THREADS") {
        args.extend(["--threads".to_string(), threads]);
    }
    Ok(ProcessRunner { program, args, cache: session.cache.clone() })
}
