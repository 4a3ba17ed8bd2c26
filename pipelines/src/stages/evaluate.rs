//! `evaluate`: the held-out test split, scored once with the trained checkpoint of
//! the stage `evaluate.model` names (`overfit` by default; a stage that picks a
//! model, like a ladder or a search, writes the chosen one as its
//! `checkpoint.safetensors` and its `val_acc`). The model is rebuilt from the
//! checkpoint's metadata, in evaluation mode: loss, accuracy, per-class accuracy, the
//! confusion matrix and the highest-loss examples. The only stage that feeds the test
//! split to a model. The scored stage is its one member (fan-in), so a target scores
//! another stage's model with the instance `evaluate[evaluate.model="..."]`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use workspace::{
    Checks, ExecError, InstanceSpec, KnobId, KnobValue, MemberLookup, StageId, StageSpec, Verdict, VerdictError,
};

use super::common::{err, json_bytes, Cx, TestAccess};
use super::{RecipeStage, Run};
use crate::data::Prepared;
use crate::ids::{knob, stage};
use crate::models::{load_state, Init, Model, ModelSpec};
use crate::render::{escape, is_image, tiles, Scale};
use crate::tensors::TensorFile;

pub struct Evaluate;

/// `evaluate.model`: the stage whose model is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoredModel {
    Overfit,
    Regularize,
    Tune,
    Squeeze,
}

impl workspace::ChoiceKnob for ScoredModel {
    const OPTIONS: &'static [&'static str] = &["overfit", "regularize", "tune", "squeeze"];

    fn from_index(index: usize) -> ScoredModel {
        ScoredModel::ALL[index]
    }
}

impl ScoredModel {
    pub const ALL: &'static [ScoredModel] =
        &[ScoredModel::Overfit, ScoredModel::Regularize, ScoredModel::Tune, ScoredModel::Squeeze];

    pub fn stage(self) -> StageId {
        match self {
            ScoredModel::Overfit => stage::OVERFIT,
            ScoredModel::Regularize => stage::REGULARIZE,
            ScoredModel::Tune => stage::TUNE,
            ScoredModel::Squeeze => stage::SQUEEZE,
        }
    }

    /// `evaluate[evaluate.model="<stage>"]`: the instance that scores this model.
    pub fn instance(self) -> InstanceSpec {
        use workspace::ChoiceKnob as _;
        let name = ScoredModel::OPTIONS[ScoredModel::ALL.iter().position(|m| *m == self).unwrap_or(0)];
        InstanceSpec::new(stage::EVALUATE, [(knob::EVALUATE_MODEL, KnobValue::Str(name.to_string()))])
    }
}

/// Examples per forward pass (bounds memory on large test splits).
const CHUNK: usize = 500;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub test_loss: f64,
    pub test_acc: f64,
    pub n_test: f64,
    /// The validation accuracy of the same checkpoint (from `overfit`), for the headline.
    pub val_acc: f64,
    /// `test_acc_class_<k>`: accuracy on the test examples of class k; for a squeeze
    /// model also `ensemble_test_acc` and `ensemble_test_loss` (its members averaged).
    #[serde(flatten)]
    pub per_class: BTreeMap<String, f64>,
}

impl RecipeStage for Evaluate {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::EVALUATE,
            version: 4,
            doc: "score the held-out test split once with the trained checkpoint",
            knobs: vec![knob::EVALUATE_WORST, knob::EVALUATE_MODEL],
            checks: vec![],
            upstream: vec![stage::DATA],
            fingerprints: vec![],
            device_dependent: true,
        }
    }

    fn member_stages(&self) -> Vec<StageId> {
        ScoredModel::ALL.iter().map(|model| model.stage()).collect()
    }

    fn members(
        &self,
        knobs: &BTreeMap<KnobId, KnobValue>,
        _known: &dyn MemberLookup,
    ) -> Result<Vec<InstanceSpec>, String> {
        use workspace::ChoiceKnob as _;
        let text = knobs.get(&knob::EVALUATE_MODEL).and_then(KnobValue::as_str).unwrap_or_default();
        let model = ScoredModel::parse(text).ok_or_else(|| format!("`evaluate.model` names no stage: \"{text}\""))?;
        Ok(vec![InstanceSpec::plain(model.stage())])
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let worst = cx.count(knob::EVALUATE_WORST)?;
        let (scored_stage, scored_output) = cx
            .exec
            .members
            .first()
            .ok_or_else(|| ExecError::Failed(format!("`{}` has no model to score", stage::EVALUATE)))?;
        let val_acc = scored_output.metrics.get("val_acc").copied().ok_or_else(|| {
            ExecError::Failed(format!("stage `{}` reports no `val_acc` for the model it chose", scored_stage.name()))
        })?;
        let bytes = cx.artifact(scored_stage.name().as_str(), scored_output, "checkpoint.safetensors")?;
        let (spec, model) = restore(cx, &bytes)?;
        let data = cx.data_with_test(TestAccess::Score)?;
        let scored = score(cx, &data, model.as_ref())?;
        let n = scored.losses.len();
        let test_loss = scored.losses.iter().sum::<f64>() / n.max(1) as f64;
        let correct = scored.predicted.iter().zip(&data.test.y).filter(|(p, y)| p == y).count();
        let test_acc = if n == 0 { f64::NAN } else { correct as f64 / n as f64 };
        let confusion = confusion(&data, &scored.predicted);
        let per_class: Vec<f64> = confusion
            .iter()
            .enumerate()
            .map(|(k, row)| {
                let total: usize = row.iter().sum();
                if total == 0 {
                    f64::NAN
                } else {
                    row[k] as f64 / total as f64
                }
            })
            .collect();
        let order = worst_first(&scored.losses, worst);
        // A squeeze stage also scores its ensemble (its members' checkpoints are named,
        // by hash, in `squeeze.json`, whose hash is in this stage's key).
        let ensemble = match scored_output.artifacts.get("squeeze.json") {
            Some(report) => {
                let bytes = cx.exec.read(&report.hash)?;
                let (x, shape) = (&data.test.x, &data.meta.shape);
                let score = super::squeeze::score_ensemble(cx.exec.store, &bytes, x, shape, &data.test.y, &cx.device)
                    .map_err(ExecError::Failed)?;
                Some(score)
            }
            None => None,
        };
        let mut headline = headline(scored_stage.stage.as_str(), spec.kind_name(), val_acc, test_acc, n);
        if let Some(score) = &ensemble {
            headline.push_str(&format!(" (student); ensemble test acc {:.4}", score.acc));
        }
        let report = report(&data, &spec, (test_loss, test_acc), &per_class, &confusion, &scored, &order);
        let mut artifacts = vec![
            ("evaluation.json".to_string(), json_bytes(&report)?),
            ("confusion.svg".to_string(), confusion_svg(&data.meta.class_names, &confusion).into_bytes()),
            ("headline.txt".to_string(), format!("{headline}\n").into_bytes()),
        ];
        if is_image(&data.meta.shape) && !order.is_empty() {
            artifacts.push(("worst.png".to_string(), worst_png(&data, &scored, &order)));
        }
        let metrics = Metrics {
            test_loss,
            test_acc,
            n_test: n as f64,
            val_acc,
            per_class: per_class
                .iter()
                .enumerate()
                .map(|(k, &acc)| (format!("test_acc_class_{k}"), acc))
                .chain(ensemble.iter().flat_map(|score| {
                    [("ensemble_test_acc".to_string(), score.acc), ("ensemble_test_loss".to_string(), score.loss)]
                }))
                .collect(),
        };
        Ok(Run { artifacts, metrics })
    }

    fn judge(&self, _metrics: &Metrics, _checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        Ok(Vec::new())
    }
}

/// `overfit: convnet, val acc 0.9213, test acc 0.9170 (10,000 examples)`.
pub fn headline(stage: &str, kind: &str, val_acc: f64, test_acc: f64, n_test: usize) -> String {
    if n_test == 0 {
        return format!("{stage}: {kind}, val acc {val_acc:.4}, no test split (data.split gives it no examples)");
    }
    format!("{stage}: {kind}, val acc {val_acc:.4}, test acc {test_acc:.4} ({} examples)", thousands(n_test))
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The model described by a checkpoint, with its parameters and buffers loaded, in
/// evaluation mode.
pub(crate) fn restore(cx: &Cx<'_, '_>, bytes: &[u8]) -> Result<(ModelSpec, Box<dyn Model>), ExecError> {
    let bad = |what: String| ExecError::Failed(format!("overfit checkpoint: {what}"));
    let file = TensorFile::decode(bytes).map_err(|e| bad(e.to_string()))?;
    let meta: Value = file.meta().map_err(|e| bad(e.to_string()))?;
    let spec = ModelSpec::from_meta(&meta).map_err(bad)?;
    let model = spec.build(&Init::Naive, 0, &cx.device).map_err(err("rebuild model"))?;
    let mut tensors = HashMap::new();
    for name in file.names() {
        let shape = file.shape(name).map_err(|e| bad(e.to_string()))?.to_vec();
        let values = file.f32(name).map_err(|e| bad(e.to_string()))?;
        let tensor = Tensor::from_vec(values, shape, &cx.device).map_err(err("checkpoint tensor"))?;
        tensors.insert(name.to_string(), tensor);
    }
    load_state(model.as_ref(), &tensors).map_err(err("load checkpoint"))?;
    model.set_training(false);
    Ok((spec, model))
}

/// Per-example loss, prediction and predicted probability over the test split.
struct Scored {
    losses: Vec<f64>,
    predicted: Vec<u32>,
    confidence: Vec<f32>,
}

fn score(cx: &Cx<'_, '_>, data: &Prepared, model: &dyn Model) -> Result<Scored, ExecError> {
    let (n, features) = (data.test.len(), data.n_features());
    let mut scored = Scored { losses: Vec::new(), predicted: Vec::new(), confidence: Vec::new() };
    for start in (0..n).step_by(CHUNK) {
        cx.exec.check_cancelled()?;
        let rows = CHUNK.min(n - start);
        let x =
            Tensor::from_slice(&data.test.x[start * features..(start + rows) * features], (rows, features), &cx.device)
                .map_err(err("test batch"))?;
        let logits: Vec<Vec<f32>> = model.forward(&x).and_then(|l| l.to_vec2()).map_err(err("forward"))?;
        for (row, &label) in logits.iter().zip(&data.test.y[start..start + rows]) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
            let log_z = f64::from(max) + sum.ln();
            let predicted = super::common::argmax(row);
            scored.losses.push(log_z - f64::from(row[label as usize]));
            scored.predicted.push(predicted);
            scored.confidence.push((f64::from(row[predicted as usize]) - log_z).exp() as f32);
        }
    }
    Ok(scored)
}

/// `confusion[true][predicted]` counts.
fn confusion(data: &Prepared, predicted: &[u32]) -> Vec<Vec<usize>> {
    let k = data.n_classes();
    let mut matrix = vec![vec![0usize; k]; k];
    for (&truth, &guess) in data.test.y.iter().zip(predicted) {
        matrix[truth as usize][guess as usize] += 1;
    }
    matrix
}

/// Indices of the `count` highest losses, highest first (ties: lower index first).
fn worst_first(losses: &[f64], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..losses.len()).collect();
    order.sort_by(|&a, &b| losses[b].total_cmp(&losses[a]).then(a.cmp(&b)));
    order.truncate(count);
    order
}

fn class_name(data: &Prepared, label: u32) -> String {
    data.meta.class_names.get(label as usize).cloned().unwrap_or_else(|| label.to_string())
}

fn report(
    data: &Prepared,
    spec: &ModelSpec,
    (loss, acc): (f64, f64),
    per_class: &[f64],
    confusion: &[Vec<usize>],
    scored: &Scored,
    order: &[usize],
) -> Value {
    let finite = |v: f64| v.is_finite().then_some(v);
    json!({
        "model": spec.kind_name(),
        "n_test": scored.losses.len(),
        "loss": finite(loss),
        "accuracy": finite(acc),
        "class_names": data.meta.class_names,
        "per_class_accuracy": per_class.iter().map(|&v| finite(v)).collect::<Vec<_>>(),
        "confusion": { "rows": "true class", "columns": "predicted class", "counts": confusion },
        "worst": order.iter().map(|&i| json!({
            "test_index": i,
            "source_index": data.test.index.get(i),
            "label": class_name(data, data.test.y[i]),
            "predicted": class_name(data, scored.predicted[i]),
            "confidence": scored.confidence[i],
            "loss": scored.losses[i],
        })).collect::<Vec<_>>(),
    })
}

/// The confusion matrix as SVG: rows are true classes, columns predicted ones;
/// darker cells hold a larger share of their row.
pub fn confusion_svg(class_names: &[String], confusion: &[Vec<usize>]) -> String {
    let k = confusion.len();
    let cell = 36;
    let label_w = class_names.iter().map(|n| n.chars().count()).max().unwrap_or(1) * 7 + 16;
    let (left, top) = (label_w + 24, label_w + 40);
    let (width, height) = (left + k * cell + 16, top + k * cell + 16);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(svg, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ = write!(
        svg,
        r#"<text x="{left}" y="14" font-size="13">confusion matrix (test split): rows true, columns predicted</text>"#
    );
    for (i, name) in class_names.iter().enumerate().take(k) {
        let name = escape(name);
        let y = top + i * cell + cell / 2 + 4;
        let _ = write!(svg, r#"<text x="{}" y="{y}" text-anchor="end">{name}</text>"#, left - 6);
        let x = left + i * cell + cell / 2 + 4;
        let _ = write!(svg, r#"<text x="{x}" y="{}" transform="rotate(-60 {x} {})">{name}</text>"#, top - 6, top - 6);
    }
    for (i, row) in confusion.iter().enumerate() {
        let total = row.iter().sum::<usize>().max(1) as f64;
        for (j, &count) in row.iter().enumerate() {
            let share = count as f64 / total;
            let level = (255.0 - share * 200.0).round() as u8;
            let fill = if i == j { format!("rgb({level},{level},255)") } else { format!("rgb(255,{level},{level})") };
            let (x, y) = (left + j * cell, top + i * cell);
            let _ =
                write!(svg, r##"<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#ccc"/>"##);
            let colour = if share > 0.6 { "white" } else { "black" };
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="middle" fill="{colour}">{count}</text>"#,
                x + cell / 2,
                y + cell / 2 + 4
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// The highest-loss test examples, each labelled `true / predicted`.
fn worst_png(data: &Prepared, scored: &Scored, order: &[usize]) -> Vec<u8> {
    let features = data.n_features();
    let cells: Vec<(&[f32], String)> = order
        .iter()
        .map(|&i| {
            let label = format!("{} / {}", class_name(data, data.test.y[i]), class_name(data, scored.predicted[i]));
            (&data.test.x[i * features..(i + 1) * features], label)
        })
        .collect();
    // Standardised inputs are drawn from -3 (black) to +3 (white), as batch_preview does.
    let scale = if crate::data::Normalize::is_standardised(&data.meta.normalize) {
        Scale { low: -3.0, high: 3.0 }
    } else {
        let values = cells.iter().flat_map(|(v, _)| v.iter().copied());
        let (low, high) = values.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
        Scale { low, high }
    };
    tiles(&cells, &data.meta.shape, scale, 8)
}
