//! `pipe build`: plan the targets, run what is missing (in parallel, in this process,
//! in `pipe exec-action` children or as Slurm array tasks), print each stage as it
//! settles, the scorecard
//! and a summary, and record the run. Ctrl-C abandons running actions (nothing
//! partial enters the cache), releases the lock and exits 130.

use std::sync::Arc;
use std::time::Instant;

use workspace::{BuildOptions, Cancel, ExecCommand, ProcessRunner, Runner, SlurmOptions, SlurmRunner};

use crate::cli::{RunnerKind, SlurmArgs};
use crate::output::{self, Printer};
use crate::progress::Bars;
use crate::project::{failed, targets_or, usage, Failure, Project};
use crate::scorecard;

/// Exit code of a build stopped by Ctrl-C (128 + SIGINT).
pub const INTERRUPTED: u8 = 130;

pub fn run(
    project: &Project,
    targets: &[String],
    keep_going: bool,
    jobs: Option<usize>,
    (runner, slurm): (RunnerKind, &SlurmArgs),
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
    let jobs = jobs.unwrap_or_else(|| match runner {
        // The cluster schedules tasks; this is how many may be submitted at once.
        RunnerKind::Slurm => SLURM_JOBS,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    let options = BuildOptions { keep_going, jobs, interrupt };
    let runner: Arc<dyn Runner> = match runner {
        RunnerKind::Local => Arc::new(session.db.local_runner()),
        RunnerKind::Process => {
            Arc::new(ProcessRunner { command: exec_command(project, None)?, cache: session.cache.clone() })
        }
        RunnerKind::Slurm => Arc::new(slurm_runner(project, &session, slurm)?),
    };
    let result = workspace::build(&mut session.db, &instances, &options, runner, |event| printer.event(event));
    printer.end_stages();
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
    if !same_as_latest_run(&session, &targets, &reports) {
        output::record_run(&session.cache, &targets, &session.config, &session.device, &reports);
    }
    session.cache.save_stats().map_err(failed)?;
    let code = if reports.iter().any(|r| r.bad_input) {
        2
    } else if reports.iter().any(|r| r.fails_build()) {
        1
    } else {
        0
    };
    // Everything is written: the process ends soon, so the database and the reports
    // (a thousand members' outputs) are not taken apart piece by piece.
    std::mem::forget(reports);
    std::mem::forget(session);
    Ok(code)
}

/// A no-op build (everything cached) of the latest run's targets, config, device and
/// stage keys, told from the run index: such a build is not recorded again, and the
/// latest full record (megabytes for a large tune) is not read to find that out.
fn same_as_latest_run(
    session: &crate::project::Session,
    targets: &[String],
    reports: &[workspace::StageReport],
) -> bool {
    reports.iter().all(|report| report.status == Some(workspace::StageStatus::Cached))
        && session.cache.runs().latest_is(
            targets,
            &session.config.canonical(),
            &session.device,
            &cache::stages_hash(reports.iter().map(|report| (report.name.as_str(), report.key))),
        )
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

/// Tasks `--runner slurm` submits at once unless --jobs says otherwise.
const SLURM_JOBS: usize = 1000;

/// `pipe exec-action` run by this very executable, on this cache. `threads` is the
/// child's --threads when RAYON_NUM_THREADS does not set it.
fn exec_command(project: &Project, threads: Option<u32>) -> Result<ExecCommand, Failure> {
    let program = std::env::current_exe().map_err(|e| failed(anyhow::anyhow!("finding the pipe executable: {e}")))?;
    let mut args = vec!["--cache-dir".to_string(), project.cache_dir.display().to_string()];
    args.extend(["--device".to_string(), project.device.clone()]);
    match (std::env::var("RAYON_NUM_THREADS"), threads) {
        (Ok(threads), _) => args.extend(["--threads".to_string(), threads]),
        (Err(_), Some(threads)) => args.extend(["--threads".to_string(), threads.to_string()]),
        (Err(_), None) => {}
    }
    Ok(ExecCommand { program, args })
}

/// Slurm array tasks running `pipe exec-action` on this cache (which the nodes must
/// share); task states are printed on stderr as they change.
fn slurm_runner(
    project: &Project,
    session: &crate::project::Session,
    args: &SlurmArgs,
) -> Result<SlurmRunner, Failure> {
    let client = std::process::Command::new("sbatch").arg("--version").output();
    if !client.is_ok_and(|output| output.status.success()) {
        return Err(usage(anyhow::anyhow!(
            "--runner slurm: `sbatch` is not installed here (Slurm's client commands: sbatch, squeue, scancel)"
        )));
    }
    let options = SlurmOptions {
        partition: args.slurm_partition.clone(),
        time: args.slurm_time.clone(),
        cpus_per_task: args.slurm_cpus,
        gpus_per_task: args.slurm_gpus,
        ..SlurmOptions::default()
    };
    let workdir = std::env::current_dir().map_err(|e| failed(anyhow::anyhow!("reading the working directory: {e}")))?;
    let events: workspace::SlurmEvents = Arc::new(|line: &str| eprintln!("{line}"));
    Ok(SlurmRunner::new(exec_command(project, Some(args.slurm_cpus))?, session.cache.clone(), options, workdir, events))
}
