//! `human_baseline`: agreement of a second annotation (`data.human_labels`: CSV of
//! `split,index,label`) with the labels; "not provided" without the file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::json;
use workspace::{Checks, ExecError, StageSpec, Verdict, VerdictError};

use super::common::{json_bytes, Cx, TestAccess};
use super::{RecipeStage, Run};
use crate::data::Prepared;
use crate::ids::{knob, stage};
use crate::sources::read_human_labels;

pub struct HumanBaseline {
    /// The directory of `pipe.toml`: the labels file's path starts here.
    pub base_dir: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// 1 when `data.human_labels` names a file, else 0 (and nothing else is measured).
    pub provided: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub human_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_human: Option<f64>,
}

impl RecipeStage for HumanBaseline {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::HUMAN_BASELINE,
            version: 1,
            doc: "agreement of a second annotation (data.human_labels) with the labels",
            knobs: vec![knob::DATA_HUMAN_LABELS],
            checks: vec![],
            upstream: vec![stage::DATA],
            fingerprints: vec!["human_labels"],
            device_dependent: false,
        }
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let file = cx.text(knob::DATA_HUMAN_LABELS)?;
        if file.is_empty() {
            let report =
                json!({ "status": "not provided", "how": "set data.human_labels to a CSV of split,index,label" });
            return Ok(Run {
                artifacts: vec![("human_baseline.json".into(), json_bytes(&report)?)],
                metrics: Metrics { provided: 0.0, human_acc: None, n_human: None },
            });
        }
        let data = cx.data_with_test(TestAccess::Audit)?;
        let path = self.base_dir.join(file);
        let rows =
            read_human_labels(&path, &data.meta.class_names).map_err(|error| ExecError::BadInput(error.to_string()))?;
        let (agree, disagreements) = compare(&data, &path, &rows)?;
        let accuracy = agree as f64 / rows.len().max(1) as f64;
        let report =
            json!({ "status": "provided", "n": rows.len(), "agreement": accuracy, "disagreements": disagreements });
        Ok(Run {
            artifacts: vec![("human_baseline.json".into(), json_bytes(&report)?)],
            metrics: Metrics { provided: 1.0, human_acc: Some(accuracy), n_human: Some(rows.len() as f64) },
        })
    }

    fn judge(&self, _metrics: &Metrics, _checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        Ok(Vec::new())
    }
}

/// How many rows agree with the labels, and the first 100 that do not.
fn compare(
    data: &Prepared,
    path: &std::path::Path,
    rows: &[(usize, String, usize, u32)],
) -> Result<(usize, Vec<serde_json::Value>), ExecError> {
    let mut agree = 0usize;
    let mut disagreements = Vec::new();
    for (line, split, index, label) in rows {
        let labels = match split.as_str() {
            "train" => &data.train.y,
            "val" => &data.val.y,
            "test" => &data.test.y,
            other => {
                return Err(ExecError::BadInput(format!(
                    "{}:{line}:1: split `{other}` is not train, val or test",
                    path.display()
                )))
            }
        };
        let Some(&truth) = labels.get(*index) else {
            return Err(ExecError::BadInput(format!(
                "{}:{line}:2: index {index} is past the end of the {split} split ({} examples)",
                path.display(),
                labels.len()
            )));
        };
        if truth == *label {
            agree += 1;
        } else if disagreements.len() < 100 {
            disagreements.push(json!({ "split": split, "index": index, "label": truth, "human": label }));
        }
    }
    Ok((agree, disagreements))
}
