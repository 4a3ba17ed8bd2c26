//! A temp directory holding a pipeline, and a runner for the `pipe` binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct TestDir {
    path: PathBuf,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl TestDir {
    /// A fresh directory with `examples/digits/pipe.toml` followed by `extra`, with
    /// `model.kind = "mlp"` (the example's `auto` picks the convnet): these tests were
    /// written for the MLP's speed and checkpoint; `zoo.rs` builds the other models.
    pub fn with_pipeline(extra: &str) -> TestDir {
        let base = std::fs::read_to_string(repo().join("examples/digits/pipe.toml")).unwrap();
        let base = base.replace("\nkind = \"auto\"\n", "\nkind = \"mlp\"\n");
        // Drop the example's sections that `extra` redefines: TOML forbids a table twice.
        let redefined: Vec<&str> = extra.lines().filter(|l| l.starts_with('[')).collect();
        let mut text = String::new();
        let mut skipping = false;
        for line in base.lines() {
            if line.starts_with('[') {
                skipping = redefined.contains(&line);
            }
            if !skipping {
                text.push_str(line);
                text.push('\n');
            }
        }
        TestDir::with_raw(&(text + extra))
    }

    /// A fresh directory whose `pipe.toml` is exactly `text`.
    pub fn with_raw(text: &str) -> TestDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("pipe-e2e-{}-{n}", std::process::id()));
        std::fs::remove_dir_all(&path).ok();
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("pipe.toml"), text).unwrap();
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pipe"));
        command.args(["-C", self.path.to_str().unwrap()]).args(args).current_dir(&self.path);
        command.env_remove("PIPE_CACHE_DIR").env_remove("PIPE_THREADS").env_remove("PIPE_LOG");
        for (key, value) in env {
            command.env(key, value);
        }
        command
    }

    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let output = self.command(args, env).output().expect("pipe runs");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_env(args, &[])
    }

    /// `pipe build --json ARGS...`
    pub fn build(&self, args: &[&str]) -> Run {
        let mut all = vec!["build", "--json"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("pipe starts")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.path).ok();
    }
}

pub fn wait(child: Child) -> Run {
    let output = child.wait_with_output().expect("pipe finishes");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Run {
    pub fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}\n{}", self.stderr))
            })
            .collect()
    }

    pub fn done(&self) -> Value {
        self.lines()
            .into_iter()
            .find(|l| l["event"] == "done")
            .unwrap_or_else(|| panic!("no done line:\n{}\n{}", self.stdout, self.stderr))
    }

    pub fn stage(&self, id: &str) -> Value {
        self.lines().into_iter().find(|l| l["stage"] == id).unwrap_or_else(|| panic!("no stage {id}:\n{}", self.stdout))
    }

    /// Artifact hashes by `stage/name`, sorted (stage lines come in the order stages
    /// finish, which parallel runs do not fix).
    pub fn hashes(&self) -> Vec<(String, String)> {
        let mut hashes = Vec::new();
        for line in self.lines().iter().filter(|l| l["event"] == "stage") {
            for (name, artifact) in line["artifacts"].as_object().unwrap() {
                hashes.push((
                    format!("{}/{name}", line["stage"].as_str().unwrap()),
                    artifact["hash"].as_str().unwrap().to_string(),
                ));
            }
        }
        hashes.sort();
        hashes
    }
}

/// The stages of the recipe, in recipe order.
pub const RECIPE_ORDER: [&str; 11] = [
    "data",
    "inspect",
    "batch_preview",
    "human_baseline",
    "dumb_baselines",
    "grad_deps",
    "loss_at_init",
    "zero_input_baseline",
    "overfit_batch",
    "overfit",
    "beats_baselines",
];

/// (stage, status) of every stage line, in recipe order (lines come in the order
/// stages finish; instances sort after their stage).
pub fn stage_statuses(run: &Run) -> Vec<(String, String)> {
    let mut statuses: Vec<(String, String)> = run
        .lines()
        .iter()
        .filter(|l| l["event"] == "stage")
        .map(|l| (l["stage"].as_str().unwrap().to_string(), l["status"].as_str().unwrap().to_string()))
        .collect();
    let position = |name: &str| {
        let stage = name.split('[').next().unwrap_or(name);
        (RECIPE_ORDER.iter().position(|s| *s == stage).unwrap_or(usize::MAX), name.to_string())
    };
    statuses.sort_by_key(|(name, _)| position(name));
    statuses
}
