//! With the model's eyes (issue 15, item 3): confident learning rerun in a trained
//! model's penultimate-layer embedding. The `label_issues` stage hands over each
//! training example's head input (what the last layer sees) and the model's own class
//! probabilities; here the embedding is scaled to unit length per example (cosine
//! neighbours: ReLU features differ in scale more than in direction), projected to
//! `embed_dims` when wider (seeded), searched for out-of-fold neighbours exactly as the
//! input-space audit does, and judged by the same confident learning (`confident.rs`).
//!
//! Why neighbours and not the model's own predictions: the model was trained on these
//! very labels, so after enough steps it predicts the wrong label of a flipped example
//! it has memorised. Its embedding still places the example among the examples it
//! looks like, which vote from other folds. The model's probability of the given label
//! is reported beside each issue and breaks ties in the ranking (lower first). On
//! digits with 10% of the ones labelled seven, an MLP trained 3,000 steps agrees with
//! every training label, memorised flips included (in-sample confident learning on its
//! predictions finds none), while its penultimate-layer neighbours flag 5 examples, all
//! of them planted.

use candle_core::Tensor;
use serde::Serialize;
use serde_json::{json, Value};

use super::confident::Filter;
use super::embed::{self, EmbedSpec};
use super::label_issues::{self, LabelAudit, LabelIssue};
use super::neighbours::{self, Search};
use super::{explain, picture_scale, views, MIN_SUGGESTED_CONFIDENCE};
use crate::data::Prepared;
use crate::render::is_image;

/// Knobs of the audit in the model's embedding (the `inspect` stage's own).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEyesOptions {
    pub top_k: usize,
    pub knn_k: usize,
    pub knn_queries: usize,
    pub folds: usize,
    pub seed: u64,
    pub max_self_confidence: f64,
    pub embed_dims: usize,
}

/// What the trained model says about the training split, row by row.
pub struct ModelView {
    /// `n_train` rows of `width` values: the head input of each training example.
    pub embedding: Vec<f32>,
    pub width: usize,
    /// The model's class probabilities for each training example.
    pub probabilities: Vec<Vec<f32>>,
}

/// One issue as the report lists it: the neighbour finding plus the model's own word.
#[derive(Debug, Clone, Serialize)]
pub struct ModelIssue {
    #[serde(flatten)]
    pub issue: LabelIssue,
    /// The model's predicted class for the example.
    pub model_label: u32,
    /// The model's probability of the example's given label.
    pub model_confidence_in_label: f64,
}

pub struct ModelAudit {
    pub labels: LabelAudit,
    /// The issues in rank order, with the model's predictions.
    pub issues: Vec<ModelIssue>,
    /// Share of training examples whose given label the model predicts.
    pub agreement: f64,
    pub report: Value,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Caps the listed issues; the metrics hold the full count.
const MAX_LISTED: usize = 100;

/// Confident learning over out-of-fold neighbours in `model`'s embedding of `data`'s
/// training split.
pub fn audit(data: &Prepared, model: ModelView, options: &ModelEyesOptions) -> Result<ModelAudit, candle_core::Error> {
    let views = views(data);
    let train = &views[0];
    let n_train = train.split.len();
    let width = model.width.max(1);
    let mut unit = model.embedding;
    for row in unit.chunks_mut(width) {
        let norm = row.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v = (f64::from(*v) / norm) as f32);
        }
    }
    let shape = [width];
    let spec = EmbedSpec { shape: &shape, unit_range: None, dims: options.embed_dims, seed: options.seed };
    let embedding: Tensor = embed::project(unit, n_train, &spec)?;
    let fold = label_issues::folds(n_train, options.folds, options.seed);
    let k_vote = options.knn_k.min(n_train.saturating_sub(n_train.div_ceil(options.folds.max(1))));
    let found = neighbours::search(&embedding, &Search { n_train, fold: &fold, k_vote, k_any: 0 })?;
    let audited = label_issues::audited_rows(n_train, options.knn_queries, options.seed);
    let filter = Filter {
        max_self_confidence: options.max_self_confidence,
        min_suggested_confidence: MIN_SUGGESTED_CONFIDENCE,
        excess_factor: 0.0,
    };
    let mut labels = label_issues::audit(train, &found.votes, &audited, data.n_classes(), &filter);

    let in_label = |issue: &LabelIssue| -> f64 {
        let p = &model.probabilities[issue.example.index];
        p.get(issue.example.label as usize).map_or(0.0, |&v| f64::from(v))
    };
    // Most contradicted first: the largest lead of the suggested label over the given
    // one among the voters, then the model's own doubt about the given label.
    let margin = |issue: &LabelIssue| issue.self_confidence - issue.suggested_confidence;
    labels.issues.sort_by(|a, b| {
        margin(a)
            .total_cmp(&margin(b))
            .then(in_label(a).total_cmp(&in_label(b)))
            .then(a.example.index.cmp(&b.example.index))
    });
    let issues: Vec<ModelIssue> = labels
        .issues
        .iter()
        .map(|issue| ModelIssue {
            issue: issue.clone(),
            model_label: crate::stages::common::argmax(&model.probabilities[issue.example.index]),
            model_confidence_in_label: in_label(issue),
        })
        .collect();
    let agreeing =
        model.probabilities.iter().zip(&train.split.y).filter(|(p, &y)| crate::stages::common::argmax(p) == y).count();
    let agreement = agreeing as f64 / n_train.max(1) as f64;

    let report = json!({
        "method": "confident learning on out-of-fold kNN votes in the trained model's penultimate-layer embedding (unit length, seeded projection): own label at most max_self_confidence, another label a majority",
        "embedding_width": model.width,
        "embedding_dims": embedding.dims2()?.1,
        "n_audited": labels.n_audited,
        "n_issues": labels.issues.len(),
        "model_agreement": agreement,
        "thresholds": labels.thresholds,
        "confident_joint": labels.confident_joint,
        "noise_rate": labels.noise_rate,
        "estimated_noise_rate": labels.estimated_noise,
        "issues": issues.iter().take(MAX_LISTED).collect::<Vec<_>>(),
    });
    let mut files = vec![(
        "confident_joint.svg".to_string(),
        explain::confident_joint_svg(&labels, &data.meta.class_names).into_bytes(),
    )];
    if is_image(&data.meta.shape) {
        let picture = explain::Picture {
            views: &views,
            shape: &data.meta.shape,
            scale: picture_scale(data),
            names: &data.meta.class_names,
        };
        if let Some(png) = picture.label_issues(&labels.issues, options.top_k) {
            files.push(("label_issues.png".to_string(), png));
        }
    }
    Ok(ModelAudit { labels, issues, agreement, report, files })
}
