//! Engine tests with fake stages and no candle: which stage queries salsa executes
//! after each kind of edit, what the action cache serves, what status explains.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cache::{ArtifactHash, Cache};

use crate::recipe::*;
use crate::*;

const STAGES: [&str; 3] = ["a", "b", "c"];

struct Fake {
    calls: Arc<AtomicUsize>,
}

impl Executor for Fake {
    fn execute(&self, ctx: &ExecContext<'_>) -> Result<ExecOutput, ExecError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let bytes = match ctx.spec.id {
            // `a` only keeps x / 10, so 11 -> 12 writes identical bytes.
            "a" => format!("a={}", ctx.knob("a.x")?.as_i64().unwrap_or_default() / 10).into_bytes(),
            "b" => {
                let mut bytes = ctx.artifact("a", "a.txt")?;
                bytes.extend(format!(" b={}", ctx.knob("b.lr")?).bytes());
                bytes
            }
            "c" => {
                let mut bytes = ctx.artifact("b", "b.txt")?;
                bytes.extend(b" c");
                bytes
            }
            other => return Err(ExecError::Failed(format!("no stage {other}"))),
        };
        let metric = bytes.len() as f64;
        Ok(ExecOutput {
            artifacts: vec![(format!("{}.txt", ctx.spec.id), bytes)],
            metrics: BTreeMap::from([("len".to_string(), metric)]),
        })
    }

    fn verdicts(&self, stage: &str, output: &StageOutput, checks: &BTreeMap<&'static str, KnobValue>) -> Vec<Verdict> {
        let Some(threshold) = checks.get("checks.c.max_len").and_then(KnobValue::as_f64) else { return Vec::new() };
        let value = output.metrics["len"];
        vec![Verdict {
            check: format!("{stage}_len"),
            status: if value <= threshold { VerdictStatus::Pass } else { VerdictStatus::Fail },
            value,
            expected: threshold,
            message: format!("length {value}"),
            hint: None,
        }]
    }
}

fn schema() -> Vec<KnobSpec> {
    vec![
        KnobSpec::new("a.x", KnobKind::Int { min: 0, max: 100 }, KnobValue::Int(11), "x"),
        KnobSpec::new("b.lr", KnobKind::Float { min: 0.0, max: 1.0 }, KnobValue::Float(Float(0.1)), "lr"),
        KnobSpec::new("u.unused", KnobKind::Int { min: 0, max: 100 }, KnobValue::Int(0), "read by nobody"),
        KnobSpec::new("checks.c.max_len", KnobKind::Float { min: 0.0, max: 1e9 }, KnobValue::Float(Float(100.0)), "t"),
    ]
}

fn recipe(calls: &Arc<AtomicUsize>) -> Recipe {
    let spec = |id, knobs: Vec<&'static str>, upstream: Vec<&'static str>, checks: Vec<&'static str>| StageSpec {
        id,
        version: 1,
        doc: "fake",
        knobs,
        checks,
        upstream,
        fingerprints: if id == "a" { vec!["dataset"] } else { vec![] },
        device_dependent: id != "a",
    };
    Recipe {
        schema: schema(),
        stages: vec![
            spec("a", vec!["a.x"], vec![], vec![]),
            spec("b", vec!["b.lr"], vec!["a"], vec![]),
            spec("c", vec![], vec!["b"], vec!["checks.c.max_len"]),
        ],
        targets: vec![Target { name: "all", doc: "everything", stages: vec!["c"] }],
        executor: Box::new(Fake { calls: calls.clone() }),
    }
}

struct Fixture {
    db: Database,
    calls: Arc<AtomicUsize>,
    dir: std::path::PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("pipe-workspace-test-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        Fixture::reopen(dir, &Config::defaults(&schema()))
    }

    /// A fresh database (a new process) over the same cache directory.
    fn reopen(dir: std::path::PathBuf, config: &Config) -> Fixture {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = Cache::open(&dir).unwrap();
        let fingerprints = BTreeMap::from([("dataset".to_string(), ArtifactHash::of(b"data v1"))]);
        let db = Database::new(recipe(&calls), cache, config, fingerprints, "cpu");
        Fixture { db, calls, dir }
    }

    /// Builds everything; returns the stages whose `stage_output` query executed.
    fn build(&self) -> (Vec<String>, Vec<StageReport>) {
        let reports = build(&self.db, &STAGES, &BuildOptions { keep_going: true }, |_| {});
        (self.db.take_executed("stage_output"), reports)
    }

    fn config_with(&self, assignments: &[&str]) -> Config {
        let mut config = Config::defaults(&schema());
        for assignment in assignments {
            config.set(&schema(), assignment).unwrap();
        }
        config
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

#[test]
fn salsa_reexecutes_exactly_the_dependent_stages() {
    let mut fx = Fixture::new("salsa");
    let (executed, reports) = fx.build();
    assert_eq!(executed, ["a", "b", "c"]);
    assert!(reports.iter().all(|r| r.status == Some(StageStatus::Ran)));
    assert_eq!(fx.calls.load(Ordering::SeqCst), 3);

    // No edit: nothing executes.
    let (executed, _) = fx.build();
    assert!(executed.is_empty(), "{executed:?}");

    // A knob only `b` reads: `b` and its dependent `c` execute, `a` does not.
    let config = fx.config_with(&["b.lr=0.2"]);
    fx.db.apply_config(&config);
    let (executed, reports) = fx.build();
    assert_eq!(executed, ["b", "c"]);
    assert_eq!(reports[0].status, Some(StageStatus::Cached));

    // A knob no stage reads: nothing.
    let config = fx.config_with(&["b.lr=0.2", "u.unused=7"]);
    fx.db.apply_config(&config);
    assert!(fx.build().0.is_empty());

    // A comment in the file: nothing.
    let text = "# tuned by hand\n[b]\nlr = 0.2 # was 0.1\n[u]\nunused = 7\n";
    fx.db.apply_config(&Config::parse(&schema(), text, "pipe.toml").unwrap());
    assert!(fx.build().0.is_empty());

    // `a` re-runs but writes identical bytes (11 -> 12 both give x/10 = 1): nothing downstream.
    let config = fx.config_with(&["b.lr=0.2", "u.unused=7", "a.x=12"]);
    fx.db.apply_config(&config);
    let (executed, _) = fx.build();
    assert_eq!(executed, ["a"]);

    // A threshold: the verdict is re-evaluated, no stage executes.
    let calls_before = fx.calls.load(Ordering::SeqCst);
    let config = fx.config_with(&["b.lr=0.2", "u.unused=7", "a.x=12", "checks.c.max_len=1"]);
    fx.db.apply_config(&config);
    let (executed, reports) = fx.build();
    assert!(executed.is_empty(), "{executed:?}");
    assert_eq!(fx.calls.load(Ordering::SeqCst), calls_before);
    assert_eq!(reports[2].verdicts[0].status, VerdictStatus::Fail);
    assert_eq!(fx.db.take_executed("stage_verdicts"), Vec::<String>::new(), "already drained by build");
}

#[test]
fn action_cache_serves_a_new_process_and_status_explains_staleness() {
    let fx = Fixture::new("action");
    fx.build();
    let dir = fx.dir.clone();
    let keys: Vec<_> = fx.build().1.iter().map(|r| r.key).collect();
    std::mem::forget(fx); // keep the directory for the next "process"

    let fx = Fixture::reopen(dir.clone(), &Config::defaults(&schema()));
    let status_now = status(&fx.db, &STAGES);
    assert!(status_now.iter().all(|s| s.stale.is_none()), "{status_now:?}");
    let (_, reports) = fx.build();
    assert!(reports.iter().all(|r| r.status == Some(StageStatus::Cached)));
    assert_eq!(reports.iter().map(|r| r.key).collect::<Vec<_>>(), keys);
    assert_eq!(fx.calls.load(Ordering::SeqCst), 0, "a cache hit never calls the executor");
    std::mem::forget(fx);

    let config = {
        let mut config = Config::defaults(&schema());
        config.set(&schema(), "b.lr=0.5").unwrap();
        config
    };
    let fx = Fixture::reopen(dir, &config);
    let report = status(&fx.db, &STAGES);
    assert_eq!(report[0].stale, None);
    assert_eq!(report[1].stale, Some(StaleReason::Changed(vec!["knob `b.lr` 0.1 -> 0.5".into()])));
    assert_eq!(report[2].stale, Some(StaleReason::UpstreamStale("b".into())));
}

#[test]
fn corrupt_object_reruns_its_stage() {
    let fx = Fixture::new("corrupt");
    let (_, reports) = fx.build();
    let hash = reports[1].output.as_ref().unwrap().artifacts["b.txt"].hash;
    let path = fx.db.engine().cache.store().path(&hash);
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&path, permissions).unwrap();
    std::fs::write(&path, b"garbage").unwrap();
    let dir = fx.dir.clone();
    std::mem::forget(fx);

    let fx = Fixture::reopen(dir, &Config::defaults(&schema()));
    let (_, reports) = fx.build();
    let statuses: Vec<_> = reports.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(StageStatus::Cached), Some(StageStatus::Ran), Some(StageStatus::Cached)]);
    assert_eq!(fx.db.engine().cache.store().get(&hash).unwrap(), b"a=1 b=0.1");
}

#[test]
fn targets_resolve_with_upstream_and_suggest() {
    let fx = Fixture::new("targets");
    assert_eq!(resolve_targets(&fx.db, &["all".into()]).unwrap(), ["a", "b", "c"]);
    assert_eq!(resolve_targets(&fx.db, &["b".into()]).unwrap(), ["a", "b"]);
    let err = resolve_targets(&fx.db, &["alll".into()]).unwrap_err();
    assert!(err.contains("did you mean `all`"), "{err}");
}
