//! `pipe`: the command-line edge. Parses arguments and dispatches to one module per
//! command (`commands/`); shared helpers live in `project.rs`, printing in
//! `output.rs`. Exit codes: 0 ok, 1 a check failed or a stage errored, 2 bad usage
//! or config, 130 interrupted.

mod cli;
mod commands;
mod html;
mod output;
mod progress;
mod project;
mod scorecard;
mod text;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::project::{Failure, Project};

/// glibc's malloc trims and regrows the heap around every training step of a small
/// model (150k `brk` calls per 10k steps, measured); mimalloc keeps its pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before candle first runs: candle-core re-reads /proc/cpuinfo on every CPU
    // matmul when RAYON_NUM_THREADS is unset, and small models run fastest on one
    // thread. Results do not depend on the thread count.
    let threads = cli.threads.unwrap_or(1).max(1);
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // The remote cache reaches `pipe exec-action` children through the environment.
    if let Some(url) = &cli.remote_cache {
        std::env::set_var(project::REMOTE_ENV, url);
    }
    init_tracing(cli.verbose);
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("pipe: error: {}", text::error_chain(&failure.error));
            ExitCode::from(failure.code)
        }
    }
}

fn init_tracing(verbose: u8) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("PIPE_LOG") {
        Ok(filter) => EnvFilter::new(filter),
        Err(_) => EnvFilter::new(match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn run(cli: &Cli) -> Result<u8, Failure> {
    let project = Project::locate(
        cli.directory.as_deref(),
        cli.pipeline.as_deref(),
        cli.cache_dir.as_deref(),
        &cli.set,
        &cli.device,
    );
    let json = cli.json;
    match &cli.command {
        Command::Build { targets, keep_going, jobs, runner, slurm } => {
            commands::build::run(&project, targets, *keep_going, *jobs, (*runner, slurm), json)
        }
        Command::Status { targets } => commands::status::run(&project, targets, json),
        Command::Knobs => commands::knobs::run(),
        Command::Init { data, force } => commands::init::run(&project, data, *force),
        Command::Show { stage } => commands::show::run(&project, stage, json),
        Command::Runs => commands::runs::run(&project, json),
        Command::Diff { a, b } => commands::diff::run(&project, a.as_deref(), b.as_deref(), json),
        Command::Verify { targets } => commands::verify::run(&project, targets, json),
        Command::Fsck => commands::fsck::run(&project, json),
        Command::Gc { keep_runs, dry_run } => commands::gc::run(&project, *keep_runs, *dry_run, json),
        Command::Report { targets } => commands::report::run(&project, targets),
        Command::ExecAction { key } => commands::exec_action::run(&project, key),
    }
}
