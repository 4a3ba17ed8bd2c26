//! `pipe`: the command-line edge. Parses arguments, loads `pipe.toml`, opens the
//! cache, builds the salsa database over the recipe and prints what happened.
//! Exit codes: 0 ok, 1 a check failed or a stage errored, 2 bad usage or config.

mod diff;
mod history;
mod output;
mod progress;
mod report;
mod scorecard;
mod verify;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use workspace::{BuildOptions, Config, Database, Db as _};

/// glibc's malloc trims and regrows the heap around every training step of a small
/// model (150k `brk` calls per 10k steps, measured); mimalloc keeps its pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "pipe", version, about = "Karpathy's recipe for training neural networks, as a build system")]
struct Cli {
    /// Run as if started in DIR (where pipe.toml lives).
    #[arg(short = 'C', value_name = "DIR", global = true)]
    directory: Option<PathBuf>,
    /// The pipeline file (default: pipe.toml in the working directory).
    #[arg(long, value_name = "FILE", global = true)]
    pipeline: Option<PathBuf>,
    /// Cache directory (default: .pipe beside pipe.toml; env PIPE_CACHE_DIR).
    #[arg(long, value_name = "DIR", global = true)]
    cache_dir: Option<PathBuf>,
    /// Override a knob, e.g. --set train.lr=1e-3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
    /// Device class for training stages: cpu, cuda or metal.
    #[arg(long, default_value = "cpu", global = true)]
    device: String,
    /// CPU threads for candle (sets RAYON_NUM_THREADS before candle starts).
    #[arg(long, value_name = "N", global = true, env = "PIPE_THREADS")]
    threads: Option<usize>,
    /// More detail (tracing output); PIPE_LOG sets a filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build targets or stages (default: overfit).
    Build {
        /// Targets (skeleton, overfit, all) or stage ids.
        targets: Vec<String>,
        /// Print one JSON object per line instead of human output.
        #[arg(long)]
        json: bool,
        /// Keep building after a failed check.
        #[arg(long)]
        keep_going: bool,
    },
    /// Say which stages are cached or stale, and why.
    Status {
        targets: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print every knob with its default and documentation, as a commented pipe.toml.
    Knobs,
    /// Show a built stage: artifacts, metrics, verdicts.
    Show {
        stage: String,
        #[arg(long)]
        json: bool,
    },
    /// List recorded builds: id, start time, targets, and the knobs changed since the run before.
    Runs {
        #[arg(long)]
        json: bool,
    },
    /// Compare two sides: knobs, stage keys and why they differ, metrics, verdicts, curves, checkpoints.
    ///
    /// A side is a recorded run (@latest, @prev, @N or N), a pipeline file, or `.` (the
    /// current pipeline). A defaults to @latest and B to `.`; --set overrides apply to
    /// the B side only, so `pipe diff . --set train.lr=1e-3` shows what that override
    /// would change and `pipe diff @prev @latest` compares the last two builds.
    Diff {
        /// A side: @latest, @prev, @N, N, a pipeline file or `.` [default: @latest]
        a: Option<String>,
        /// B side, which --set overrides apply to [default: .]
        b: Option<String>,
        /// Print one JSON object with every section.
        #[arg(long)]
        json: bool,
    },
    /// Re-execute built stages ignoring the action cache; compare every artifact byte for byte.
    ///
    /// Each stage runs on its cached upstream artifacts (default target: overfit). Exit 1 on
    /// any mismatch, naming the first differing tensor or JSON field; the cache is never changed.
    Verify {
        /// Targets or stage ids; each stage is re-executed on its cached upstream artifacts.
        targets: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every object, action entry and run record; move corrupt ones to quarantine/.
    Fsck {
        #[arg(long)]
        json: bool,
    },
    /// Remove objects and action entries that no kept run references (takes the cache lock).
    Gc {
        /// Keep only the newest N runs and what they reference [default: all runs].
        #[arg(long, value_name = "N")]
        keep_runs: Option<usize>,
        /// Print what would be freed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write an HTML page over built targets (default: overfit): config, scorecard,
    /// metrics, plots and links to every artifact. Builds nothing: run `pipe build` first.
    Report {
        /// Targets (skeleton, overfit, all) or stage ids; every stage must be built.
        targets: Vec<String>,
    },
}

/// An error with its exit code.
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure { code: 2, error: error.into() }
}

fn failed(error: impl Into<anyhow::Error>) -> Failure {
    Failure { code: 1, error: error.into() }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before candle first runs: candle-core re-reads /proc/cpuinfo on every CPU
    // matmul when RAYON_NUM_THREADS is unset, and small models run fastest on one
    // thread. Results do not depend on the thread count.
    let threads = cli.threads.unwrap_or(1).max(1);
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    init_tracing(cli.verbose);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("pipe: error: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

fn init_tracing(verbose: u8) {
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
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

/// A loaded pipeline: resolved config, its file, the cache and the database.
struct Session {
    config: Config,
    cache: cache::Cache,
    db: Database,
    device: String,
}

/// Where the pipeline file and the cache directory are, without reading either.
fn locate(cli: &Cli) -> (PathBuf, PathBuf) {
    let base = match &cli.directory {
        Some(dir) => dir.clone(),
        None => PathBuf::from("."),
    };
    let file = match &cli.pipeline {
        Some(file) if file.is_absolute() => file.clone(),
        Some(file) => base.join(file),
        None => base.join("pipe.toml"),
    };
    let cache_dir = match (&cli.cache_dir, std::env::var_os("PIPE_CACHE_DIR")) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => PathBuf::from(dir),
        (None, None) => file.parent().unwrap_or(Path::new(".")).join(".pipe"),
    };
    let cache_dir = std::path::absolute(&cache_dir).unwrap_or(cache_dir);
    (file, cache_dir)
}

/// Loads and validates a pipeline file with `--set` overrides.
fn load_config(schema: &[workspace::KnobSpec], file: &Path, sets: &[String]) -> Result<Config, Failure> {
    let mut config = Config::load(schema, file).map_err(usage)?;
    for assignment in sets {
        config.set(schema, assignment).map_err(usage)?;
    }
    pipelines::validate(&config).map_err(usage)?;
    Ok(config)
}

fn open(cli: &Cli) -> Result<Session, Failure> {
    let (file, cache_dir) = locate(cli);
    if !file.exists() {
        return Err(usage(anyhow::anyhow!(
            "no pipeline file at {} (give one with --pipeline FILE or -C DIR; examples/digits/pipe.toml is a start)",
            file.display()
        )));
    }
    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let recipe = pipelines::recipe(&base_dir);
    let config = load_config(&recipe.schema, &file, &cli.set)?;
    let available = pipelines::available_devices();
    if !available.contains(&cli.device.as_str()) {
        return Err(usage(match cli.device.as_str() {
            "cuda" | "metal" => anyhow::anyhow!(
                "--device {0}: this pipe was built without the `{0}` feature; rebuild with `cargo build --release --features {0}`",
                cli.device
            ),
            other => anyhow::anyhow!("--device {other}: unknown device (use cpu, cuda or metal)"),
        }));
    }
    let cache = cache::Cache::open(&cache_dir)
        .with_context(|| format!("opening cache {}", cache_dir.display()))
        .map_err(failed)?;
    let fingerprints = pipelines::fingerprints(&config, &base_dir, cache.stats()).map_err(usage)?;
    let db = Database::new(recipe, cache.clone(), &config, fingerprints, &cli.device);
    Ok(Session { config, cache, db, device: cli.device.clone() })
}

fn run(cli: Cli) -> Result<u8, Failure> {
    let started = Instant::now();
    match &cli.command {
        Command::Build { targets, json, keep_going } => {
            let mut session = open(&cli)?;
            let targets = if targets.is_empty() { vec!["overfit".to_string()] } else { targets.clone() };
            let stages = workspace::resolve_targets(&session.db, &targets).map_err(|e| usage(anyhow::anyhow!(e)))?;
            let _lock = session.cache.lock().map_err(failed)?;
            let printer = output::Printer::new(*json, session.cache.out());
            session.db.set_progress(Arc::new(progress::Bar::new(!*json)));
            let reports = workspace::build(&session.db, &stages, &BuildOptions { keep_going: *keep_going }, |report| {
                printer.stage(report)
            });
            if !*json {
                // Stage lines carry the verdicts in --json; the scorecard is for people.
                scorecard::print(&reports);
            }
            printer.done(&reports, started.elapsed().as_secs_f64());
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
        Command::Knobs => {
            print!("{}", workspace::config::example_toml(&pipelines::knobs::schema()));
            Ok(0)
        }
        Command::Status { targets, json } => {
            let session = open(&cli)?;
            let targets = if targets.is_empty() { vec!["all".to_string()] } else { targets.clone() };
            let stages = workspace::resolve_targets(&session.db, &targets).map_err(|e| usage(anyhow::anyhow!(e)))?;
            let reports = workspace::status(&session.db, &stages);
            output::print_status(&reports, *json);
            session.cache.save_stats().map_err(failed)?;
            Ok(0)
        }
        Command::Show { stage, json } => {
            let session = open(&cli)?;
            if session.db.engine().recipe.spec(stage).is_none() {
                let stages = workspace::resolve_targets(&session.db, std::slice::from_ref(stage));
                return Err(usage(anyhow::anyhow!(match stages {
                    Err(message) => message,
                    Ok(_) => format!("`{stage}` is a target; `pipe show` takes a stage id"),
                })));
            }
            let stages = workspace::resolve_targets(&session.db, std::slice::from_ref(stage))
                .map_err(|e| usage(anyhow::anyhow!(e)))?;
            let status = workspace::status(&session.db, &stages);
            let mine = status.iter().find(|s| s.stage == stage.as_str()).expect("resolved stage has a status");
            if let Some(reason) = &mine.stale {
                return Err(failed(anyhow::anyhow!(
                    "stage `{stage}` is not built for this config ({reason}); run `pipe build {stage}`"
                )));
            }
            // Cached: the query is answered from the action cache, nothing executes.
            let _lock = session.cache.lock().map_err(failed)?;
            let reports = workspace::build(&session.db, &stages, &BuildOptions { keep_going: true }, |_| {});
            let report = reports.iter().find(|r| r.stage == stage.as_str()).expect("stage was built");
            output::print_show(report, &session.cache.out(), *json);
            if !*json {
                // Every check of the stage and of the upstream stages it was built from.
                scorecard::print(&reports);
            }
            session.cache.save_stats().map_err(failed)?;
            Ok(if report.failed() { 1 } else { 0 })
        }
        Command::Runs { json } => history::runs(&cli, *json),
        Command::Diff { a, b, json } => diff::diff(&cli, a.as_deref(), b.as_deref(), *json),
        Command::Verify { targets, json } => verify::verify(&cli, targets, *json),
        Command::Fsck { json } => history::fsck(&cli, *json),
        Command::Gc { keep_runs, dry_run, json } => history::gc(&cli, *keep_runs, *dry_run, *json),
        Command::Report { targets } => {
            let session = open(&cli)?;
            let targets = if targets.is_empty() { vec!["overfit".to_string()] } else { targets.clone() };
            let stages = workspace::resolve_targets(&session.db, &targets).map_err(|e| usage(anyhow::anyhow!(e)))?;
            // Under the lock, so no other build changes the cache between the check and the read.
            let _lock = session.cache.lock().map_err(failed)?;
            if let Some(stale) = workspace::status(&session.db, &stages).iter().find(|s| s.stale.is_some()) {
                let reason = stale.stale.as_ref().map(ToString::to_string).unwrap_or_default();
                let sets: String = cli.set.iter().map(|set| format!(" --set {set}")).collect();
                return Err(failed(anyhow::anyhow!(
                    "stage `{}` is not built for this config ({reason}); run `pipe build {}{sets}` first \
                     (`pipe report` builds nothing)",
                    stale.stage,
                    targets.join(" ")
                )));
            }
            // Every stage is cached: this answers from the action cache and executes nothing.
            let reports = workspace::build(&session.db, &stages, &BuildOptions { keep_going: true }, |_| {});
            let recipe = &session.db.engine().recipe;
            let pipeline = session
                .config
                .file
                .as_ref()
                .and_then(|file| file.file_name())
                .map_or_else(|| "pipe.toml".to_string(), |name| name.to_string_lossy().into_owned());
            let page = report::Page {
                targets: &targets,
                device: &session.device,
                pipeline: &pipeline,
                schema: &recipe.schema,
                config: &session.config,
                stage_docs: recipe.stages.iter().map(|spec| (spec.id, spec.doc)).collect(),
                reports: &reports,
            };
            let store = session.cache.store();
            let html = report::render(&page, &|hash| Ok(store.get(hash)?)).map_err(failed)?;
            let path = report::write(session.cache.root(), &html).map_err(failed)?;
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
                        .map(move |verdict| format!("{} ({})", verdict.check, report.stage))
                })
                .collect();
            eprintln!(
                "pipe: error: {} check(s) failed: {}; the report's scorecard says what to try",
                failed_checks.len(),
                failed_checks.join(", ")
            );
            Ok(1)
        }
    }
}
