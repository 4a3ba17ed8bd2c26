//! The command line: global options and one variant per command.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "pipe", version, about = "Karpathy's recipe for training neural networks, as a build system")]
pub struct Cli {
    /// Run as if started in DIR (where pipe.toml lives).
    #[arg(short = 'C', value_name = "DIR", global = true)]
    pub directory: Option<PathBuf>,
    /// The pipeline file (default: pipe.toml in the working directory).
    #[arg(long, value_name = "FILE", global = true)]
    pub pipeline: Option<PathBuf>,
    /// Cache directory (default: .pipe beside pipe.toml; env PIPE_CACHE_DIR).
    #[arg(long, value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Override a knob, e.g. --set train.lr=1e-3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,
    /// Device class for training stages: cpu, cuda or metal.
    #[arg(long, default_value = "cpu", global = true)]
    pub device: String,
    /// CPU threads for candle (sets RAYON_NUM_THREADS before candle starts).
    #[arg(long, value_name = "N", global = true, env = "PIPE_THREADS")]
    pub threads: Option<usize>,
    /// A shared remote cache behind the local one: http[s]://host:port/prefix (Bazel's
    /// HTTP cache protocol; WebDAV PUT, MKCOL for claims) or s3://bucket/prefix
    /// (credentials from AWS_* in the environment). Overrides `cache.remote` in pipe.toml.
    #[arg(long, value_name = "URL", global = true, env = "PIPE_REMOTE_CACHE")]
    pub remote_cache: Option<String>,
    /// Print one JSON object per line instead of human output.
    #[arg(long, global = true)]
    pub json: bool,
    /// More detail (tracing output); PIPE_LOG sets a filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build targets, stages or stage instances (default: overfit).
    Build {
        /// Targets (inspect, skeleton, overfit, all), stage ids, or instances such as
        /// 'overfit[train.lr=0.001]' (a stage under knob overrides).
        targets: Vec<String>,
        /// Keep building after a failed check.
        #[arg(long)]
        keep_going: bool,
        /// Actions that may run at once [default: the number of CPUs].
        #[arg(short, long, value_name = "N", env = "PIPE_JOBS")]
        jobs: Option<usize>,
        /// Where actions run: `local` (threads of this process), `process` (one
        /// `pipe exec-action` child per action) or `slurm` (the actions ready together
        /// as one Slurm job array; the cache directory must be on a file system the
        /// nodes share, or use a remote cache). With slurm, --jobs is how many tasks
        /// may be submitted at once [default: 1000].
        #[arg(long, value_enum, default_value_t = RunnerKind::Local)]
        runner: RunnerKind,
        #[command(flatten)]
        slurm: SlurmArgs,
    },
    /// Say which stages are cached or stale, and why.
    Status { targets: Vec<String> },
    /// Print every knob with its default and documentation, as a commented pipe.toml.
    Knobs,
    /// Write a commented pipe.toml for a dataset (in -C DIR, or --pipeline FILE).
    Init {
        /// builtin:digits, idx:DIR, cifar10:DIR, csv:FILE or images:DIR (relative to the file).
        #[arg(long, value_name = "SOURCE")]
        data: String,
        /// Overwrite an existing pipeline file.
        #[arg(long)]
        force: bool,
    },
    /// Show a built stage: artifacts, metrics, verdicts.
    Show { stage: String },
    /// List recorded builds: id, start time, targets, and the knobs changed since the run before.
    Runs,
    /// Compare two sides: knobs, stage keys and why they differ, metrics, verdicts, curves, checkpoints.
    ///
    /// A side is a recorded run (@latest, @prev, @N or N), a pipeline file, `.` (the
    /// current pipeline), a tuning trial (`tune/trial-3`, at its last rung) or a stage
    /// instance (`overfit[train.lr=0.001]`: the pipeline under those overrides, that
    /// stage and its upstream). A defaults to @latest and B to `.`; --set overrides apply to
    /// the B side only, so `pipe diff . --set train.lr=1e-3` shows what that override
    /// would change and `pipe diff @prev @latest` compares the last two builds.
    Diff {
        /// A side: @latest, @prev, @N, N, a pipeline file, `.`, a tuning trial
        /// (`tune/trial-3`) or an instance (`overfit[train.lr=0.001]`) [default: @latest]
        a: Option<String>,
        /// B side, which --set overrides apply to [default: .]
        b: Option<String>,
    },
    /// Re-execute built stages ignoring the action cache; compare every artifact byte for byte.
    ///
    /// Each stage runs on its cached upstream artifacts (default target: overfit). Exit 1 on
    /// any mismatch, naming the first differing tensor or JSON field; the cache is never changed.
    Verify {
        /// Targets or stage ids; each stage is re-executed on its cached upstream artifacts.
        targets: Vec<String>,
    },
    /// Re-hash every object, action entry and run record; move corrupt ones to quarantine/.
    Fsck,
    /// Remove objects and action entries that no kept run references (takes the cache lock).
    Gc {
        /// Keep only the newest N runs and what they reference [default: all runs].
        #[arg(long, value_name = "N")]
        keep_runs: Option<usize>,
        /// Print what would be freed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Execute one queued action against the cache and print its outcome as JSON
    /// (what `--runner process` starts for each action).
    #[command(hide = true)]
    ExecAction {
        /// The action's stage key (hex).
        key: String,
    },
    /// Write an HTML page over built targets (default: overfit): config, scorecard,
    /// metrics, plots and links to every artifact. Builds nothing: run `pipe build` first.
    Report {
        /// Targets (skeleton, overfit, all) or stage ids; every stage must be built.
        targets: Vec<String>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunnerKind {
    Local,
    Process,
    Slurm,
}

/// Where and how `--runner slurm` tasks run (sbatch's options of the same names).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Slurm (--runner slurm)")]
pub struct SlurmArgs {
    /// Partition to submit to [default: the cluster's default].
    #[arg(long, value_name = "NAME", env = "PIPE_SLURM_PARTITION")]
    pub slurm_partition: Option<String>,
    /// Time limit per task, in sbatch's format (`30`, `2:00:00`, `1-0`) [default: the partition's].
    #[arg(long, value_name = "TIME", env = "PIPE_SLURM_TIME")]
    pub slurm_time: Option<String>,
    /// CPUs per task (also the task's --threads unless set).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub slurm_cpus: u32,
    /// GPUs per task [default: none].
    #[arg(long, value_name = "N")]
    pub slurm_gpus: Option<u32>,
}
