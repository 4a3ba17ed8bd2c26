//! [`SlurmRunner`]: actions run as the tasks of Slurm job arrays.
//!
//! The build loop calls [`Runner::run`] once per action, from one thread each, and
//! dispatches every action that becomes ready in a pass at once (a tune's trials all
//! together). The first call to arrive while nothing is pending becomes the batch's
//! *leader*: it waits `gather` for more calls (until none arrived for one `gather`
//! period), submits them all as one `sbatch --array` whose task `i` runs `pipe
//! exec-action KEY_i` against the shared cache, and starts one monitor thread for the
//! array. The monitor polls `squeue` every `poll`, reports each task's state change
//! through the runner's event sink, and hands each finished task's outcome (the JSON
//! line in its log, else the action cache's entry) to the waiting call. A task that
//! ends without an outcome (killed, timed out, cancelled by someone else) is a
//! failure of its stage whose message names the task, its state, its log and the
//! log's last lines. A cancelled call (Ctrl-C, or the build stopping after a failure)
//! `scancel`s its task, or the whole array once every unfinished task is cancelled.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cache::{Cache, StageKey};

use super::slurm_cmd::{self, JobId, TaskState};
use super::{outcome_in, ExecCommand, Runner};
use crate::action::{Action, ActionOutcome};
use crate::recipe::{Cancel, Progress, StageFailure, StageOutput};

/// Where and how tasks run.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// `--partition` (default: the cluster's default partition).
    pub partition: Option<String>,
    /// `--time`, a per-task limit such as `30`, `2:00:00` or `1-0` (default: the partition's).
    pub time: Option<String>,
    /// `--cpus-per-task`.
    pub cpus_per_task: u32,
    /// `--gpus-per-task` (default: none requested).
    pub gpus_per_task: Option<u32>,
    /// `--job-name`.
    pub job_name: String,
    /// How long a batch's leader waits for more ready actions.
    pub gather: Duration,
    /// How often `squeue` is asked.
    pub poll: Duration,
    /// The most tasks in one array (clusters default `MaxArraySize` to 1001).
    pub max_array: usize,
    /// The directory of `sbatch`, `squeue` and `scancel` (default: found on PATH).
    pub bin_dir: Option<PathBuf>,
}

impl Default for SlurmOptions {
    fn default() -> SlurmOptions {
        SlurmOptions {
            partition: None,
            time: None,
            cpus_per_task: 1,
            gpus_per_task: None,
            job_name: "pipe".to_string(),
            gather: Duration::from_millis(100),
            poll: Duration::from_millis(250),
            max_array: 1000,
            bin_dir: None,
        }
    }
}

/// Receives one line per submission and per task state change (`slurm: 41_3
/// overfit[train.lr=0.01] RUNNING`); the CLI prints them on stderr.
pub type SlurmEvents = Arc<dyn Fn(&str) + Send + Sync>;

/// Runs actions as Slurm array tasks (see the module documentation).
pub struct SlurmRunner {
    shared: Arc<Shared>,
}

struct Shared {
    command: ExecCommand,
    cache: Cache,
    options: SlurmOptions,
    workdir: PathBuf,
    events: SlurmEvents,
    pending: Mutex<Vec<Request>>,
    batches: AtomicU64,
}

/// One `run` call waiting for its task.
struct Request {
    key: StageKey,
    name: String,
    ticket: Arc<Mutex<Ticket>>,
    reply: mpsc::Sender<ActionOutcome>,
}

/// Where a request stands, shared by its `run` call and the batch's leader.
#[derive(Clone)]
enum Ticket {
    Waiting,
    Cancelled,
    Placed(Arc<Array>, usize),
}

/// A submitted job array.
struct Array {
    job: JobId,
    bin_dir: Option<PathBuf>,
    /// Per task: finished (its outcome was handed over) and cancelled by us.
    tasks: Mutex<Vec<(bool, bool)>>,
    events: SlurmEvents,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn failure(key: StageKey, message: String) -> ActionOutcome {
    ActionOutcome { key, secs: 0.0, result: Err(StageFailure::Error(message)) }
}

impl SlurmRunner {
    /// Tasks run `command ... exec-action KEY` in `workdir`; logs go under
    /// `<cache>/slurm/<batch>/<task>.log`.
    pub fn new(
        command: ExecCommand,
        cache: Cache,
        options: SlurmOptions,
        workdir: PathBuf,
        events: SlurmEvents,
    ) -> SlurmRunner {
        let shared = Shared {
            command,
            cache,
            options,
            workdir,
            events,
            pending: Mutex::new(Vec::new()),
            batches: AtomicU64::new(0),
        };
        SlurmRunner { shared: Arc::new(shared) }
    }
}

impl Runner for SlurmRunner {
    fn run(&self, action: &Action, progress: &dyn Progress, cancel: &Cancel) -> ActionOutcome {
        let key = action.key();
        let (reply, outcomes) = mpsc::channel();
        let ticket = Arc::new(Mutex::new(Ticket::Waiting));
        let leader = {
            let mut pending = lock(&self.shared.pending);
            pending.push(Request { key, name: action.name.clone(), ticket: ticket.clone(), reply });
            pending.len() == 1
        };
        if leader {
            self.shared.gather();
            Shared::submit_pending(&self.shared);
        }
        progress.begin(&action.name, 0);
        let outcome = loop {
            match outcomes.recv_timeout(Duration::from_millis(50)) {
                Ok(outcome) => break outcome,
                Err(mpsc::RecvTimeoutError::Timeout) if cancel.is_cancelled() => {
                    cancel_ticket(&ticket);
                    break ActionOutcome { key, secs: 0.0, result: Err(StageFailure::Cancelled) };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break failure(key, "the Slurm monitor stopped without an outcome".to_string())
                }
            }
        };
        progress.end();
        outcome
    }
}

/// Marks the request cancelled; a submitted task is `scancel`led.
fn cancel_ticket(ticket: &Mutex<Ticket>) {
    let placed = {
        let mut ticket = lock(ticket);
        let previous = std::mem::replace(&mut *ticket, Ticket::Cancelled);
        match previous {
            Ticket::Placed(array, task) => Some((array, task)),
            _ => None,
        }
    };
    if let Some((array, task)) = placed {
        array.cancel(task);
    }
}

impl Array {
    /// Cancels `task`: the whole array once no unfinished task is left uncancelled
    /// (Ctrl-C cancels every call at once), else that task alone.
    fn cancel(&self, task: usize) {
        let whole = {
            let mut tasks = lock(&self.tasks);
            match tasks.get_mut(task) {
                Some((true, _)) | None => return,
                Some(entry) => entry.1 = true,
            }
            tasks.iter().all(|(finished, cancelled)| *finished || *cancelled)
        };
        let only = [task];
        let result = slurm_cmd::scancel(self.bin_dir.as_deref(), &self.job, if whole { None } else { Some(&only[..]) });
        match result {
            Ok(()) if whole => (self.events)(&format!("slurm: cancelled job array {}", self.job)),
            Ok(()) => (self.events)(&format!("slurm: cancelled task {}_{task}", self.job)),
            Err(error) => (self.events)(&format!("slurm: could not cancel {}_{task}: {error}", self.job)),
        }
    }

    /// Marks `task` finished; false when it already was.
    fn finish(&self, task: usize) -> bool {
        let mut tasks = lock(&self.tasks);
        match tasks.get_mut(task) {
            Some(entry) if !entry.0 => {
                entry.0 = true;
                true
            }
            _ => false,
        }
    }

    fn cancelled(&self, task: usize) -> bool {
        lock(&self.tasks).get(task).is_some_and(|entry| entry.1)
    }
}

impl Shared {
    /// Waits until no request arrived for one `gather` period (at most 20 periods).
    fn gather(&self) {
        let started = Instant::now();
        let mut seen = 0;
        loop {
            std::thread::sleep(self.options.gather);
            let now = lock(&self.pending).len();
            if now == seen || started.elapsed() > self.options.gather * 20 {
                return;
            }
            seen = now;
        }
    }

    /// Submits what is pending, in arrays of at most `max_array` tasks.
    fn submit_pending(shared: &Arc<Shared>) {
        loop {
            let batch: Vec<Request> = {
                let mut pending = lock(&shared.pending);
                if pending.is_empty() {
                    return;
                }
                let take = pending.len().min(shared.options.max_array.max(1));
                pending.drain(..take).collect()
            };
            // Requests cancelled while they waited are not submitted.
            let batch: Vec<Request> =
                batch.into_iter().filter(|request| !matches!(*lock(&request.ticket), Ticket::Cancelled)).collect();
            if !batch.is_empty() {
                Shared::submit(shared, batch);
            }
        }
    }

    fn submit(shared: &Arc<Shared>, batch: Vec<Request>) {
        let submitted = shared.write_and_submit(&batch);
        let (job, dir) = match submitted {
            Ok(submitted) => submitted,
            Err(error) => {
                for request in batch {
                    let message = format!("submitting to Slurm: {error}");
                    request.reply.send(failure(request.key, message)).ok();
                }
                return;
            }
        };
        let names: Vec<&str> = batch.iter().map(|request| request.name.as_str()).collect();
        (shared.events)(&format!(
            "slurm: submitted job array {job} ({} tasks: {}); logs in {}",
            batch.len(),
            names.join(", "),
            dir.display()
        ));
        let array = Arc::new(Array {
            job: job.clone(),
            bin_dir: shared.options.bin_dir.clone(),
            tasks: Mutex::new(vec![(false, false); batch.len()]),
            events: shared.events.clone(),
        });
        for (task, request) in batch.iter().enumerate() {
            let cancelled = {
                let mut ticket = lock(&request.ticket);
                match *ticket {
                    Ticket::Cancelled => true,
                    _ => {
                        *ticket = Ticket::Placed(array.clone(), task);
                        false
                    }
                }
            };
            if cancelled {
                array.cancel(task);
            }
        }
        let monitor = Monitor { shared: shared.clone(), array, dir, requests: batch };
        std::thread::spawn(move || monitor.watch());
    }

    /// Writes the batch's script under the cache and submits it: the job id and the
    /// directory of its logs.
    fn write_and_submit(&self, batch: &[Request]) -> Result<(JobId, PathBuf), String> {
        let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let seq = self.batches.fetch_add(1, Ordering::SeqCst);
        let relative = PathBuf::from("slurm").join(format!("{millis}-{}-{seq}", std::process::id()));
        let dir = self.cache.create_dir(&relative).map_err(|error| error.to_string())?;
        let keys: Vec<StageKey> = batch.iter().map(|request| request.key).collect();
        let script = slurm_cmd::job_script(&self.command, &keys);
        let script_path =
            self.cache.write_file(&relative.join("job.sh"), script.as_bytes()).map_err(|error| error.to_string())?;
        let args = slurm_cmd::sbatch_args(&self.options, batch.len(), &dir, &self.workdir);
        let job = slurm_cmd::sbatch(self.options.bin_dir.as_deref(), &args, &script_path)?;
        Ok((job, dir))
    }
}

/// Watches one array until every task has an outcome.
struct Monitor {
    shared: Arc<Shared>,
    array: Arc<Array>,
    dir: PathBuf,
    requests: Vec<Request>,
}

/// How long `squeue` may fail in a row before the array's tasks are given up.
const SQUEUE_PATIENCE: Duration = Duration::from_secs(120);

impl Monitor {
    fn watch(self) {
        let mut states: Vec<Option<TaskState>> = vec![None; self.requests.len()];
        let mut open: Vec<usize> = (0..self.requests.len()).collect();
        let mut last_answer = Instant::now();
        while !open.is_empty() {
            std::thread::sleep(self.shared.options.poll);
            let tasks = match slurm_cmd::squeue(self.shared.options.bin_dir.as_deref(), &self.array.job) {
                Ok(tasks) => {
                    last_answer = Instant::now();
                    tasks
                }
                Err(error) if last_answer.elapsed() > SQUEUE_PATIENCE => {
                    for task in open.drain(..) {
                        let message = format!("Slurm stopped answering about task {}_{task}: {error}", self.array.job);
                        self.hand_over(task, failure(self.requests[task].key, message));
                    }
                    return;
                }
                Err(_) => continue,
            };
            open.retain(|&task| {
                let now = tasks.get(&task);
                if let Some(now) = now {
                    // One line per state change (a new reason alone is not one).
                    if states[task].as_ref().map(|s| &s.state) != Some(&now.state) {
                        let why = if now.reason.is_empty() { String::new() } else { format!(" ({})", now.reason) };
                        (self.shared.events)(&format!(
                            "slurm: {}_{task} {} {}{why}",
                            self.array.job, self.requests[task].name, now.state
                        ));
                        states[task] = Some(now.clone());
                    }
                }
                // A task slurmctld no longer lists has ended (it was purged).
                let ended = now.is_none_or(TaskState::is_final);
                if ended {
                    let outcome = self.outcome(task, now);
                    self.hand_over(task, outcome);
                }
                !ended
            });
        }
        // Logs of a fully successful array are noise; failed tasks keep theirs.
        if lock(&self.array.tasks).iter().all(|(finished, cancelled)| *finished && !*cancelled)
            && self.requests.iter().enumerate().all(|(task, _)| self.succeeded(task))
        {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }

    fn log_path(&self, task: usize) -> PathBuf {
        self.dir.join(format!("{task}.log"))
    }

    fn succeeded(&self, task: usize) -> bool {
        let text = std::fs::read_to_string(self.log_path(task)).unwrap_or_default();
        outcome_in(&text, &self.requests[task].key).is_some_and(|outcome| outcome.result.is_ok())
    }

    fn hand_over(&self, task: usize, outcome: ActionOutcome) {
        if self.array.finish(task) {
            self.requests[task].reply.send(outcome).ok();
        }
    }

    /// The outcome of an ended task: the line `exec-action` printed in its log; for a
    /// completed task whose log cannot be read (a slow shared file system), the action
    /// cache's entry; else a failure naming the task, its state and its log.
    fn outcome(&self, task: usize, state: Option<&TaskState>) -> ActionOutcome {
        let request = &self.requests[task];
        let log = self.log_path(task);
        let job = &self.array.job;
        let text = read_log(&log, state.is_some_and(|s| s.state == "COMPLETED"));
        if let Some(outcome) = outcome_in(&text, &request.key) {
            return with_log(outcome, &format!("{job}_{task}"), &log);
        }
        let completed = state.is_none_or(|s| s.state == "COMPLETED");
        if completed {
            if let Some(manifest) = self.shared.cache.actions().get(&request.key) {
                let output = StageOutput::new(manifest.artifacts, manifest.metrics);
                return ActionOutcome { key: request.key, secs: manifest.secs, result: Ok(output) };
            }
        }
        if self.array.cancelled(task) {
            return ActionOutcome { key: request.key, secs: 0.0, result: Err(StageFailure::Cancelled) };
        }
        let state = match state {
            Some(state) if state.reason.is_empty() => state.state.clone(),
            Some(state) => format!("{} ({})", state.state, state.reason),
            None => "ended".to_string(),
        };
        let tail = slurm_cmd::tail(&text, 20);
        let tail = if tail.is_empty() { " (empty)".to_string() } else { format!(", last lines:\n{tail}") };
        failure(request.key, format!("Slurm task {job}_{task} {state} without an outcome; log {}{tail}", log.display()))
    }
}

/// A task's log. A completed task's log may show up late on a shared file system:
/// it is read again for up to a second while it holds no outcome line.
fn read_log(path: &Path, completed: bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if !completed || text.contains("\"key\"") || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A failed outcome names the task and its log.
fn with_log(mut outcome: ActionOutcome, task: &str, log: &Path) -> ActionOutcome {
    let note = format!(" (Slurm task {task}, log {})", log.display());
    match &mut outcome.result {
        Err(StageFailure::Error(message)) | Err(StageFailure::BadInput(message)) => message.push_str(&note),
        _ => {}
    }
    outcome
}
