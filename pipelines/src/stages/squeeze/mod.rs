//! `squeeze`: the recipe's last step. An ensemble of `squeeze.k` models (the
//! configuration's `overfit` under seeds `train.seed`, `train.seed + 1`, ...: fan-in
//! members, each an ordinary cached `overfit` instance), scored on the validation
//! split against its best member (the members' softmax probabilities pooled by
//! `squeeze.combine`: their mean, or their normalised geometric mean); then a single student distilled from the ensemble's softened
//! predictions ([`distill`]).
//!
//! Artifacts: `checkpoint.safetensors` and the metric `val_acc` are the student's
//! (what `evaluate` scores); `squeeze.json` names every member with its checkpoint's
//! hash, so `evaluate` can score the ensemble too ([`score_ensemble`]).

pub mod distill;
pub mod ensemble;
mod members;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use workspace::{
    Checks, ExecError, InstanceSpec, KnobId, KnobValue, MemberLookup, StageId, StageSpec, Verdict, VerdictError,
    VerdictStatus,
};

use super::common::{err, json_bytes, knobs, Cx, OPTIM_KNOBS, SCHEDULE_KNOBS};
use super::{overfit, RecipeStage, Run};
use crate::data::Prepared;
use crate::ids::{knob, stage};
use crate::models::{Activation, Init, MlpSpec, ModelSpec};
use distill::{Distill, Lesson};
pub use ensemble::{ensemble_probs, load_checkpoint, Combine, Probs, Score, Tta, View};
pub use members::MemberSource;

pub struct Squeeze {
    /// Builds the `regularize` ladder's rungs for `squeeze.members = "regularize"`.
    pub ladder: super::regularize::Regularize,
}

/// `squeeze.student`: the distilled model's architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StudentKind {
    /// The best member's.
    Member,
    /// Softmax regression.
    Linear,
    /// An MLP with `squeeze.student_hidden` ReLU layers.
    Mlp,
}

impl workspace::ChoiceKnob for StudentKind {
    const OPTIONS: &'static [&'static str] = &["member", "linear", "mlp"];

    fn from_index(index: usize) -> StudentKind {
        [StudentKind::Member, StudentKind::Linear, StudentKind::Mlp][index]
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub members: f64,
    pub best_member_val_acc: f64,
    pub best_member_val_loss: f64,
    pub ensemble_val_acc: f64,
    pub ensemble_val_loss: f64,
    /// Ensemble minus best member, validation accuracy.
    pub ensemble_gain: f64,
    /// The student's validation accuracy and loss (the model `evaluate` scores).
    pub val_acc: f64,
    pub val_loss: f64,
    /// Share of the ensemble's gain the student keeps (see [`ensemble::kept_share`]).
    pub kept_share: f64,
}

/// Everything `run` reads from its knobs, read before any work (so a missing knob
/// is named whatever else fails).
struct Settings {
    k: usize,
    distill: Distill,
    student: StudentKind,
    student_hidden: Vec<usize>,
    tta: Tta,
    combine: Combine,
    optim: crate::train::OptimSpec,
    schedule: crate::train::Schedule,
    steps: usize,
    batch_size: usize,
    seed: u64,
}

impl Settings {
    fn read(cx: &Cx<'_, '_>) -> Result<Settings, ExecError> {
        Ok(Settings {
            k: cx.count(knob::SQUEEZE_K)?,
            distill: Distill { temperature: cx.f64(knob::SQUEEZE_TEMPERATURE)?, alpha: cx.f64(knob::SQUEEZE_ALPHA)? },
            student: cx.choice(knob::SQUEEZE_STUDENT)?,
            student_hidden: cx.int_list(knob::SQUEEZE_STUDENT_HIDDEN)?.iter().map(|&w| w as usize).collect(),
            tta: cx.choice(knob::SQUEEZE_TTA)?,
            combine: cx.choice(knob::SQUEEZE_COMBINE)?,
            optim: cx.optim()?,
            schedule: cx.schedule()?,
            steps: cx.count(knob::TRAIN_STEPS)?,
            batch_size: cx.count(knob::TRAIN_BATCH_SIZE)?,
            seed: cx.seed()?,
        })
    }
}

impl RecipeStage for Squeeze {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::SQUEEZE,
            version: 5,
            doc: "ensemble k seeds of the model against its best member; distill a student from it",
            knobs: knobs(&[
                &OPTIM_KNOBS,
                &SCHEDULE_KNOBS,
                &[
                    knob::TRAIN_BATCH_SIZE,
                    knob::TRAIN_STEPS,
                    knob::SQUEEZE_K,
                    knob::SQUEEZE_TEMPERATURE,
                    knob::SQUEEZE_ALPHA,
                    knob::SQUEEZE_STUDENT,
                    knob::SQUEEZE_STUDENT_HIDDEN,
                    knob::SQUEEZE_MEMBERS,
                    knob::SQUEEZE_TTA,
                    knob::SQUEEZE_COMBINE,
                ],
                &members::TUNE_KNOBS,
                &super::tune::plan::list_knobs(),
                &[knob::REGULARIZE_RUNGS, knob::REGULARIZE_SELECT],
                &super::regularize::rungs::VOCABULARY_KNOBS,
            ]),
            checks: vec![knob::SQUEEZE_MIN_GAIN, knob::SQUEEZE_MIN_KEPT],
            upstream: vec![stage::DATA],
            fingerprints: vec![],
            device_dependent: true,
        }
    }

    fn member_stages(&self) -> Vec<StageId> {
        vec![stage::OVERFIT]
    }

    /// `squeeze.members = "seeds"`: `overfit` (the configuration itself), then
    /// `overfit[train.seed=seed+i]` for i in 1..k. `"tune"`: every trial of the tune
    /// until all are known, then the k best. `"regularize"`: every rung until all are
    /// known, then the best rung under k seeds ([`members`]).
    fn members(
        &self,
        knobs: &BTreeMap<KnobId, KnobValue>,
        known: &dyn MemberLookup,
    ) -> Result<Vec<InstanceSpec>, String> {
        members::members(knobs, known, &self.ladder)
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let settings = Settings::read(cx)?;
        let source: MemberSource = cx.choice(knob::SQUEEZE_MEMBERS)?;
        members::check_source_knobs(cx, source, &self.ladder)?;
        if cx.exec.members.len() != settings.k {
            return Err(ExecError::Failed(format!(
                "squeeze has {} members, squeeze.k asks for {}",
                cx.exec.members.len(),
                settings.k
            )));
        }
        let data = cx.data()?;
        let view = View { tta: settings.tta, shape: &data.meta.shape, combine: settings.combine };
        view.check().map_err(ExecError::Failed)?;
        let members = predict_members(cx, &data, settings.distill.temperature, view)?;
        let best = best_member(&members);
        let ensemble = Probs::pool(&members.iter().map(|m| m.val.clone()).collect::<Vec<_>>(), settings.combine)
            .ok_or_else(|| ExecError::Failed("members disagree on the classes".into()))?
            .score(&data.val.y);
        let teacher = Probs::pool(&members.iter().map(|m| m.train_soft.clone()).collect::<Vec<_>>(), settings.combine)
            .ok_or_else(|| ExecError::Failed("members disagree on the classes".into()))?;
        let (student_spec, student_bytes, student) = train(cx, &data, &settings, &members[best].spec, &teacher)?;
        let best_score = members[best].score;
        let metrics = Metrics {
            members: members.len() as f64,
            best_member_val_acc: best_score.acc,
            best_member_val_loss: best_score.loss,
            ensemble_val_acc: ensemble.acc,
            ensemble_val_loss: ensemble.loss,
            ensemble_gain: ensemble.acc - best_score.acc,
            val_acc: student.acc,
            val_loss: student.loss,
            kept_share: ensemble::kept_share(best_score.acc, ensemble.acc, student.acc),
        };
        let report = json!({
            "members": members.iter().map(|m| json!({
                "name": m.name,
                "checkpoint": m.checkpoint,
                "val_acc": m.score.acc,
                "val_loss": m.score.loss,
            })).collect::<Vec<_>>(),
            "best_member": members[best].name,
            "source": crate::stages::common::choice_name(source),
            "ensemble": {"val_acc": ensemble.acc, "val_loss": ensemble.loss, "combine": crate::stages::common::choice_name(settings.combine)},
            "tta": crate::stages::common::choice_name(settings.tta),
            "student": {
                "model": student_spec.kind_name(),
                "temperature": settings.distill.temperature,
                "alpha": settings.distill.alpha,
                "val_acc": student.acc,
                "val_loss": student.loss,
            },
            "kept_share": metrics.kept_share,
        });
        let artifacts =
            vec![("checkpoint.safetensors".into(), student_bytes), ("squeeze.json".into(), json_bytes(&report)?)];
        Ok(Run { artifacts, metrics })
    }

    fn judge(&self, m: &Metrics, checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        let min_gain = checks.f64(knob::SQUEEZE_MIN_GAIN)?;
        let min_kept = checks.f64(knob::SQUEEZE_MIN_KEPT)?;
        let beats = m.ensemble_gain > min_gain;
        let ensemble = Verdict {
            check: "ensemble_beats_best_member".into(),
            status: if beats { VerdictStatus::Pass } else { VerdictStatus::Warn },
            value: m.ensemble_gain,
            expected: min_gain,
            message: format!(
                "ensemble of {:.0} val acc {:.4}, best member {:.4} (gain {:+.4}), want a gain above {min_gain}",
                m.members, m.ensemble_val_acc, m.best_member_val_acc, m.ensemble_gain
            ),
            hint: (!beats).then(|| {
                "the members make the same mistakes: diversify them (more seeds with squeeze.k, or regularize each) or ship the best member".to_string()
            }),
        };
        let keeps = m.ensemble_gain <= 0.0 || m.kept_share >= min_kept;
        let student = Verdict {
            check: "student_keeps_gain".into(),
            status: if keeps { VerdictStatus::Pass } else { VerdictStatus::Warn },
            value: m.kept_share,
            expected: min_kept,
            message: if m.ensemble_gain <= 0.0 {
                format!("student val acc {:.4}; the ensemble gained nothing for it to keep", m.val_acc)
            } else {
                format!(
                    "student val acc {:.4} keeps {:.0}% of the ensemble's gain, want >= {:.0}%",
                    m.val_acc,
                    m.kept_share * 100.0,
                    min_kept * 100.0
                )
            },
            hint: (!keeps).then(|| {
                "train the student longer (train.steps), raise squeeze.temperature or squeeze.alpha, or use a larger student".to_string()
            }),
        };
        Ok(vec![ensemble, student])
    }
}

/// One member's predictions.
struct Member {
    name: String,
    checkpoint: String,
    spec: ModelSpec,
    /// Validation probabilities at temperature 1, and their score.
    val: Probs,
    score: Score,
    /// Training-split probabilities at the distillation temperature.
    train_soft: Probs,
}

fn predict_members(
    cx: &Cx<'_, '_>,
    data: &Prepared,
    temperature: f64,
    view: View<'_>,
) -> Result<Vec<Member>, ExecError> {
    let mut members = Vec::new();
    for (instance, output) in cx.exec.members {
        cx.exec.check_cancelled()?;
        let name = instance.name().as_str().to_string();
        let failed = |what: String| ExecError::Failed(format!("member `{name}`: {what}"));
        let artifact =
            output.artifacts.get("checkpoint.safetensors").ok_or_else(|| failed("no checkpoint.safetensors".into()))?;
        let bytes = cx.exec.read(&artifact.hash)?;
        let (spec, model, _) = load_checkpoint(&bytes, &cx.device).map_err(failed)?;
        let classes = ensemble::spec_classes(&spec);
        let val = ensemble::predict(model.as_ref(), classes, &data.val.x, 1.0, view, &cx.device).map_err(failed)?;
        let score = val.score(&data.val.y);
        let train_soft =
            ensemble::predict(model.as_ref(), classes, &data.train.x, temperature, view, &cx.device).map_err(failed)?;
        members.push(Member { name, checkpoint: artifact.hash.to_hex(), spec, val, score, train_soft });
    }
    if members.is_empty() {
        return Err(ExecError::Failed("squeeze has no members (squeeze.k = 0?)".into()));
    }
    Ok(members)
}

/// The member with the best validation accuracy (then the lowest loss, then the first).
fn best_member(members: &[Member]) -> usize {
    let mut best = 0;
    for (index, member) in members.iter().enumerate().skip(1) {
        let (a, b) = (member.score, members[best].score);
        if a.acc > b.acc || (a.acc == b.acc && a.loss < b.loss) {
            best = index;
        }
    }
    best
}

/// Builds, distills and scores the student; returns its spec, checkpoint bytes and
/// validation score.
fn train(
    cx: &Cx<'_, '_>,
    data: &Prepared,
    settings: &Settings,
    best: &ModelSpec,
    teacher: &Probs,
) -> Result<(ModelSpec, Vec<u8>, Score), ExecError> {
    let (n_in, n_out) = (data.n_features(), data.n_classes());
    let spec = match settings.student {
        StudentKind::Member => best.clone(),
        StudentKind::Linear => {
            ModelSpec::Mlp(MlpSpec { n_in, hidden: Vec::new(), n_out, activation: Activation::Relu })
        }
        StudentKind::Mlp => ModelSpec::Mlp(MlpSpec {
            n_in,
            hidden: settings.student_hidden.clone(),
            n_out,
            activation: Activation::Relu,
        }),
    };
    let log_priors = data.train_priors().iter().map(|p| p.max(1e-12).ln() as f32).collect();
    // A seed no member used.
    let seed = settings.seed.wrapping_add(settings.k as u64);
    let student = spec.build(&Init::Recipe { log_priors }, seed, &cx.device).map_err(err("student init"))?;
    let train = cx.tensors(data, &data.train)?;
    let lesson = Lesson { train: &train, soft: teacher, steps: settings.steps, batch_size: settings.batch_size, seed };
    distill::train_student(cx, student.as_ref(), &settings.optim, settings.schedule, settings.distill, &lesson)?;
    student.set_training(false);
    let logits = ensemble::logits(student.as_ref(), &data.val.x, n_in, &cx.device).map_err(err("predict"))?;
    let score = Probs::softmax(&logits, n_out, 1.0).score(&data.val.y);
    let bytes = overfit::checkpoint_bytes(&spec, data, student.as_ref())?;
    Ok((spec, bytes, score))
}

/// The ensemble `squeeze.json` describes, scored on `x`/`labels` (e.g. the test
/// split, by `evaluate`) under the test-time augmentation and pooling it names
/// (none and the mean when it names none): member checkpoints are read from `store` by hash.
pub fn score_ensemble(
    store: &cache::Store,
    squeeze_json: &[u8],
    x: &[f32],
    shape: &[usize],
    labels: &[u32],
    device: &candle_core::Device,
) -> Result<Score, String> {
    use workspace::ChoiceKnob as _;
    let report: serde_json::Value = serde_json::from_slice(squeeze_json).map_err(|e| format!("squeeze.json: {e}"))?;
    let hashes = report["members"].as_array().ok_or("squeeze.json lists no members")?;
    let tta = match report["tta"].as_str() {
        None => Tta::None,
        Some(name) => Tta::parse(name).ok_or_else(|| format!("squeeze.json: unknown tta `{name}`"))?,
    };
    // Reports before `squeeze.combine` said this in words; they meant the mean.
    let combine = match report["ensemble"]["combine"].as_str() {
        None | Some("mean of softmax probabilities") => Combine::Mean,
        Some(name) => Combine::parse(name).ok_or_else(|| format!("squeeze.json: unknown combine `{name}`"))?,
    };
    let mut checkpoints = Vec::new();
    for member in hashes {
        let hash: cache::ArtifactHash =
            member["checkpoint"].as_str().unwrap_or_default().parse().map_err(|e: cache::CacheError| e.to_string())?;
        checkpoints.push(store.get(&hash).map_err(|e| e.to_string())?);
    }
    Ok(ensemble_probs(&checkpoints, x, 1.0, View { tta, shape, combine }, device)?.score(labels))
}
