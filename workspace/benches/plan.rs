//! How long the engine takes to plan 1,000 instances of a stage that are all cached
//! (what a no-op `pipe build` of a 1,000-trial tune costs), with fake stages.
//! `cargo bench -p workspace --bench plan`; prints milliseconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use cache::{ArtifactHash, Cache};
use workspace::*;

struct Fake(StageSpec);

impl Stage for Fake {
    fn spec(&self) -> &StageSpec {
        &self.0
    }

    fn execute(&self, ctx: &ExecContext<'_>) -> Result<ExecOutput, ExecError> {
        let text = ctx.knobs.values().map(ToString::to_string).collect::<Vec<_>>().join(",");
        Ok(ExecOutput {
            artifacts: vec![("out.txt".into(), text.into_bytes())],
            metrics: BTreeMap::from([("x".to_string(), 1.0)]),
        })
    }

    fn verdicts(&self, _: &StageOutput, _: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        Ok(Vec::new())
    }
}

const LR: KnobId = KnobId("train.lr");

fn database(dir: &std::path::Path) -> Database {
    let spec = |id, knobs: Vec<KnobId>, upstream: Vec<StageId>| StageSpec {
        id: StageId(id),
        version: 1,
        doc: "",
        knobs,
        checks: vec![],
        upstream,
        fingerprints: vec![],
        device_dependent: false,
    };
    let schema =
        vec![KnobSpec::new("train.lr", KnobKind::Float { min: 0.0, max: 1.0 }, KnobValue::Float(Float(0.5)), "")];
    let recipe = Recipe {
        stages: vec![
            Arc::new(Fake(spec("data", vec![], vec![]))) as Arc<dyn Stage>,
            Arc::new(Fake(spec("train", vec![LR], vec![StageId("data")]))),
        ],
        targets: vec![],
        schema,
    };
    let config = Config::defaults(&recipe.schema);
    let fingerprints = BTreeMap::from([("dataset".to_string(), ArtifactHash::of(b"d"))]);
    Database::new(recipe, Cache::open(dir).expect("cache"), &config, fingerprints, "cpu")
}

fn main() {
    let dir = std::env::temp_dir().join(format!("pipe-bench-plan-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let n: usize = std::env::var("PIPE_BENCH_N").ok().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let mut db = database(&dir);
    let names: Vec<String> =
        (0..n).map(|i| format!("train[train.lr={}]", (i as f64 + 1.0) / (n as f64 + 2.0))).collect();
    let instances = resolve_targets(&db, &names).expect("instances");
    let started = Instant::now();
    let runner = Arc::new(db.local_runner());
    let cold = build(&mut db, &instances, &BuildOptions { jobs: 2, ..BuildOptions::default() }, runner, |_| {});
    println!("cold build of {} instances: {:.1} ms", cold.reports.len(), started.elapsed().as_secs_f64() * 1e3);
    let mut samples = Vec::new();
    for _ in 0..7 {
        // A new process: a fresh database over the same cache.
        let started = Instant::now();
        let mut db = database(&dir);
        let instances = resolve_targets(&db, &names).expect("instances");
        let runner = Arc::new(db.local_runner());
        let result = build(&mut db, &instances, &BuildOptions { jobs: 2, ..BuildOptions::default() }, runner, |_| {});
        let secs = started.elapsed().as_secs_f64();
        assert!(result.reports.iter().all(|r| r.status == Some(StageStatus::Cached)));
        samples.push(secs * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "plan of {} cached instances (resolve + keys + cache lookups + reports): median {:.1} ms, min {:.1} ms",
        instances.len(),
        samples[samples.len() / 2],
        samples[0]
    );
    std::fs::remove_dir_all(&dir).ok();
}
