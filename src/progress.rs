//! Progress of running actions on stderr. On a terminal each running action gets its
//! own bar (steps, rate, ETA, the stage's last message, e.g. its validation metric);
//! elsewhere (CI, a log file) each action prints one plain line about every 10 s.

use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use workspace::{Progress, ProgressSink};

/// Hands out one progress handle per running action.
pub struct Bars {
    enabled: bool,
    terminal: bool,
    multi: MultiProgress,
}

impl Bars {
    /// `enabled: false` shows nothing (e.g. `--json`, whose stdout is a protocol;
    /// progress goes to stderr either way).
    pub fn new(enabled: bool) -> Bars {
        let terminal = std::io::stderr().is_terminal();
        Bars { enabled, terminal, multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()) }
    }
}

impl ProgressSink for Bars {
    fn action(&self, name: &str) -> Box<dyn Progress> {
        if !self.enabled {
            return Box::new(workspace::NoProgress);
        }
        if self.terminal {
            Box::new(Bar { name: name.to_string(), multi: self.multi.clone(), bar: Mutex::new(None) })
        } else {
            Box::new(LogLines { name: name.to_string(), state: Mutex::new(LogState::default()) })
        }
    }
}

/// What a progress line or bar is called: the stage's own label, or the action's
/// instance name when the action is an instance of that stage (a tuning trial,
/// `overfit[train.lr=0.001,...]`), so that parallel trials can be told apart.
fn label(action: &str, stage: &str) -> String {
    if action.len() > stage.len() && action.starts_with(stage) && action[stage.len()..].starts_with('[') {
        action.to_string()
    } else {
        stage.to_string()
    }
}

struct Bar {
    name: String,
    multi: MultiProgress,
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bar {
    fn begin(&self, stage: &str, total: u64) {
        let bar = self.multi.add(ProgressBar::new(total));
        let style = ProgressStyle::with_template("{prefix:>24} [{bar:28}] {pos}/{len} steps {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label(&self.name, stage));
        if let Some(old) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).replace(bar) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, done: u64, message: &str) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            bar.set_position(done);
            bar.set_message(message.to_string());
        }
    }

    fn end(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.end();
    }
}

#[derive(Default)]
struct LogState {
    stage: String,
    total: u64,
    started: Option<Instant>,
    last_line: Option<Instant>,
}

/// Plain lines for logs: `progress: overfit 1200/3000 steps (40%), 850 steps/s, eta 2s, train loss 0.31`.
struct LogLines {
    name: String,
    state: Mutex<LogState>,
}

/// How often a plain progress line is printed: 10 s, or `PIPE_PROGRESS_EVERY_SECS`.
fn log_every() -> Duration {
    let secs = std::env::var("PIPE_PROGRESS_EVERY_SECS").ok().and_then(|s| s.parse::<f64>().ok());
    Duration::from_secs_f64(secs.filter(|s| s.is_finite() && *s >= 0.0).unwrap_or(10.0))
}

impl Progress for LogLines {
    fn begin(&self, stage: &str, total: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        *state = LogState { stage: label(&self.name, stage), total, started: Some(now), last_line: Some(now) };
    }

    fn advance(&self, done: u64, message: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(started), Some(last)) = (state.started, state.last_line) else { return };
        if last.elapsed() < log_every() {
            return;
        }
        state.last_line = Some(Instant::now());
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / secs;
        let mut line = format!("progress: {} {done}", if state.stage.is_empty() { &self.name } else { &state.stage });
        if state.total > 0 {
            let eta = (state.total.saturating_sub(done)) as f64 / rate.max(1e-9);
            line.push_str(&format!(
                "/{} steps ({:.0}%), {rate:.0} steps/s, eta {eta:.0}s",
                state.total,
                100.0 * done as f64 / state.total as f64
            ));
        }
        if !message.is_empty() {
            line.push_str(&format!(", {message}"));
        }
        eprintln!("{line}");
    }
}
