//! The tune stage on real (tiny) trials, without the engine: the members it asks for
//! are trained here as the engine would, then `run` and the verdicts read them.

use std::collections::BTreeMap;
use std::path::Path;

use workspace::{
    Cancel, Checks, Config, ExecContext, InstanceSpec, KnobValue, MemberLookup, NoProgress, Stage, StageOutput,
    VerdictStatus,
};

use crate::ids::{knob, stage};

const SETTINGS: &[&str] = &[
    "model.kind=mlp",
    "model.hidden=[16]",
    "train.steps=30",
    "train.eval_every=15",
    "tune.trials=4",
    r#"tune.space=["train.lr = log(1e-3, 3e-2)", "model.hidden = int(4, 32)", "train.batch_size = choice(16, 64)"]"#,
];

struct Bench {
    root: std::path::PathBuf,
    cache: cache::Cache,
    stages: Vec<std::sync::Arc<dyn Stage>>,
    config: Config,
    data: StageOutput,
}

fn stage_of(stages: &[std::sync::Arc<dyn Stage>], id: workspace::StageId) -> &dyn Stage {
    stages.iter().find(|s| s.spec().id == id).unwrap().as_ref()
}

impl Bench {
    fn new(name: &str, extra: &[&str]) -> Bench {
        let root = std::env::temp_dir().join(format!("pipe-tune-test-{name}-{}", std::process::id()));
        let cache = cache::Cache::open(&root).unwrap();
        let schema = crate::knobs::schema();
        let mut config = Config::defaults(&schema);
        for setting in SETTINGS.iter().chain(extra) {
            config.set(&schema, setting).unwrap();
        }
        let stages = crate::stages::stages(Path::new("."));
        let mut bench = Bench { root, cache, stages, config, data: StageOutput::default() };
        bench.data = bench.execute(stage::DATA, &[], &[]);
        bench
    }

    fn knobs(
        &self,
        id: workspace::StageId,
        overrides: &[(workspace::KnobId, KnobValue)],
    ) -> BTreeMap<workspace::KnobId, KnobValue> {
        let spec = stage_of(&self.stages, id).spec();
        let mut knobs: BTreeMap<_, _> =
            spec.knobs.iter().map(|id| (*id, self.config.get(id.as_str()).unwrap().clone())).collect();
        for (knob, value) in overrides {
            if knobs.contains_key(knob) {
                knobs.insert(*knob, value.clone());
            }
        }
        knobs
    }

    /// Executes `id` under `overrides` and stores its artifacts, as the engine would.
    fn execute(
        &self,
        id: workspace::StageId,
        overrides: &[(workspace::KnobId, KnobValue)],
        members: &[(InstanceSpec, StageOutput)],
    ) -> StageOutput {
        let stage = stage_of(&self.stages, id);
        let knobs = self.knobs(id, overrides);
        let upstream = BTreeMap::from([(stage::DATA, self.data.clone())]);
        let cancel = Cancel::default();
        let ctx = ExecContext {
            spec: stage.spec(),
            knobs: &knobs,
            upstream: &upstream,
            members,
            store: self.cache.store(),
            device: "cpu",
            progress: &NoProgress,
            cancel: &cancel,
            resume: &workspace::NoResume,
        };
        let output = stage.execute(&ctx).unwrap_or_else(|error| panic!("{id}: {error}"));
        let artifacts = output
            .artifacts
            .iter()
            .map(|(name, bytes)| {
                let hash = self.cache.store().put(bytes).unwrap();
                (name.clone(), cache::ArtifactRef { hash, bytes: bytes.len() as u64 })
            })
            .collect();
        StageOutput::new(artifacts, output.metrics)
    }

    /// Asks `tune` for members until it asks for no more, training each once.
    fn members(&self) -> Vec<(InstanceSpec, StageOutput)> {
        let tune = stage_of(&self.stages, stage::TUNE);
        let knobs = self.knobs(stage::TUNE, &[]);
        let mut built: Vec<(InstanceSpec, StageOutput)> = Vec::new();
        loop {
            let lookup = Known(&built);
            let members = tune.members(&knobs, &lookup).unwrap();
            if members.len() == built.len() {
                assert_eq!(members, built.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>());
                return built;
            }
            for member in &members[built.len()..] {
                assert_eq!(member.stage, stage::OVERFIT);
                let output = self.execute(stage::OVERFIT, &member.overrides, &[]);
                built.push((member.clone(), output));
            }
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.root).ok();
    }
}

struct Known<'a>(&'a [(InstanceSpec, StageOutput)]);

impl MemberLookup for Known<'_> {
    fn output(&self, member: &InstanceSpec) -> Option<StageOutput> {
        self.0.iter().find(|(m, _)| m == member).map(|(_, output)| output.clone())
    }
}

fn text(output: &StageOutput, bench: &Bench, name: &str) -> String {
    String::from_utf8(bench.cache.store().get(&output.artifacts[name].hash).unwrap()).unwrap()
}

#[test]
fn tune_reads_its_trials_and_copies_the_best_checkpoint() {
    let bench = Bench::new("plain", &[]);
    let members = bench.members();
    // The untuned config (tune.steps = 0: the plain overfit) and 4 trials.
    assert_eq!(members.len(), 5);
    assert_eq!(members[0].0, InstanceSpec::plain(stage::OVERFIT));
    let output = bench.execute(stage::TUNE, &[], &members);
    let best = output.metrics["best_trial"] as usize;
    let trial = &members[1 + best].1;
    assert_eq!(output.artifacts["checkpoint.safetensors"].hash, trial.artifacts["checkpoint.safetensors"].hash);
    assert_eq!(output.metrics["val_acc"], trial.metrics["val_acc"]);
    for (_, other) in &members[1..] {
        assert!(other.metrics["val_acc"] <= output.metrics["val_acc"]);
    }
    assert_eq!(output.metrics["untuned_val_acc"], members[0].1.metrics["val_acc"]);
    assert!(output.metrics.contains_key("position:train.lr") && output.metrics.contains_key("position:model.hidden"));
    assert!(!output.metrics.contains_key("position:train.batch_size"), "a choice has no range");

    let csv = text(&output, &bench, "trials.csv");
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.starts_with("trial,rung,steps,train.lr,model.hidden,train.batch_size,val_acc"), "{csv}");
    let best_toml = text(&output, &bench, "best.toml");
    let config = Config::parse(&crate::knobs::schema(), &best_toml, "best.toml").unwrap();
    for (knob, value) in &members[1 + best].0.overrides {
        assert_eq!(config.get(knob.as_str()), Some(value), "{best_toml}");
    }
    let scatter = text(&output, &bench, "scatter.svg");
    assert!(scatter.contains(">0.002<"), "train.lr on a log axis (1-2-5 ticks): {scatter}");
    assert_eq!(scatter.matches("<circle").count(), 3 * 4, "one point per trial and knob");
    let importance = text(&output, &bench, "importance.svg");
    assert!(importance.contains("model.hidden") && importance.contains("train.batch_size"));

    // The same members give the same bytes (no timestamps, no order dependence).
    let again = bench.execute(stage::TUNE, &[], &members);
    assert_eq!(again, output);

    let tune = stage_of(&bench.stages, stage::TUNE);
    let thresholds = BTreeMap::from([(knob::TUNE_EDGE, KnobValue::Float(workspace::Float(0.05)))]);
    let verdicts = tune.verdicts(&output, &Checks::new(stage::TUNE, &thresholds)).unwrap();
    let checks: Vec<&str> = verdicts.iter().map(|v| v.check.as_str()).collect();
    assert_eq!(checks, ["beats_untuned", "range:model.hidden", "range:train.lr"]);
}

#[test]
fn halving_asks_for_promotions_once_a_rung_is_complete() {
    let bench = Bench::new("halving", &["tune.halving=2", "tune.min_steps=10"]);
    let tune = stage_of(&bench.stages, stage::TUNE);
    let knobs = bench.knobs(stage::TUNE, &[]);
    let first = tune.members(&knobs, &Known(&[])).unwrap();
    assert_eq!(first.len(), 5, "untuned + rung 0");
    let steps = |m: &InstanceSpec| m.override_of(knob::TRAIN_STEPS).cloned();
    assert!(first[1..].iter().all(|m| steps(m) == Some(KnobValue::Int(10))));
    let members = bench.members();
    // Rungs 10, 20, 30 steps: 4 trials, then 2, then 1.
    assert_eq!(members.len(), 1 + 4 + 2 + 1);
    assert_eq!(steps(&members[7].0), Some(KnobValue::Int(30)));
    let output = bench.execute(stage::TUNE, &[], &members);
    assert_eq!(output.metrics["best_steps"], 30.0);
    let final_trial = &members[7].1;
    assert_eq!(output.artifacts["checkpoint.safetensors"].hash, final_trial.artifacts["checkpoint.safetensors"].hash);
    let tune_verdicts = tune.verdicts(
        &output,
        &Checks::new(stage::TUNE, &BTreeMap::from([(knob::TUNE_EDGE, KnobValue::Float(workspace::Float(0.5)))])),
    );
    // An edge of 0.5 puts every value in an outer half: each range knob warns.
    let warned = tune_verdicts
        .unwrap()
        .iter()
        .filter(|v| v.status == VerdictStatus::Warn && v.check.starts_with("range:"))
        .count();
    assert_eq!(warned, 2);
}

#[test]
fn members_reject_a_bad_space_naming_the_entry() {
    let bench = Bench::new("bad", &[r#"tune.space=["train.lr = log(1e-3, 3e-2)", "train.steps = int(10, 20)"]"#]);
    let tune = stage_of(&bench.stages, stage::TUNE);
    let error = tune.members(&bench.knobs(stage::TUNE, &[]), &Known(&[])).unwrap_err();
    assert!(error.starts_with("tune.space[1]") && error.contains("set tune.steps"), "{error}");
}

#[test]
fn a_budget_other_than_train_steps_gets_its_own_untuned_run() {
    let bench = Bench::new("budget", &["tune.steps=50"]);
    let tune = stage_of(&bench.stages, stage::TUNE);
    let members = tune.members(&bench.knobs(stage::TUNE, &[]), &Known(&[])).unwrap();
    let budget = Some(KnobValue::Int(50));
    assert_eq!(members[0], InstanceSpec::new(stage::OVERFIT, [(knob::TRAIN_STEPS, KnobValue::Int(50))]));
    assert!(members.iter().all(|m| m.override_of(knob::TRAIN_STEPS).cloned() == budget));
}
