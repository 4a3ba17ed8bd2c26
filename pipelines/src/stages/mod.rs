//! The recipe's stages, one file each, and their registry in recipe order.
//!
//! Each stage implements [`RecipeStage`]: its spec, `run` (artifacts plus a typed
//! `Metrics` struct) and `judge` (verdicts over that same struct). [`Typed`] adapts
//! it to the engine's [`Stage`], converting the struct to and from the flat metric
//! map (see [`flat`]), so a metric name cannot differ between writer and reader and a
//! missing metric is a [`VerdictError`]. Adding a stage: one file, one registry line.

pub mod batch_preview;
pub mod beats_baselines;
pub mod common;
pub mod data;
pub mod diagnosis;
pub mod dumb_baselines;
pub mod evaluate;
pub mod flat;
pub mod grad_deps;
pub mod human_baseline;
pub mod inspect;
pub mod label_issues;
pub mod loss_at_init;
pub mod overfit;
pub mod overfit_batch;
pub mod regularize;
pub mod squeeze;
pub mod tune;
pub mod zero_input_baseline;

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use workspace::{
    Checks, ExecContext, ExecError, ExecOutput, Stage, StageOutput, StageSpec, Target, Verdict, VerdictError,
};

use crate::ids::stage;
use common::Cx;

/// What a stage's `run` produces: artifact files (name with extension -> bytes) and
/// its typed metrics.
pub struct Run<M> {
    pub artifacts: Vec<(String, Vec<u8>)>,
    pub metrics: M,
}

/// One recipe stage with typed metrics.
pub trait RecipeStage: Send + Sync + 'static {
    /// The metrics `run` writes and `judge` reads; each field is one metric name.
    type Metrics: Serialize + DeserializeOwned + Default;

    fn spec(&self) -> StageSpec;

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Self::Metrics>, ExecError>;

    /// Verdicts over the metrics and the stage's declared thresholds.
    fn judge(&self, metrics: &Self::Metrics, checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError>;

    /// See [`Stage::member_stages`]: the stages a fan-in stage's members belong to.
    fn member_stages(&self) -> Vec<workspace::StageId> {
        Vec::new()
    }

    /// See [`Stage::members`]: ladder rungs, trials, ensemble members.
    fn members(
        &self,
        _knobs: &std::collections::BTreeMap<workspace::KnobId, workspace::KnobValue>,
        _known: &dyn workspace::MemberLookup,
    ) -> Result<Vec<workspace::InstanceSpec>, String> {
        Ok(Vec::new())
    }
}

/// A [`RecipeStage`] as the engine's [`Stage`].
pub struct Typed<S> {
    spec: StageSpec,
    stage: S,
}

impl<S: RecipeStage> Typed<S> {
    pub fn new(stage: S) -> Typed<S> {
        Typed { spec: stage.spec(), stage }
    }
}

impl<S: RecipeStage> Stage for Typed<S> {
    fn spec(&self) -> &StageSpec {
        &self.spec
    }

    fn execute(&self, ctx: &ExecContext<'_>) -> Result<ExecOutput, ExecError> {
        let span = tracing::info_span!("execute", stage = %self.spec.id);
        let cx = Cx { exec: ctx, device: common::device(ctx.device)? };
        // The stage runs on a worker of its own pool (as many threads as pipe's
        // --threads), so the kernels' parallel loops start on a rayon thread: with one
        // thread they run inline, instead of handing every op to the global pool and
        // sleeping until it is done (a busy machine then gives the core away at each
        // hand-off: the digits CNN trained at half speed beside other work).
        let threads = rayon::current_num_threads();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("pipe-stage-{i}"))
            .build()
            .map_err(|error| ExecError::Failed(format!("a thread pool of {threads}: {error}")))?;
        pool.install(|| {
            let _span = span.enter();
            let run = self.stage.run(&cx)?;
            Ok(ExecOutput { artifacts: run.artifacts, metrics: flat::to_map(&run.metrics)? })
        })
    }

    fn verdicts(&self, output: &StageOutput, checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        let metrics: S::Metrics = flat::from_map(&output.metrics)
            .map_err(|error| VerdictError(format!("metrics of stage `{}`: {error}", self.spec.id)))?;
        self.stage.judge(&metrics, checks)
    }

    fn member_stages(&self) -> Vec<workspace::StageId> {
        self.stage.member_stages()
    }

    fn members(
        &self,
        knobs: &std::collections::BTreeMap<workspace::KnobId, workspace::KnobValue>,
        known: &dyn workspace::MemberLookup,
    ) -> Result<Vec<workspace::InstanceSpec>, String> {
        self.stage.members(knobs, known)
    }
}

/// A registered stage, with what the well-formedness tests need to judge it blind.
pub struct Entry {
    pub stage: Arc<dyn Stage>,
    /// The flat map of the stage's `Metrics::default()`.
    pub default_metrics: fn() -> Result<cache::Metrics, ExecError>,
}

fn entry<S: RecipeStage>(stage: S) -> Entry {
    Entry { stage: Arc::new(Typed::new(stage)), default_metrics: || flat::to_map(&S::Metrics::default()) }
}

/// Every stage in recipe (dependency) order. Relative data paths start at `base_dir`,
/// the directory of `pipe.toml`.
pub fn registry(base_dir: &Path) -> Vec<Entry> {
    let base_dir = base_dir.to_path_buf();
    let overfit_stage = overfit::Overfit { base_dir: base_dir.clone() };
    let data_stage = data::Data { base_dir: base_dir.clone() };
    // A rung may change what `overfit` or the `data` stage before it reads.
    let trainable: Vec<_> = overfit_stage.spec().knobs.into_iter().chain(data_stage.spec().knobs).collect();
    let ladder_stage = regularize::Regularize::new(trainable.iter().copied());
    vec![
        entry(data_stage),
        entry(inspect::Inspect),
        entry(batch_preview::BatchPreview),
        entry(human_baseline::HumanBaseline { base_dir: base_dir.clone() }),
        entry(dumb_baselines::DumbBaselines),
        entry(grad_deps::GradDeps),
        entry(loss_at_init::LossAtInit),
        entry(zero_input_baseline::ZeroInputBaseline),
        entry(overfit_batch::OverfitBatch),
        entry(overfit_stage),
        entry(label_issues::LabelIssues),
        entry(beats_baselines::BeatsBaselines),
        entry(ladder_stage),
        entry(tune::Tune),
        entry(squeeze::Squeeze { ladder: regularize::Regularize::new(trainable) }),
        entry(evaluate::Evaluate),
    ]
}

/// The stages in recipe order.
pub fn stages(base_dir: &Path) -> Vec<Arc<dyn Stage>> {
    registry(base_dir).into_iter().map(|entry| entry.stage).collect()
}

pub fn targets() -> Vec<Target> {
    let skeleton = vec![
        stage::DATA,
        stage::INSPECT,
        stage::BATCH_PREVIEW,
        stage::HUMAN_BASELINE,
        stage::DUMB_BASELINES,
        stage::GRAD_DEPS,
        stage::LOSS_AT_INIT,
        stage::ZERO_INPUT_BASELINE,
        stage::OVERFIT_BATCH,
    ];
    let mut overfit = skeleton.clone();
    overfit.extend([stage::OVERFIT, stage::BEATS_BASELINES, stage::EVALUATE]);
    let mut regularize = overfit.clone();
    regularize.push(stage::REGULARIZE);
    let mut tune = overfit.clone();
    tune.insert(tune.len() - 1, stage::TUNE);
    let mut squeeze = overfit.clone();
    squeeze.push(stage::SQUEEZE);
    vec![
        Target::new("inspect", "become one with the data", vec![stage::DATA, stage::INSPECT]),
        Target::new("skeleton", "end-to-end skeleton with dumb baselines", skeleton),
        Target::new("overfit", "skeleton, then overfit the training split and score the test split", overfit.clone()),
        Target::new("regularize", "overfit, then a ladder of regularized, early-stopped variants", regularize.clone())
            .with(evaluate::ScoredModel::Regularize.instance()),
        Target::new("tune", "overfit, then random search over tune.space", tune)
            .with(evaluate::ScoredModel::Tune.instance()),
        Target::new("squeeze", "overfit, then an ensemble of seeds and a student distilled from it", squeeze)
            .with(evaluate::ScoredModel::Squeeze.instance()),
        Target::new("all", "every stage", regularize).with(evaluate::ScoredModel::Regularize.instance()),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use workspace::{KnobId, KnobValue, StageOutput};

    use super::*;
    use crate::ids::knob;

    fn recipe() -> workspace::Recipe {
        crate::recipe(Path::new("."))
    }

    fn default_thresholds(spec: &StageSpec, leave_out: Option<KnobId>) -> BTreeMap<KnobId, KnobValue> {
        let schema = crate::knobs::schema();
        spec.checks
            .iter()
            .filter(|id| Some(**id) != leave_out)
            .filter_map(|id| schema.iter().find(|k| k.name == id.0).map(|k| (*id, k.default.clone())))
            .collect()
    }

    fn default_output(entry: &Entry) -> StageOutput {
        StageOutput::new(BTreeMap::new(), (entry.default_metrics)().unwrap())
    }

    #[test]
    fn recipe_is_well_formed() {
        assert_eq!(recipe().problems(), Vec::<String>::new());
    }

    #[test]
    fn stage_order_is_the_recipe_order() {
        let ids: Vec<&str> = recipe().stages.iter().map(|stage| stage.spec().id.as_str()).collect();
        assert_eq!(
            ids,
            [
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
                "label_issues",
                "beats_baselines",
                "regularize",
                "tune",
                "squeeze",
                "evaluate",
            ]
        );
        assert_eq!(ids, stage::ALL.iter().map(|id| id.as_str()).collect::<Vec<_>>());
    }

    #[test]
    fn knob_constants_are_the_schema() {
        let schema: BTreeSet<&str> = crate::knobs::schema().iter().map(|spec| spec.name).collect();
        let constants: BTreeSet<&str> = knob::ALL.iter().map(|id| id.as_str()).collect();
        assert_eq!(constants.len(), knob::ALL.len(), "a knob constant is declared twice");
        assert_eq!(
            schema.difference(&constants).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "schema knobs without a constant"
        );
        assert_eq!(
            constants.difference(&schema).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "constants not in the schema"
        );
    }

    #[test]
    fn every_knob_is_read_by_some_stage_or_the_config() {
        // Knobs no stage declares are read by the binary (`cache.remote`, never in a
        // key); thresholds count as read by their stage's verdicts.
        let recipe = recipe();
        let declared: BTreeSet<KnobId> = recipe
            .stages
            .iter()
            .flat_map(|s| s.spec().knobs.iter().chain(&s.spec().checks).copied().collect::<Vec<_>>())
            .collect();
        let unread: Vec<KnobId> = knob::ALL.iter().copied().filter(|id| !declared.contains(id)).collect();
        assert_eq!(unread, vec![knob::CACHE_REMOTE]);
    }

    #[test]
    fn verdicts_read_only_declared_thresholds() {
        for entry in registry(Path::new(".")) {
            let spec = entry.stage.spec();
            let values = default_thresholds(spec, None);
            let result = entry.stage.verdicts(&default_output(&entry), &Checks::new(spec.id, &values));
            assert!(result.is_ok(), "stage `{}`: {result:?}", spec.id);
        }
    }

    #[test]
    fn verdicts_read_every_declared_threshold() {
        for entry in registry(Path::new(".")) {
            let spec = entry.stage.spec();
            for &threshold in &spec.checks {
                let values = default_thresholds(spec, Some(threshold));
                let result = entry.stage.verdicts(&default_output(&entry), &Checks::new(spec.id, &values));
                let read = matches!(&result, Err(VerdictError(message)) if message.contains(threshold.as_str()));
                assert!(read, "stage `{}` never reads its threshold `{threshold}`: {result:?}", spec.id);
            }
        }
    }

    /// Runs `stage` with the schema defaults (small budgets) for its declared knobs,
    /// less `leave_out`, on `upstream`.
    fn execute(
        stage: &dyn Stage,
        store: &cache::Store,
        upstream: &BTreeMap<workspace::StageId, StageOutput>,
        leave_out: Option<KnobId>,
    ) -> Result<workspace::ExecOutput, ExecError> {
        let mut config = workspace::Config::defaults(&crate::knobs::schema());
        for small in ["train.steps=5", "checks.zero_input_baseline.steps=5", "checks.dumb_baselines.steps=5"] {
            config.set(&crate::knobs::schema(), small).unwrap();
        }
        let spec = stage.spec();
        let knobs: BTreeMap<KnobId, KnobValue> = spec
            .knobs
            .iter()
            .filter(|id| Some(**id) != leave_out)
            .map(|id| (*id, config.get(id.as_str()).unwrap().clone()))
            .collect();
        // Members as the engine would list them, served from the plain stages' outputs.
        let members: Vec<(workspace::InstanceSpec, StageOutput)> = stage
            .members(&knobs, &workspace::NothingKnown)
            .map_err(ExecError::Failed)?
            .into_iter()
            .filter_map(|member| {
                let output = upstream.get(&member.stage)?.clone();
                Some((member, output))
            })
            .collect();
        let upstream = spec.upstream.iter().filter_map(|id| Some((*id, upstream.get(id)?.clone()))).collect();
        let cancel = workspace::Cancel::default();
        let ctx = ExecContext {
            spec,
            knobs: &knobs,
            upstream: &upstream,
            members: &members,
            store,
            device: "cpu",
            progress: &workspace::NoProgress,
            cancel: &cancel,
            resume: &workspace::NoResume,
        };
        stage.execute(&ctx)
    }

    #[test]
    fn execute_reads_every_declared_knob() {
        let root = std::env::temp_dir().join(format!("pipe-stages-test-{}", std::process::id()));
        let cache = cache::Cache::open(&root).unwrap();
        let stages = stages(Path::new("."));
        let data = execute(stages[0].as_ref(), cache.store(), &BTreeMap::new(), None).unwrap();
        let artifacts = data
            .artifacts
            .iter()
            .map(|(name, bytes)| {
                let hash = cache.store().put(bytes).unwrap();
                (name.clone(), cache::ArtifactRef { hash, bytes: bytes.len() as u64 })
            })
            .collect();
        let upstream = BTreeMap::from([(stage::DATA, StageOutput::new(artifacts, data.metrics))]);
        for stage in &stages {
            for &knob in &stage.spec().knobs {
                let result = execute(stage.as_ref(), cache.store(), &upstream, Some(knob));
                let read = matches!(&result, Err(ExecError::Failed(message)) if message.contains(knob.as_str()));
                assert!(read, "stage `{}` never reads its knob `{knob}`", stage.spec().id);
            }
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Puts an execution's artifacts in the store, as the engine would.
    fn stored(store: &cache::Store, output: workspace::ExecOutput) -> StageOutput {
        let artifacts = output
            .artifacts
            .iter()
            .map(|(name, bytes)| {
                let hash = store.put(bytes).unwrap();
                (name.clone(), cache::ArtifactRef { hash, bytes: bytes.len() as u64 })
            })
            .collect();
        StageOutput::new(artifacts, output.metrics)
    }

    #[test]
    fn only_evaluate_scores_the_test_split() {
        let root = std::env::temp_dir().join(format!("pipe-test-split-{}", std::process::id()));
        let cache = cache::Cache::open(&root).unwrap();
        let mut upstream = BTreeMap::new();
        for stage in stages(Path::new(".")) {
            let output = execute(stage.as_ref(), cache.store(), &upstream, None)
                .unwrap_or_else(|error| panic!("stage `{}`: {error:?}", stage.spec().id));
            upstream.insert(stage.spec().id, stored(cache.store(), output));
        }
        let evaluate = &upstream[&stage::EVALUATE].metrics;
        assert!(evaluate["n_test"] > 0.0 && evaluate["test_acc"].is_finite(), "{evaluate:?}");
        let accesses = common::test_accesses();
        let readers = |wanted: common::TestAccess| -> BTreeSet<&str> {
            accesses.iter().filter(|(_, access)| *access == wanted).map(|(id, _)| id.as_str()).collect()
        };
        assert_eq!(readers(common::TestAccess::Score), BTreeSet::from(["evaluate"]));
        // The data audit compares the splits (human_baseline only with a labels file).
        let audit = readers(common::TestAccess::Audit);
        assert!(
            audit.contains("inspect") && audit.is_subset(&BTreeSet::from(["human_baseline", "inspect"])),
            "{audit:?}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_metric_is_a_verdict_error() {
        for entry in registry(Path::new(".")) {
            let spec = entry.stage.spec();
            let defaults = default_output(&entry);
            let values = default_thresholds(spec, None);
            for name in defaults.metrics.keys() {
                let mut output = defaults.clone();
                std::sync::Arc::make_mut(&mut output.metrics).remove(name);
                let result = entry.stage.verdicts(&output, &Checks::new(spec.id, &values));
                assert!(
                    matches!(&result, Err(VerdictError(message)) if message.contains(name.as_str())),
                    "stage `{}` without metric `{name}`: {result:?}",
                    spec.id
                );
            }
        }
    }
}
