//! What every command shares: where the pipeline file and the cache are, loading the
//! config with `--set`, opening the database, resolving a recorded run, and errors
//! that carry their exit code.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cache::{Cache, Runs};
use workspace::{Config, Database};

/// An error with its exit code (1: failed, 2: bad usage or config).
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure { code: 2, error: error.into() }
}

pub fn failed(error: impl Into<anyhow::Error>) -> Failure {
    Failure { code: 1, error: error.into() }
}

/// Where the pipeline is and the options that apply to every command.
#[derive(Debug, Clone)]
pub struct Project {
    /// `-C DIR`: relative names (diff sides) start here.
    pub directory: PathBuf,
    /// The pipeline file (it may not exist).
    pub file: PathBuf,
    pub cache_dir: PathBuf,
    /// `--set` overrides.
    pub sets: Vec<String>,
    pub device: String,
    /// `-C` and `--cache-dir` as given (for commands printed back to the user).
    pub directory_arg: Option<PathBuf>,
    pub cache_dir_arg: Option<PathBuf>,
}

impl Project {
    /// Finds the pipeline file and the cache directory without reading either.
    pub fn locate(
        directory: Option<&Path>,
        pipeline: Option<&Path>,
        cache_dir: Option<&Path>,
        sets: &[String],
        device: &str,
    ) -> Project {
        let directory_arg = directory.map(Path::to_path_buf);
        let cache_dir_arg = cache_dir.map(Path::to_path_buf);
        let directory = directory.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let file = match pipeline {
            Some(file) if file.is_absolute() => file.to_path_buf(),
            Some(file) => directory.join(file),
            None => directory.join("pipe.toml"),
        };
        let cache_dir = match (cache_dir, std::env::var_os("PIPE_CACHE_DIR")) {
            (Some(dir), _) => dir.to_path_buf(),
            (None, Some(dir)) => PathBuf::from(dir),
            (None, None) => file.parent().unwrap_or(Path::new(".")).join(".pipe"),
        };
        let cache_dir = std::path::absolute(&cache_dir).unwrap_or(cache_dir);
        Project {
            directory,
            file,
            cache_dir,
            sets: sets.to_vec(),
            device: device.to_string(),
            directory_arg,
            cache_dir_arg,
        }
    }

    /// Opens the cache (creating it) and the database over this pipeline.
    pub fn open(&self) -> Result<Session, Failure> {
        self.open_file(&self.file, &self.sets)
    }

    /// Opens the database over another pipeline file (a `pipe diff` side) on this cache.
    pub fn open_file(&self, file: &Path, sets: &[String]) -> Result<Session, Failure> {
        if !file.exists() {
            return Err(usage(anyhow::anyhow!(
                "no pipeline file at {} (give one with --pipeline FILE or -C DIR; examples/digits/pipe.toml is a start)",
                file.display()
            )));
        }
        let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let recipe = pipelines::recipe(&base_dir);
        let config = load_config(&recipe.schema, file, sets)?;
        let available = pipelines::available_devices();
        if !available.contains(&self.device.as_str()) {
            return Err(usage(match self.device.as_str() {
                "cuda" | "metal" => anyhow::anyhow!(
                    "--device {0}: this pipe was built without the `{0}` feature; rebuild with `cargo build --release --features {0}`",
                    self.device
                ),
                other => anyhow::anyhow!("--device {other}: unknown device (use cpu, cuda or metal)"),
            }));
        }
        let cache = Cache::open(&self.cache_dir)
            .with_context(|| format!("opening cache {}", self.cache_dir.display()))
            .map_err(failed)?;
        let cache = with_remote(cache, &config)?;
        let fingerprints = pipelines::fingerprints(&config, &base_dir, cache.stats()).map_err(usage)?;
        let db = Database::new(recipe, cache.clone(), &config, fingerprints, &self.device);
        Ok(Session { config, cache, db, device: self.device.clone() })
    }

    /// Opens the cache directory without a pipeline file (for `exec-action`).
    pub fn open_cache(&self) -> Result<Cache, Failure> {
        let cache = Cache::open(&self.cache_dir)
            .with_context(|| format!("opening cache {}", self.cache_dir.display()))
            .map_err(failed)?;
        match std::env::var(REMOTE_ENV) {
            Ok(url) if !url.is_empty() => Ok(cache.with_remote(cache::remote::open(&url).map_err(usage)?)),
            _ => Ok(cache),
        }
    }
}

/// The environment variable naming the remote cache (`--remote-cache` sets it).
pub const REMOTE_ENV: &str = "PIPE_REMOTE_CACHE";

/// `cache` with the remote tier of `--remote-cache` / `PIPE_REMOTE_CACHE`, else of
/// `cache.remote` in pipe.toml; the URL is passed on to `exec-action` children.
fn with_remote(cache: Cache, config: &Config) -> Result<Cache, Failure> {
    let from_env = std::env::var(REMOTE_ENV).ok().filter(|url| !url.is_empty());
    let from_config = config.get("cache.remote").and_then(|value| value.as_str()).filter(|url| !url.is_empty());
    let Some(url) = from_env.or(from_config.map(str::to_string)) else { return Ok(cache) };
    let remote = cache::remote::open(&url).map_err(|error| match from_config {
        Some(_) if std::env::var(REMOTE_ENV).is_err() => {
            usage(config.error_at("cache.remote", error.to_string(), None))
        }
        _ => usage(error),
    })?;
    std::env::set_var(REMOTE_ENV, &url);
    Ok(cache.with_remote(remote))
}

/// A loaded pipeline: resolved config, the cache and the database.
pub struct Session {
    pub config: Config,
    pub cache: Cache,
    pub db: Database,
    pub device: String,
}

impl Session {
    /// Instances of `targets` (default `default`), upstream included, in recipe order.
    pub fn instances(&self, targets: &[String], default: &str) -> Result<Vec<workspace::InstanceSpec>, Failure> {
        let targets = targets_or(targets, default);
        workspace::resolve_targets(&self.db, &targets).map_err(|e| usage(anyhow::anyhow!(e)))
    }
}

/// `targets`, or `[default]` when none were given.
pub fn targets_or(targets: &[String], default: &str) -> Vec<String> {
    if targets.is_empty() {
        vec![default.to_string()]
    } else {
        targets.to_vec()
    }
}

/// Loads and validates a pipeline file with `--set` overrides.
pub fn load_config(schema: &[workspace::KnobSpec], file: &Path, sets: &[String]) -> Result<Config, Failure> {
    let mut config = Config::load(schema, file).map_err(usage)?;
    for assignment in sets {
        config.set(schema, assignment).map_err(usage)?;
    }
    pipelines::validate(&config).map_err(usage)?;
    Ok(config)
}

/// The cache directory of this pipeline if it exists (`None`: nothing was ever built).
pub fn existing_cache(project: &Project) -> Result<Option<Cache>, Failure> {
    let dir = &project.cache_dir;
    if !dir.is_dir() {
        return Ok(None);
    }
    Cache::open(dir).map(Some).map_err(|err| failed(anyhow::anyhow!("opening cache {}: {err}", dir.display())))
}

/// Resolves `@latest`, `@prev`, `@N` or `N` to a recorded run id.
pub fn resolve_run(runs: &Runs, text: &str) -> Result<u64, Failure> {
    let ids = runs.ids();
    let err = |message: String| usage(anyhow::anyhow!(message));
    let recorded = || match (ids.first(), ids.last()) {
        (Some(first), Some(last)) if first == last => format!("the only recorded run is {first}"),
        (Some(first), Some(last)) => format!("recorded runs: {first}..{last}; see `pipe runs`"),
        _ => "no runs are recorded yet; `pipe build` records one".to_string(),
    };
    let id = match text.strip_prefix('@').unwrap_or(text) {
        "latest" => ids.last().copied().ok_or_else(|| err(format!("no run for `{text}`: {}", recorded())))?,
        "prev" => match ids.len() {
            n if n >= 2 => ids[n - 2],
            _ => return Err(err(format!("no run for `{text}` (the run before the latest): {}", recorded()))),
        },
        number => match number.parse::<u64>() {
            Ok(id) if ids.contains(&id) => id,
            Ok(_) => return Err(err(format!("no run {text}: {}", recorded()))),
            Err(_) => {
                return Err(err(format!("`{text}` is not a run reference (use @latest, @prev, @N or N)")));
            }
        },
    };
    Ok(id)
}

/// Whether `text` names a run rather than a pipeline file.
pub fn is_run_reference(text: &str) -> bool {
    text.starts_with('@') || (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_references() {
        assert!(is_run_reference("@prev") && is_run_reference("12") && !is_run_reference("b.toml"));
    }
}
