//! Engine tests with fake stages and no candle: which instances salsa re-plans and
//! the runner executes after each kind of edit, what the action cache serves, what
//! status explains, instances sharing upstream work, parallel runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cache::{ArtifactHash, Cache};

use crate::recipe::*;
use crate::*;

mod fanin;

const A_X: KnobId = KnobId("a.x");
const B_LR: KnobId = KnobId("b.lr");
const UNUSED: KnobId = KnobId("u.unused");
const MAX_LEN: KnobId = KnobId("checks.c.max_len");
const SLEEP: KnobId = KnobId("d.sleep_ms");

type Body = fn(&ExecContext<'_>) -> Result<Vec<u8>, ExecError>;

/// A fake stage: writes `<id>.txt` from `body`, with its length as the metric `len`;
/// logs each execution by instance-visible knob values.
struct Fake {
    spec: StageSpec,
    body: Body,
    log: Arc<Mutex<Vec<String>>>,
    running: Arc<AtomicUsize>,
    max_running: Arc<AtomicUsize>,
}

impl Stage for Fake {
    fn spec(&self) -> &StageSpec {
        &self.spec
    }

    fn execute(&self, ctx: &ExecContext<'_>) -> Result<ExecOutput, ExecError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let knobs: Vec<String> = ctx.knobs.iter().map(|(id, value)| format!("{id}={value}")).collect();
        self.log.lock().unwrap().push(format!("{}({})", self.spec.id, knobs.join(",")));
        let result = (self.body)(ctx);
        self.running.fetch_sub(1, Ordering::SeqCst);
        let bytes = result?;
        let len = bytes.len() as f64;
        Ok(ExecOutput {
            artifacts: vec![(format!("{}.txt", self.spec.id), bytes)],
            metrics: BTreeMap::from([("len".to_string(), len)]),
        })
    }

    fn verdicts(&self, output: &StageOutput, checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        if self.spec.checks.is_empty() {
            return Ok(Vec::new());
        }
        let threshold = checks.f64(MAX_LEN)?;
        let value = *output.metrics.get("len").ok_or_else(|| VerdictError("no metric `len`".into()))?;
        Ok(vec![Verdict {
            check: format!("{}_len", self.spec.id),
            status: if value <= threshold { VerdictStatus::Pass } else { VerdictStatus::Fail },
            value,
            expected: threshold,
            message: format!("length {value}"),
            hint: None,
        }])
    }
}

fn schema() -> Vec<KnobSpec> {
    let mut schema = vec![
        KnobSpec::new("a.x", KnobKind::Int { min: 0, max: 100 }, KnobValue::Int(11), "x"),
        KnobSpec::new("b.lr", KnobKind::Float { min: 0.0, max: 1.0 }, KnobValue::Float(Float(0.1)), "lr"),
        KnobSpec::new("u.unused", KnobKind::Int { min: 0, max: 100 }, KnobValue::Int(0), "read by nobody"),
        KnobSpec::new("checks.c.max_len", KnobKind::Float { min: 0.0, max: 1e9 }, KnobValue::Float(Float(100.0)), "t"),
        KnobSpec::new("d.sleep_ms", KnobKind::Int { min: 0, max: 10_000 }, KnobValue::Int(0), "sleep"),
    ];
    schema.extend(fanin::schema());
    schema
}

fn body_a(ctx: &ExecContext<'_>) -> Result<Vec<u8>, ExecError> {
    // `a` only keeps x / 10, so 11 -> 12 writes identical bytes.
    Ok(format!("a={}", ctx.knob(A_X)?.as_i64().unwrap_or_default() / 10).into_bytes())
}

fn body_b(ctx: &ExecContext<'_>) -> Result<Vec<u8>, ExecError> {
    let lr = ctx.knob(B_LR)?.as_f64().unwrap_or_default();
    if lr > 0.9 {
        return Err(ExecError::Failed("b.lr is too high".into()));
    }
    Ok([ctx.artifact(StageId("a"), "a.txt")?, format!(" b={lr}").into_bytes()].concat())
}

fn body_c(ctx: &ExecContext<'_>) -> Result<Vec<u8>, ExecError> {
    Ok([ctx.artifact(StageId("b"), "b.txt")?, b" c".to_vec()].concat())
}

/// Sleeps `d.sleep_ms` in steps, checking for cancellation.
fn body_d(ctx: &ExecContext<'_>) -> Result<Vec<u8>, ExecError> {
    let ms = ctx.knob(SLEEP)?.as_i64().unwrap_or_default();
    for _ in 0..ms / 10 {
        ctx.check_cancelled()?;
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok([ctx.artifact(StageId("a"), "a.txt")?, format!(" d={ms}").into_bytes()].concat())
}

struct Log {
    log: Arc<Mutex<Vec<String>>>,
    max_running: Arc<AtomicUsize>,
}

impl Log {
    fn take(&self) -> Vec<String> {
        let mut names = std::mem::take(&mut *self.log.lock().unwrap());
        names.sort();
        names
    }
}

fn recipe() -> (Recipe, Log) {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let running: Arc<AtomicUsize> = Arc::default();
    let max_running: Arc<AtomicUsize> = Arc::default();
    let stage = |id, knobs: Vec<KnobId>, upstream: Vec<&'static str>, checks: Vec<KnobId>, body: Body| {
        Arc::new(Fake {
            spec: StageSpec {
                id: StageId(id),
                version: 1,
                doc: "fake",
                knobs,
                checks,
                upstream: upstream.into_iter().map(StageId).collect(),
                fingerprints: if id == "a" { vec!["dataset"] } else { vec![] },
                device_dependent: id != "a",
            },
            body,
            log: log.clone(),
            running: running.clone(),
            max_running: max_running.clone(),
        }) as Arc<dyn Stage>
    };
    let recipe = Recipe {
        schema: schema(),
        stages: vec![
            stage("a", vec![A_X], vec![], vec![], body_a),
            stage("b", vec![B_LR], vec!["a"], vec![], body_b),
            stage("c", vec![], vec!["b"], vec![MAX_LEN], body_c),
            stage("d", vec![SLEEP], vec!["a"], vec![], body_d),
            Arc::new(fanin::FanIn {
                spec: StageSpec {
                    id: StageId("e"),
                    version: 1,
                    doc: "fan-in",
                    knobs: vec![fanin::E_LRS, fanin::E_PROMOTE],
                    checks: vec![],
                    upstream: vec![],
                    fingerprints: vec![],
                    device_dependent: false,
                },
                log: log.clone(),
            }),
        ],
        targets: vec![Target::new("all", "everything", vec![StageId("c")])],
    };
    (recipe, Log { log, max_running })
}

struct Fixture {
    db: Database,
    log: Log,
    dir: std::path::PathBuf,
    keep: bool,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("pipe-workspace-test-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        Fixture::reopen(dir, &Config::defaults(&schema()))
    }

    /// A fresh database (a new process) over the same cache directory.
    fn reopen(dir: std::path::PathBuf, config: &Config) -> Fixture {
        let (recipe, log) = recipe();
        let cache = Cache::open(&dir).unwrap();
        let fingerprints = BTreeMap::from([("dataset".to_string(), ArtifactHash::of(b"data v1"))]);
        let db = Database::new(recipe, cache, config, fingerprints, "cpu");
        Fixture { db, log, dir, keep: false }
    }

    fn instances(&self, names: &[&str]) -> Vec<InstanceSpec> {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        resolve_targets(&self.db, &names).unwrap()
    }

    /// Builds `names`; returns (executed stages with their knobs, reports).
    fn build_with(&mut self, names: &[&str], options: BuildOptions) -> (Vec<String>, Vec<StageReport>) {
        let instances = self.instances(names);
        let runner = Arc::new(self.db.local_runner());
        let result = build(&mut self.db, &instances, &options, runner, |_| {});
        (self.log.take(), result.reports)
    }

    fn build(&mut self) -> (Vec<String>, Vec<StageReport>) {
        self.build_with(&["all"], BuildOptions { keep_going: true, jobs: 1, ..BuildOptions::default() })
    }

    fn config_with(&self, assignments: &[&str]) -> Config {
        let mut config = Config::defaults(&schema());
        for assignment in assignments {
            config.set(&schema(), assignment).unwrap();
        }
        config
    }

    /// Keeps the cache directory for the next "process".
    fn keep(mut self) -> std::path::PathBuf {
        self.keep = true;
        self.dir.clone()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !self.keep {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}

fn statuses(reports: &[StageReport]) -> Vec<(String, Option<StageStatus>)> {
    reports.iter().map(|r| (r.name.0.clone(), r.status)).collect()
}

#[test]
fn only_dependent_instances_are_replanned_and_executed() {
    let mut fx = Fixture::new("salsa");
    let (executed, reports) = fx.build();
    assert_eq!(executed, ["a(a.x=11)", "b(b.lr=0.1)", "c()"]);
    assert!(reports.iter().all(|r| r.status == Some(StageStatus::Ran)));
    fx.db.take_executed("instance_key_inputs");

    // No edit: nothing executes and salsa recomputes no key.
    let (executed, _) = fx.build();
    assert!(executed.is_empty(), "{executed:?}");
    assert!(fx.db.take_executed("instance_key_inputs").is_empty());

    // A knob only `b` reads: the keys of `b` and its dependent `c` are recomputed; `a`'s is not.
    fx.db.apply_config(&fx.config_with(&["b.lr=0.2"]));
    let (executed, reports) = fx.build();
    assert_eq!(executed, ["b(b.lr=0.2)", "c()"]);
    assert_eq!(reports[0].status, Some(StageStatus::Cached));
    let mut replanned = fx.db.take_executed("instance_key_inputs");
    replanned.sort();
    replanned.dedup();
    assert_eq!(replanned, ["b", "c"]);

    // A knob no stage reads, or a comment in the file: nothing.
    fx.db.apply_config(&fx.config_with(&["b.lr=0.2", "u.unused=7"]));
    assert!(fx.build().0.is_empty());
    let text = "# tuned by hand\n[b]\nlr = 0.2 # was 0.1\n[u]\nunused = 7\n";
    fx.db.apply_config(&Config::parse(&schema(), text, "pipe.toml").unwrap());
    assert!(fx.build().0.is_empty());
    assert!(fx.db.take_executed("instance_key_inputs").is_empty());

    // `a` re-runs but writes identical bytes (11 -> 12 both give x/10 = 1): nothing downstream.
    fx.db.apply_config(&fx.config_with(&["b.lr=0.2", "u.unused=7", "a.x=12"]));
    let (executed, _) = fx.build();
    assert_eq!(executed, ["a(a.x=12)"]);

    // A threshold: the verdict is re-evaluated, nothing executes.
    fx.db.apply_config(&fx.config_with(&["b.lr=0.2", "u.unused=7", "a.x=12", "checks.c.max_len=1"]));
    let (executed, reports) = fx.build();
    assert!(executed.is_empty(), "{executed:?}");
    assert_eq!(reports[2].verdicts[0].status, VerdictStatus::Fail);
}

#[test]
fn action_cache_serves_a_new_process_and_status_explains_staleness() {
    let mut fx = Fixture::new("action");
    fx.build();
    let keys: Vec<_> = fx.build().1.iter().map(|r| r.key).collect();
    let dir = fx.keep();

    let mut fx = Fixture::reopen(dir.clone(), &Config::defaults(&schema()));
    let all = fx.instances(&["all"]);
    let status_now = status(&mut fx.db, &all);
    assert!(status_now.iter().all(|s| s.stale.is_none()), "{status_now:?}");
    let (executed, reports) = fx.build();
    assert!(reports.iter().all(|r| r.status == Some(StageStatus::Cached)));
    assert_eq!(reports.iter().map(|r| r.key).collect::<Vec<_>>(), keys);
    assert!(executed.is_empty(), "a cache hit never executes");
    fx.keep();

    let mut config = Config::defaults(&schema());
    config.set(&schema(), "b.lr=0.5").unwrap();
    let mut fx = Fixture::reopen(dir, &config);
    let report = status(&mut fx.db, &all);
    assert_eq!(report[0].stale, None);
    assert_eq!(report[1].stale, Some(StaleReason::Changed(vec!["knob `b.lr` 0.1 -> 0.5".into()])));
    assert_eq!(report[2].stale, Some(StaleReason::UpstreamStale("b".into())));
    assert!(fx.log.take().is_empty(), "status executes nothing");
}

#[test]
fn corrupt_object_reruns_its_stage() {
    let mut fx = Fixture::new("corrupt");
    let (_, reports) = fx.build();
    let hash = reports[1].output.as_ref().unwrap().artifacts["b.txt"].hash;
    let path = fx.db.engine().cache.store().path(&hash);
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&path, permissions).unwrap();
    std::fs::write(&path, b"garbage").unwrap();
    let dir = fx.keep();

    let mut fx = Fixture::reopen(dir, &Config::defaults(&schema()));
    let (executed, reports) = fx.build();
    assert_eq!(executed, ["b(b.lr=0.1)"]);
    let statuses: Vec<_> = reports.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(StageStatus::Cached), Some(StageStatus::Ran), Some(StageStatus::Cached)]);
    assert_eq!(fx.db.engine().cache.store().get(&hash).unwrap(), b"a=1 b=0.1");
}

#[test]
fn targets_and_instances_resolve_with_upstream_and_suggest() {
    let fx = Fixture::new("targets");
    let names = |names: &[&str]| fx.instances(names).iter().map(|i| i.name().0).collect::<Vec<_>>();
    assert_eq!(names(&["all"]), ["a", "b", "c"]);
    assert_eq!(names(&["b"]), ["a", "b"]);
    // An override only `b` reads leaves `a` plain; one nobody upstream reads is dropped.
    assert_eq!(names(&["c[b.lr=0.5]"]), ["a", "b[b.lr=0.5]", "c[b.lr=0.5]"]);
    assert_eq!(names(&["c[b.lr=0.5,a.x=3]"]), ["a[a.x=3]", "b[a.x=3,b.lr=0.5]", "c[a.x=3,b.lr=0.5]"]);
    assert_eq!(names(&["a[b.lr=0.5]"]), ["a"]);
    let err = resolve_targets(&fx.db, &["alll".into()]).unwrap_err();
    assert!(err.contains("did you mean `all`"), "{err}");
    let err = resolve_targets(&fx.db, &["b[b.lr=7]".into()]).unwrap_err();
    assert!(err.contains("b.lr"), "{err}");
    let err = resolve_targets(&fx.db, &["b[b.lr=0.5".into()]).unwrap_err();
    assert!(err.contains("closing `]`"), "{err}");
}

#[test]
fn instances_share_upstream_work_and_equal_knobs_are_one_action() {
    let mut fx = Fixture::new("instances");
    fx.build();
    let options = BuildOptions { jobs: 2, ..BuildOptions::default() };
    // Two trials of `c` under different `b.lr`: `a` is shared and never re-executes.
    let (executed, reports) = fx.build_with(&["c[b.lr=0.3]", "c[b.lr=0.4]"], options.clone());
    assert_eq!(executed, ["b(b.lr=0.3)", "b(b.lr=0.4)", "c()", "c()"]);
    let names: Vec<_> = reports.iter().map(|r| r.name.0.as_str()).collect();
    assert_eq!(names, ["a", "b[b.lr=0.3]", "b[b.lr=0.4]", "c[b.lr=0.3]", "c[b.lr=0.4]"]);
    assert_eq!(reports[0].status, Some(StageStatus::Cached));
    // The override equal to the config's value is the plain instance's action: cached.
    let (executed, reports) = fx.build_with(&["c[b.lr=0.1]"], options.clone());
    assert!(executed.is_empty(), "{executed:?}");
    assert!(reports.iter().all(|r| r.status == Some(StageStatus::Cached)));
    // Two names for one resolved config in one build: one execution.
    let (executed, reports) = fx.build_with(&["b[b.lr=0.6]", "c[b.lr=0.6]"], options);
    assert_eq!(executed, ["b(b.lr=0.6)", "c()"]);
    assert_eq!(reports.len(), 3);
    // Each instance has its own out/ directory with a readable name.
    let out = fx.db.engine().cache.out().path("c[b.lr=0.3]", "c.txt");
    assert_eq!(std::fs::read(out).unwrap(), b"a=1 b=0.3 c");
}

#[test]
fn parallel_runs_give_the_same_keys_and_bytes_as_serial_ones() {
    let build = |jobs: usize, name: &str| {
        let mut fx = Fixture::new(name);
        fx.db.apply_config(&fx.config_with(&["d.sleep_ms=200"]));
        let options = BuildOptions { jobs, ..BuildOptions::default() };
        let (executed, reports) = fx.build_with(&["all", "d", "d[a.x=40]"], options);
        let outputs: Vec<_> = reports.iter().map(|r| (r.name.0.clone(), r.key, r.output.clone())).collect();
        (executed, outputs, fx.log.max_running.load(Ordering::SeqCst))
    };
    let (serial_executed, serial, serial_max) = build(1, "serial");
    let (parallel_executed, parallel, parallel_max) = build(3, "parallel");
    assert_eq!(serial_executed, parallel_executed);
    assert_eq!(serial, parallel);
    assert_eq!(serial_max, 1);
    assert!(parallel_max >= 2, "independent actions ran one at a time with --jobs 3");
}

#[test]
fn a_failure_stops_new_work_and_cancels_running_actions_unless_keep_going() {
    let mut fx = Fixture::new("failure");
    fx.db.apply_config(&fx.config_with(&["b.lr=0.95", "d.sleep_ms=5000"]));
    let started = std::time::Instant::now();
    let (_, reports) = fx.build_with(&["all", "d"], BuildOptions { jobs: 2, ..BuildOptions::default() });
    assert!(started.elapsed().as_secs_f64() < 4.0, "the running `d` was not cancelled");
    let by_name: BTreeMap<_, _> = statuses(&reports).into_iter().collect();
    assert_eq!(by_name["a"], Some(StageStatus::Ran));
    assert_eq!(by_name["b"], Some(StageStatus::Failed));
    assert_eq!(by_name["c"], None, "skipped");
    assert_eq!(by_name["d"], None, "cancelled: nothing kept");
    let d = fx.instances(&["d"]);
    assert!(status(&mut fx.db, &d)[1].stale.is_some(), "a cancelled action leaves no entry");

    // --keep-going: `d` finishes, `c` fails because its upstream did.
    fx.db.apply_config(&fx.config_with(&["b.lr=0.95", "d.sleep_ms=20"]));
    let options = BuildOptions { jobs: 2, keep_going: true, ..BuildOptions::default() };
    let (_, reports) = fx.build_with(&["all", "d"], options);
    let by_name: BTreeMap<_, _> = statuses(&reports).into_iter().collect();
    assert_eq!(by_name["c"], Some(StageStatus::Failed));
    assert_eq!(by_name["d"], Some(StageStatus::Ran));
    let c = reports.iter().find(|r| r.name.0 == "c").unwrap();
    assert_eq!(c.error.as_deref(), Some("upstream stage `b` failed"));
}

#[test]
fn an_interrupt_abandons_running_actions_and_keeps_finished_ones() {
    let mut fx = Fixture::new("interrupt");
    fx.db.apply_config(&fx.config_with(&["d.sleep_ms=5000"]));
    let options = BuildOptions { jobs: 1, ..BuildOptions::default() };
    let interrupt = options.interrupt.clone();
    let timer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        interrupt.cancel();
    });
    let instances = fx.instances(&["d"]);
    let runner = Arc::new(fx.db.local_runner());
    let result = build(&mut fx.db, &instances, &options, runner, |_| {});
    timer.join().unwrap();
    assert!(result.interrupted);
    assert_eq!(result.reports[0].status, Some(StageStatus::Ran));
    assert_eq!(result.reports[1].status, None);
    // The next build runs only what is missing.
    fx.db.apply_config(&fx.config_with(&["d.sleep_ms=20"]));
    fx.log.take();
    let (executed, _) = fx.build_with(&["d"], BuildOptions { jobs: 1, ..BuildOptions::default() });
    assert_eq!(executed, ["d(d.sleep_ms=20)"]);
}

#[test]
fn the_fake_recipe_is_well_formed_and_problems_are_found() {
    let (recipe, _) = recipe();
    assert!(recipe.problems().is_empty(), "{:?}", recipe.problems());
    let (mut broken, _) = recipe_with_problems();
    broken.targets.push(Target::new("x", "", vec![StageId("nope")]));
    let problems = broken.problems().join("\n");
    assert!(problems.contains("`b` reads `c`, which comes later"), "{problems}");
    assert!(problems.contains("knob `z.z`, which is not in the schema"), "{problems}");
    assert!(problems.contains("target `x` names unknown stage `nope`"), "{problems}");
}

fn recipe_with_problems() -> (Recipe, Log) {
    let (mut recipe, log) = recipe();
    // `b` now reads a knob the schema lacks and a stage that comes after it.
    recipe.stages[1] = Arc::new(Fake {
        spec: StageSpec {
            id: StageId("b"),
            version: 1,
            doc: "",
            knobs: vec![KnobId("z.z")],
            checks: vec![],
            upstream: vec![StageId("c")],
            fingerprints: vec![],
            device_dependent: false,
        },
        body: body_c,
        log: log.log.clone(),
        running: Arc::default(),
        max_running: Arc::default(),
    });
    (recipe, log)
}

#[test]
fn verdicts_that_cannot_be_computed_fail_loudly() {
    let (recipe, _) = recipe();
    let c = recipe.stage("c").unwrap().clone();
    let output = StageOutput::default();
    let checks = BTreeMap::from([(MAX_LEN, KnobValue::Float(Float(1.0)))]);
    let verdicts = crate::db::judge(c.as_ref(), &output, &checks);
    assert_eq!(verdicts[0].status, VerdictStatus::Fail);
    assert!(verdicts[0].message.contains("no metric `len`"), "{:?}", verdicts[0]);
    let verdicts = crate::db::judge(c.as_ref(), &output, &BTreeMap::new());
    assert!(verdicts[0].message.contains("threshold `checks.c.max_len` it did not declare"));
    let _ = UNUSED;
}

/// Counts the progress handles the build hands out.
struct CountingSink(Arc<AtomicUsize>);

impl ProgressSink for CountingSink {
    fn action(&self, _name: &str) -> Box<dyn Progress> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::new(NoProgress)
    }
}

#[test]
fn the_progress_sink_set_on_a_fresh_database_reaches_every_action() {
    let mut fx = Fixture::new("progress");
    let handed_out = Arc::new(AtomicUsize::new(0));
    assert!(fx.db.set_progress(Arc::new(CountingSink(handed_out.clone()))), "the engine is not shared yet");
    let (executed, _) = fx.build();
    assert_eq!(handed_out.load(Ordering::SeqCst), executed.len());
    assert_eq!(executed.len(), 3);
}

#[test]
fn an_upstream_object_found_damaged_mid_build_is_healed_in_the_same_build() {
    let mut fx = Fixture::new("heal");
    let options = || BuildOptions { keep_going: false, jobs: 1, ..BuildOptions::default() };
    let (_, reports) = fx.build_with(&["d"], options());
    let hash = reports[0].output.as_ref().unwrap().artifacts["a.txt"].hash;
    // Bit rot: same size, same mtime, same inode, so the stat cache still trusts it.
    let path = fx.db.engine().cache.store().path(&hash);
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&path, permissions).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0x20;
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::io::Write::write_all(&mut &file, &bytes).unwrap();
    file.set_modified(modified).unwrap();
    drop(file);
    let dir = fx.keep();

    // A new process: `a` is served from the cache (its object looks unchanged); `d`
    // must run (a new knob value), reads the damaged object, and the build heals it.
    let mut fx = Fixture::reopen(dir, &fx_config(&["d.sleep_ms=10"]));
    let (executed, reports) = fx.build_with(&["d"], options());
    assert_eq!(executed, ["a(a.x=11)", "d(d.sleep_ms=10)"]);
    assert!(reports.iter().all(|r| r.status == Some(StageStatus::Ran)), "{:?}", statuses(&reports));
    assert_eq!(fx.db.engine().cache.store().get(&hash).unwrap(), b"a=1");
}

fn fx_config(assignments: &[&str]) -> Config {
    let mut config = Config::defaults(&schema());
    for assignment in assignments {
        config.set(&schema(), assignment).unwrap();
    }
    config
}
