//! `label_issues`: the label audit with the trained model's eyes (issue 15, item 3).
//! After `overfit`, each training example goes through the trained checkpoint once (in
//! evaluation mode); its penultimate-layer embedding (the head's input) replaces the
//! random features of `inspect`'s own out-of-fold classifier, and confident learning
//! on that classifier's probabilities lists the training examples the trained model's
//! view most confidently contradicts, with pictures (`crate::inspect::model_eyes`). It reads the
//! training split only (`Cx::data`), never the test split. Not in the `overfit`
//! target (it adds a pass over the training split to every training build): build it
//! by name, `pipe build label_issues`. It shares the `inspect` knobs and its threshold,
//! so one setting governs both audits.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use workspace::{Checks, ExecError, StageSpec, Verdict, VerdictError, VerdictStatus};

use super::common::{err, json_bytes, Cx};
use super::{evaluate, RecipeStage, Run};
use crate::ids::{knob, stage};
use crate::inspect::model_eyes::{self, ModelEyesOptions, ModelView};
use crate::inspect::EMBED_DIMS;
use crate::models::{layers::max_pool2d, Model, ModelSpec};

pub struct LabelIssues;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub n_audited: f64,
    pub n_issues: f64,
    pub issue_share: f64,
    /// Off-diagonal mass of confident learning's calibrated joint.
    pub estimated_noise_rate: f64,
    /// Share of training examples whose given label the model predicts.
    pub model_agreement: f64,
}

/// Training examples per forward pass.
const CHUNK: usize = 500;

impl RecipeStage for LabelIssues {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::LABEL_ISSUES,
            version: 10,
            doc:
                "label errors seen with the trained model's eyes: confident learning in its penultimate-layer embedding",
            knobs: vec![
                knob::INSPECT_TOP_K,
                knob::INSPECT_KNN_K,
                knob::INSPECT_KNN_QUERIES,
                knob::INSPECT_FOLDS,
                knob::INSPECT_MAX_SELF_CONFIDENCE,
                knob::DATA_SEED,
            ],
            checks: vec![knob::INSPECT_MAX_SUSPECT_SHARE],
            upstream: vec![stage::DATA, stage::OVERFIT],
            fingerprints: vec![],
            device_dependent: true,
        }
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let options = ModelEyesOptions {
            top_k: cx.count(knob::INSPECT_TOP_K)?,
            knn_k: cx.count(knob::INSPECT_KNN_K)?,
            knn_queries: cx.count(knob::INSPECT_KNN_QUERIES)?,
            folds: cx.count(knob::INSPECT_FOLDS)?,
            max_self_confidence: cx.f64(knob::INSPECT_MAX_SELF_CONFIDENCE)?,
            seed: cx.int(knob::DATA_SEED)? as u64,
            embed_dims: EMBED_DIMS,
        };
        let checkpoint = cx.exec.artifact(stage::OVERFIT, "checkpoint.safetensors")?;
        let (spec, model) = evaluate::restore(cx, &checkpoint)?;
        let data = cx.data()?;
        let view = model_view(cx, &data.train, data.n_features(), &spec, model.as_ref())?;
        let audit = model_eyes::audit(&data, view, &options).map_err(err("label_issues"))?;
        let n_issues = audit.labels.issues.len() as f64;
        let metrics = Metrics {
            n_audited: audit.labels.n_audited as f64,
            n_issues,
            issue_share: n_issues / (audit.labels.n_audited.max(1) as f64),
            estimated_noise_rate: audit.labels.estimated_noise,
            model_agreement: audit.agreement,
        };
        let mut artifacts = vec![("label_issues.json".to_string(), json_bytes(&audit.report)?)];
        artifacts.extend(audit.files);
        Ok(Run { artifacts, metrics })
    }

    fn judge(&self, m: &Metrics, checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        let limit = checks.f64(knob::INSPECT_MAX_SUSPECT_SHARE)?;
        let pass = m.issue_share <= limit;
        Ok(vec![Verdict {
            check: "label_issues".into(),
            status: if pass { VerdictStatus::Pass } else { VerdictStatus::Warn },
            value: m.issue_share,
            expected: limit,
            message: format!(
                "{} of {} training examples look mislabelled to the trained model: a classifier fitted out of fold on its penultimate layer gives another label ({:.1}% of them, at most {:.1}% allowed)",
                m.n_issues,
                m.n_audited,
                100.0 * m.issue_share,
                100.0 * limit
            ),
            hint: (!pass).then(|| {
                "look at label_issues.png (each with its suggested label and neighbours) and label_issues.json".to_string()
            }),
        }])
    }
}

/// The trained model's head input and class probabilities for every row of `split`.
fn model_view(
    cx: &Cx<'_, '_>,
    split: &crate::data::Split,
    features: usize,
    spec: &ModelSpec,
    model: &dyn Model,
) -> Result<ModelView, ExecError> {
    let n = split.len();
    let mut view = ModelView { embedding: Vec::new(), width: 0, probabilities: Vec::with_capacity(n) };
    for start in (0..n).step_by(CHUNK) {
        cx.exec.check_cancelled()?;
        let rows = CHUNK.min(n - start);
        let x = Tensor::from_slice(&split.x[start * features..(start + rows) * features], (rows, features), &cx.device)
            .map_err(err("training batch"))?;
        let (head_input, logits) = penultimate(spec, model, &x).map_err(err("forward"))?;
        let probabilities = candle_nn::ops::softmax_last_dim(&logits).map_err(err("softmax"))?;
        view.probabilities.extend(probabilities.to_vec2::<f32>().map_err(err("probabilities"))?);
        view.width = head_input.dim(1).map_err(err("embedding"))?;
        view.embedding.extend(head_input.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(err("embedding"))?);
    }
    Ok(view)
}

/// The input of the model's last layer, `[batch, width]`, and its logits: an MLP's last
/// hidden layer (the input itself for softmax regression), a convnet's last dense
/// layer or else its last convolution after its pool, a resnet's last block averaged over space.
pub fn penultimate(spec: &ModelSpec, model: &dyn Model, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let (logits, hidden) = model.forward_traced(x)?;
    let Some((_, last)) = hidden.last() else { return Ok((x.clone(), logits)) };
    let n = x.dim(0)?;
    let features = match spec {
        ModelSpec::Mlp(_) => last.clone(),
        ModelSpec::Convnet(c) if !c.dense.is_empty() => last.clone(),
        ModelSpec::Convnet(c) => {
            let pools = |convs: usize| (1..=convs).filter(|i| i.is_multiple_of(c.pool_every.max(1))).count();
            let convs = c.channels.len();
            let (height, width) = (c.height >> pools(convs - 1), c.width >> pools(convs - 1));
            let maps = last.reshape((n, c.channels[convs - 1], height, width))?;
            if pools(convs) > pools(convs - 1) {
                max_pool2d(&maps)?.flatten_from(1)?
            } else {
                maps.flatten_from(1)?
            }
        }
        ModelSpec::Resnet(_) => {
            let head = model.parameters().into_iter().find(|(name, _)| name == "fc.weight");
            let channels = head.map_or(Ok(1), |(_, w)| w.as_tensor().dim(1))?;
            last.reshape((n, channels, ()))?.mean(2)?
        }
    };
    Ok((features, logits))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::models::{Activation, ConvnetSpec, Init, MlpSpec, ResnetSpec};

    /// The extracted embedding is what the head reads: `fc(embedding) == logits`.
    #[test]
    fn the_penultimate_embedding_is_the_head_input() {
        let device = Device::Cpu;
        let specs = [
            ModelSpec::Mlp(MlpSpec { n_in: 64, hidden: vec![12, 9], n_out: 4, activation: Activation::Relu }),
            ModelSpec::Convnet(ConvnetSpec {
                channels_in: 1,
                height: 8,
                width: 8,
                channels: vec![3, 5],
                pool_every: 1,
                dense: vec![],
                n_out: 4,
                activation: Activation::Relu,
            }),
            ModelSpec::Convnet(ConvnetSpec {
                channels_in: 1,
                height: 8,
                width: 8,
                channels: vec![3, 5, 6],
                pool_every: 2,
                dense: vec![],
                n_out: 4,
                activation: Activation::Relu,
            }),
            ModelSpec::Convnet(ConvnetSpec {
                channels_in: 1,
                height: 8,
                width: 8,
                channels: vec![3],
                pool_every: 1,
                dense: vec![7],
                n_out: 4,
                activation: Activation::Relu,
            }),
            ModelSpec::Resnet(ResnetSpec { channels_in: 1, height: 8, width: 8, depth: 1, width_base: 4, n_out: 4 }),
        ];
        let x = Tensor::randn(0f32, 1.0, (6, 64), &device).unwrap();
        for spec in &specs {
            let model = spec.build(&Init::Naive, 1, &device).unwrap();
            model.set_training(false);
            let (features, logits) = penultimate(spec, model.as_ref(), &x).unwrap();
            let params = model.parameters();
            let named = |suffix: &str| {
                params
                    .iter()
                    .rev()
                    .find(|(name, _)| name.ends_with(suffix))
                    .map(|(_, v)| v.as_tensor().clone())
                    .unwrap()
            };
            let (weight, bias) = (named(".weight"), named(".bias"));
            let head = features.matmul(&weight.t().unwrap()).unwrap().broadcast_add(&bias).unwrap();
            let gap = (head - &logits).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(gap < 1e-4, "{}: head(embedding) differs from the logits by {gap}", spec.kind_name());
        }
    }
}
