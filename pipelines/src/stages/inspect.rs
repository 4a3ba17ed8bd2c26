//! `inspect`: become one with the data (balance, duplicates, near-duplicates, leakage,
//! corrupt values, outliers, label issues by confident learning, pictures) and judge it
//! against `checks.inspect.*`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use workspace::{Checks, ExecError, KnobId, StageSpec, Verdict, VerdictError, VerdictStatus};

use super::common::{err, json_bytes, Cx, TestAccess};
use super::{flat, RecipeStage, Run};
use crate::ids::{knob, stage};
use crate::inspect::{inspect, InspectOptions};

pub struct Inspect;

/// The audit's counts and shares (see `crate::inspect`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub imbalance_ratio: f64,
    pub n_duplicates_within: f64,
    pub n_leaked: f64,
    pub n_conflicting: f64,
    pub n_near_duplicates: f64,
    pub near_duplicate_share: f64,
    pub n_non_finite: f64,
    pub n_out_of_range: f64,
    pub n_all_zero: f64,
    pub n_constant_features: f64,
    pub constant_feature_share: f64,
    pub n_outliers: f64,
    pub outlier_share: f64,
    pub suspect_share: f64,
    /// Absent when the training split is too small for a neighbour search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_suspects: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_queries: Option<f64>,
    /// Anything else the audit measures, kept as it is.
    #[serde(flatten)]
    pub other: BTreeMap<String, f64>,
}

impl RecipeStage for Inspect {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::INSPECT,
            version: 10,
            doc: "become one with the data: balance, duplicates, leakage, corrupt values, outliers, label noise, pictures",
            knobs: vec![
                knob::INSPECT_TOP_K,
                knob::INSPECT_KNN_K,
                knob::INSPECT_KNN_QUERIES,
                knob::INSPECT_OUTLIER_Z,
                knob::DATA_SEED,
                knob::INSPECT_FOLDS,
                knob::INSPECT_NEAR_DUPLICATE_DISTANCE,
                knob::INSPECT_MAX_SELF_CONFIDENCE,
            ],
            checks: vec![
                knob::INSPECT_MAX_IMBALANCE,
                knob::INSPECT_MAX_LEAKED,
                knob::INSPECT_MAX_DUPLICATES,
                knob::INSPECT_MAX_CONFLICTING,
                knob::INSPECT_MAX_NEAR_DUPLICATE_SHARE,
                knob::INSPECT_MAX_CORRUPT,
                knob::INSPECT_MAX_CONSTANT_SHARE,
                knob::INSPECT_MAX_ALL_ZERO,
                knob::INSPECT_MAX_OUTLIER_SHARE,
                knob::INSPECT_MAX_SUSPECT_SHARE,
            ],
            upstream: vec![stage::DATA],
            fingerprints: vec![],
            device_dependent: false,
        }
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let options = InspectOptions {
            top_k: cx.count(knob::INSPECT_TOP_K)?,
            knn_k: cx.count(knob::INSPECT_KNN_K)?,
            knn_queries: cx.count(knob::INSPECT_KNN_QUERIES)?,
            outlier_z: cx.f64(knob::INSPECT_OUTLIER_Z)?,
            seed: cx.int(knob::DATA_SEED)? as u64,
            folds: cx.count(knob::INSPECT_FOLDS)?,
            near_duplicate_distance: cx.f64(knob::INSPECT_NEAR_DUPLICATE_DISTANCE)?,
            max_self_confidence: cx.f64(knob::INSPECT_MAX_SELF_CONFIDENCE)?,
            embed_dims: crate::inspect::EMBED_DIMS,
        };
        let data = cx.data_with_test(TestAccess::Audit)?;
        let inspection = inspect(&data, &options).map_err(err("inspect"))?;
        let metrics =
            flat::from_map(&inspection.metrics).map_err(|error| ExecError::Failed(format!("inspect: {error}")))?;
        let mut artifacts = vec![("report.json".to_string(), json_bytes(&inspection.report)?)];
        artifacts.extend(inspection.files);
        Ok(Run { artifacts, metrics })
    }

    fn judge(&self, m: &Metrics, checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        let mut verdicts = rules(m)
            .into_iter()
            .map(|(name, value, threshold, severity, message, hint)| {
                let expected = checks.f64(threshold)?;
                let pass = value <= expected;
                Ok(Verdict {
                    check: name.to_string(),
                    status: if pass { VerdictStatus::Pass } else { severity },
                    value,
                    expected,
                    message: format!("{message} ({})", limit_text(threshold, value, expected)),
                    hint: (!pass).then(|| hint.to_string()),
                })
            })
            .collect::<Result<Vec<_>, VerdictError>>()?;
        let (share, max_share) = (m.suspect_share, checks.f64(knob::INSPECT_MAX_SUSPECT_SHARE)?);
        verdicts.push(Verdict {
            check: "label_noise".into(),
            status: if share <= max_share { VerdictStatus::Pass } else { VerdictStatus::Warn },
            value: share,
            expected: max_share,
            message: format!(
                "{} of {} training examples look mislabelled: the audit's own out-of-fold classifier confidently gives them one other label (confident learning; {})",
                m.n_suspects.unwrap_or(f64::NAN),
                m.knn_queries.unwrap_or(f64::NAN),
                limit_text(knob::INSPECT_MAX_SUSPECT_SHARE, share, max_share)
            ),
            hint: (share > max_share).then(|| {
                "look at suspects.png (each with its suggested label and neighbours), label_noise and label_issues in report.json".to_string()
            }),
        });
        Ok(verdicts)
    }
}

/// The limit a measurement is held to, in words with its direction: "at most 5
/// allowed", or for a share "0.6% of them, at most 5.0% allowed".
fn limit_text(threshold: KnobId, value: f64, limit: f64) -> String {
    if threshold.as_str().ends_with("share") {
        format!("{:.1}% of them, at most {:.1}% allowed", value * 100.0, limit * 100.0)
    } else if limit.fract() == 0.0 {
        format!("at most {limit:.0} allowed")
    } else {
        format!("at most {limit} allowed")
    }
}

/// One threshold rule: (check, measured, threshold knob, fail or warn, message, hint).
type Rule = (&'static str, f64, KnobId, VerdictStatus, String, &'static str);

/// The count and share rules, each `measured <= threshold`.
fn rules(m: &Metrics) -> [Rule; 10] {
    use VerdictStatus::{Fail, Warn};
    [
        (
            "class_balance",
            m.imbalance_ratio,
            knob::INSPECT_MAX_IMBALANCE,
            Warn,
            format!("largest/smallest training class count is {:.2}", m.imbalance_ratio),
            "re-weight the loss or resample, and judge the model by per-class metrics",
        ),
        (
            "leakage",
            m.n_leaked,
            knob::INSPECT_MAX_LEAKED,
            Fail,
            format!("{} val/test examples are exact copies of examples in another split", m.n_leaked),
            "deduplicate before splitting; report.json lists the copies under duplicates.cross_split",
        ),
        (
            "duplicates",
            m.n_duplicates_within,
            knob::INSPECT_MAX_DUPLICATES,
            Warn,
            format!("{} exact duplicates within splits", m.n_duplicates_within),
            "duplicates over-weight some examples; report.json lists them under duplicates.within_split",
        ),
        (
            "conflicting_labels",
            m.n_conflicting,
            knob::INSPECT_MAX_CONFLICTING,
            Fail,
            format!("{} examples have an identical twin with a different label", m.n_conflicting),
            "fix the labels of duplicates.conflicting_labels in report.json",
        ),
        (
            "near_duplicates",
            m.near_duplicate_share,
            knob::INSPECT_MAX_NEAR_DUPLICATE_SHARE,
            Warn,
            format!("{} val/test examples nearly duplicate a training example", m.n_near_duplicates),
            "near copies inflate validation scores: look at near_duplicates in report.json",
        ),
        (
            "corrupt_values",
            m.n_non_finite,
            knob::INSPECT_MAX_CORRUPT,
            Fail,
            format!("{} examples hold NaN or Inf", m.n_non_finite),
            "fix or drop the examples listed under non_finite in report.json",
        ),
        (
            "value_range",
            m.n_out_of_range,
            knob::INSPECT_MAX_CORRUPT,
            Fail,
            format!("{} examples hold values outside the format's range", m.n_out_of_range),
            "check the decoding of the examples listed under out_of_range",
        ),
        (
            "constant_features",
            m.constant_feature_share,
            knob::INSPECT_MAX_CONSTANT_SHARE,
            Warn,
            format!("{} features are constant on the training split", m.n_constant_features),
            "constant features carry no signal; check the loader, or drop them",
        ),
        (
            "all_zero",
            m.n_all_zero,
            knob::INSPECT_MAX_ALL_ZERO,
            Warn,
            format!("{} examples are all zeros", m.n_all_zero),
            "all-zero inputs are often failed reads: look at all_zero in report.json",
        ),
        (
            "outliers",
            m.outlier_share,
            knob::INSPECT_MAX_OUTLIER_SHARE,
            Warn,
            format!("{} examples have a robust z-score above the outlier threshold", m.n_outliers),
            "look at outliers.png and the outliers in report.json",
        ),
    ]
}
