//! What the ladder's rungs bought: the table (`ladder.json`, `ladder.txt`), the
//! validation curves (`curves.svg`), the best rung's knobs (`best.toml`) and its
//! checkpoint, and the verdicts over them. The best rung is the one with the lowest
//! validation loss (what early stopping minimises, and a finer measure than
//! accuracy on a small validation split), or with `regularize.select = "val_acc"` the
//! highest validation accuracy (then the lower loss): the two can disagree, since a
//! change that makes the model less confident can lower loss and accuracy together.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::json;
use workspace::{ExecError, KnobValue, StageOutput, Verdict, VerdictStatus};

use super::rungs::Rung;
use crate::plot::Curves;
use crate::render::{charts_svg, Panel, Series, PALETTE};
use crate::stages::common::json_bytes;

/// `regularize.select`: what makes a rung the best.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    ValLoss,
    ValAcc,
}

impl workspace::ChoiceKnob for Select {
    const OPTIONS: &'static [&'static str] = &["val_loss", "val_acc"];

    fn from_index(index: usize) -> Select {
        [Select::ValLoss, Select::ValAcc][index]
    }
}

impl Select {
    /// Whether `a` is strictly better than `b`.
    fn better(self, a: &Row, b: &Row) -> bool {
        match self {
            Select::ValLoss => a.val_loss < b.val_loss,
            Select::ValAcc => a.val_acc > b.val_acc || (a.val_acc == b.val_acc && a.val_loss < b.val_loss),
        }
    }
}

/// The ladder's metrics: the best rung's numbers (what `evaluate` and the headline
/// read), rung 0's for comparison, and one entry per later rung named after its
/// change: `rung 2: dropout: model.dropout=0.1` = its validation loss minus the
/// previous rung's (positive: the change made validation worse).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub val_acc: f64,
    pub val_loss: f64,
    pub train_acc: f64,
    pub train_loss: f64,
    pub best_rung: f64,
    pub best_step: f64,
    pub rungs: f64,
    /// Rung 0: the configured model, early stopped, nothing else changed.
    pub base_val_loss: f64,
    pub base_val_acc: f64,
    /// 1 when the best rung is the most accurate one (`regularize.select = "val_acc"`).
    pub selected_by_acc: f64,
    #[serde(flatten)]
    pub deltas: BTreeMap<String, f64>,
}

/// One rung's result, as `ladder.json` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub rung: usize,
    pub change: String,
    pub instance: String,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    /// Against the rung before (none for rung 0).
    pub delta_val_loss: Option<f64>,
    pub delta_val_acc: Option<f64>,
    pub best_step: f64,
    pub stopped_step: f64,
}

fn metric(output: &StageOutput, name: &str) -> Result<f64, ExecError> {
    output.metrics.get(name).copied().ok_or_else(|| ExecError::Failed(format!("a ladder rung has no metric `{name}`")))
}

/// The table: one row per rung, in ladder order.
pub fn rows(rungs: &[Rung], members: &[(workspace::InstanceSpec, StageOutput)]) -> Result<Vec<Row>, ExecError> {
    if rungs.len() != members.len() || rungs.is_empty() {
        return Err(ExecError::Failed(format!("{} rungs but {} member results", rungs.len(), members.len())));
    }
    let mut rows: Vec<Row> = Vec::with_capacity(rungs.len());
    for (i, (rung, (instance, output))) in rungs.iter().zip(members).enumerate() {
        let (val_loss, val_acc) = (metric(output, "val_loss")?, metric(output, "val_acc")?);
        let previous = rows.last();
        rows.push(Row {
            rung: i,
            change: rung.change.clone(),
            instance: instance.name().to_string(),
            train_loss: metric(output, "train_loss")?,
            train_acc: metric(output, "train_acc")?,
            val_loss,
            val_acc,
            delta_val_loss: previous.map(|p| val_loss - p.val_loss),
            delta_val_acc: previous.map(|p| val_acc - p.val_acc),
            best_step: metric(output, "best_step")?,
            stopped_step: metric(output, "stopped_step")?,
        });
    }
    Ok(rows)
}

/// The best rung by `select` (the first of equals).
pub fn best(rows: &[Row], select: Select) -> usize {
    rows.iter().enumerate().fold(0, |best, (i, row)| if select.better(row, &rows[best]) { i } else { best })
}

pub fn metrics(rows: &[Row], select: Select) -> Metrics {
    let b = &rows[best(rows, select)];
    let deltas = rows
        .iter()
        .filter_map(|row| Some((format!("rung {}: {}", row.rung, row.change), row.delta_val_loss?)))
        .collect();
    Metrics {
        val_acc: b.val_acc,
        val_loss: b.val_loss,
        train_acc: b.train_acc,
        train_loss: b.train_loss,
        best_rung: b.rung as f64,
        best_step: b.best_step,
        rungs: rows.len() as f64,
        base_val_loss: rows[0].val_loss,
        base_val_acc: rows[0].val_acc,
        selected_by_acc: f64::from(u8::from(select == Select::ValAcc)),
        deltas,
    }
}

pub fn ladder_json(rows: &[Row], best: usize) -> Result<Vec<u8>, ExecError> {
    json_bytes(&json!({ "best_rung": best, "rungs": rows }))
}

/// The table as fixed-width text (the report shows it as is).
pub fn ladder_text(rows: &[Row], best: usize) -> String {
    let signed = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:+.4}"));
    let mut text =
        String::from("rung  train loss  train acc  val loss  val acc  d val loss  d val acc  best step  change\n");
    for row in rows {
        let _ = writeln!(
            text,
            "{:<4}  {:>10.4}  {:>9.4}  {:>8.4}  {:>7.4}  {:>10}  {:>9}  {:>9}  {}{}",
            row.rung,
            row.train_loss,
            row.train_acc,
            row.val_loss,
            row.val_acc,
            signed(row.delta_val_loss),
            signed(row.delta_val_acc),
            row.best_step,
            row.change,
            if row.rung == best { "  <- best" } else { "" },
        );
    }
    text
}

/// `curves.svg`: every rung's validation loss on one panel, then one panel per rung
/// with its training and validation loss (the gap each change closes).
pub fn curves_svg(rows: &[Row], curves: &[Option<Curves>]) -> String {
    let points = |curves: &Curves, name: &str| -> Vec<(f64, f64)> {
        let values = curves.series.get(name).map(Vec::as_slice).unwrap_or_default();
        curves.step.iter().zip(values).filter_map(|(&s, v)| Some((s, (*v)?))).collect()
    };
    let overlay: Vec<Series> = rows
        .iter()
        .zip(curves)
        .filter_map(|(row, c)| {
            let color = PALETTE[row.rung % PALETTE.len()];
            Some(Series { name: format!("rung {}", row.rung), color, points: points(c.as_ref()?, "val_loss") })
        })
        .collect();
    let mut panels = vec![Panel::steps("validation loss of every rung", "cross-entropy (nats)", overlay).log_y()];
    for (row, c) in rows.iter().zip(curves) {
        let Some(c) = c else { continue };
        let series = vec![
            Series { name: "train".into(), color: PALETTE[0], points: points(c, "train_loss") },
            Series { name: "val".into(), color: PALETTE[1], points: points(c, "val_loss") },
        ];
        let title = format!("rung {}: {}", row.rung, row.change);
        panels.push(Panel::steps(&title, "cross-entropy (nats)", series).log_y());
    }
    charts_svg(&panels)
}

/// `best.toml`: the best rung's overrides as a `pipe.toml` snippet, by section.
pub fn best_toml(rows: &[Row], best: usize, overrides: &[(workspace::KnobId, KnobValue)]) -> String {
    let b = &rows[best];
    let mut text = format!(
        "# The best rung of the regularization ladder: rung {} ({}),\n# validation loss {:.4}, accuracy {:.4}. Add to pipe.toml.\n",
        b.rung, b.change, b.val_loss, b.val_acc
    );
    let mut sections: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (knob, value) in overrides {
        let (section, key) = knob.as_str().rsplit_once('.').unwrap_or(("", knob.as_str()));
        sections.entry(section).or_default().push(format!("{key} = {}", value.to_toml()));
    }
    for (section, lines) in sections {
        let _ = write!(text, "\n[{section}]\n{}\n", lines.join("\n"));
    }
    text
}

/// `each_rung_helps` (warns naming every change that raised validation loss) and
/// `beats_overfit` (the best rung must beat rung 0, the unregularized model).
pub fn verdicts(m: &Metrics) -> Vec<Verdict> {
    let worse: Vec<(&String, f64)> = m.deltas.iter().filter(|(_, d)| **d > 0.0).map(|(k, d)| (k, *d)).collect();
    let listed: Vec<String> = worse.iter().map(|(k, d)| format!("{k} (validation loss {d:+.4})")).collect();
    let helps = Verdict {
        check: "each_rung_helps".into(),
        status: if worse.is_empty() { VerdictStatus::Pass } else { VerdictStatus::Warn },
        value: worse.len() as f64,
        expected: 0.0,
        message: if worse.is_empty() {
            format!("each of the {} changes lowered validation loss", m.deltas.len())
        } else {
            format!("{} made validation worse", listed.join("; "))
        },
        hint: (!worse.is_empty()).then(|| {
            "complexify only one at a time: drop that change from regularize.rungs or give it another value".into()
        }),
    };
    let by_acc = m.selected_by_acc > 0.0;
    let gain = if by_acc { m.val_acc - m.base_val_acc } else { m.base_val_loss - m.val_loss };
    let beats = gain > 0.0;
    let beats_overfit = Verdict {
        check: "beats_overfit".into(),
        status: if beats { VerdictStatus::Pass } else { VerdictStatus::Warn },
        value: gain,
        expected: 0.0,
        message: if by_acc {
            format!(
                "best rung {} by accuracy has validation accuracy {:.4} (loss {:.4}), the unregularized rung 0 {:.4} (loss {:.4})",
                m.best_rung, m.val_acc, m.val_loss, m.base_val_acc, m.base_val_loss
            )
        } else {
            format!(
                "best rung {} has validation loss {:.4} (accuracy {:.4}), the unregularized rung 0 {:.4} (accuracy {:.4}){}",
                m.best_rung,
                m.val_loss,
                m.val_acc,
                m.base_val_loss,
                m.base_val_acc,
                if m.val_acc < m.base_val_acc { ": lower loss, lower accuracy (regularize.select = \"val_acc\" picks by accuracy)" } else { "" }
            )
        },
        hint: (!beats).then(|| {
            "no rung beat the unregularized model: try other changes (more data, augmentation, a pretrained model via model.init_from)".into()
        }),
    };
    vec![helps, beats_overfit]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rung: usize, val_loss: f64, previous: Option<f64>) -> Row {
        Row {
            rung,
            change: format!("change {rung}"),
            instance: format!("overfit[{rung}]"),
            train_loss: 0.1,
            train_acc: 0.99,
            val_loss,
            val_acc: 1.0 - val_loss,
            delta_val_loss: previous.map(|p| val_loss - p),
            delta_val_acc: previous.map(|p| p - val_loss),
            best_step: 100.0,
            stopped_step: 200.0,
        }
    }

    #[test]
    fn a_rung_that_hurts_warns_naming_its_change() {
        let rows = vec![row(0, 0.30, None), row(1, 0.25, Some(0.30)), row(2, 0.28, Some(0.25))];
        assert_eq!(best(&rows, Select::ValLoss), 1);
        let m = metrics(&rows, Select::ValLoss);
        assert_eq!((m.best_rung, m.val_loss, m.base_val_loss), (1.0, 0.25, 0.30));
        let verdicts = verdicts(&m);
        assert_eq!(verdicts[0].status, VerdictStatus::Warn);
        assert!(verdicts[0].message.contains("rung 2: change 2 (validation loss +0.0300)"), "{}", verdicts[0].message);
        assert!(verdicts[0].hint.as_deref().unwrap().starts_with("complexify only one at a time"));
        assert_eq!(verdicts[1].status, VerdictStatus::Pass);
        // The metrics survive the flat map that verdicts read.
        let flat = crate::stages::flat::to_map(&m).unwrap();
        let back: Metrics = crate::stages::flat::from_map(&flat).unwrap();
        assert_eq!(back.deltas, m.deltas);
        assert!(ladder_text(&rows, 1).lines().nth(2).unwrap().ends_with("change 1  <- best"));
    }

    #[test]
    fn no_better_rung_warns() {
        let rows = vec![row(0, 0.20, None), row(1, 0.25, Some(0.20))];
        let verdicts = verdicts(&metrics(&rows, Select::ValLoss));
        assert_eq!((verdicts[0].status, verdicts[1].status), (VerdictStatus::Warn, VerdictStatus::Warn));
    }

    #[test]
    fn loss_and_accuracy_can_pick_different_rungs() {
        // Rung 1 has the lower loss, rung 2 the higher accuracy.
        let mut rows = vec![row(0, 0.30, None), row(1, 0.24, Some(0.30)), row(2, 0.26, Some(0.24))];
        rows[0].val_acc = 0.91;
        rows[1].val_acc = 0.90;
        rows[2].val_acc = 0.92;
        assert_eq!((best(&rows, Select::ValLoss), best(&rows, Select::ValAcc)), (1, 2));
        let by_loss = verdicts(&metrics(&rows, Select::ValLoss));
        assert_eq!(by_loss[1].status, VerdictStatus::Pass);
        assert!(by_loss[1].message.contains("lower loss, lower accuracy"), "{}", by_loss[1].message);
        let by_acc = metrics(&rows, Select::ValAcc);
        assert_eq!((by_acc.best_rung, by_acc.val_acc), (2.0, 0.92));
        let verdict = &verdicts(&by_acc)[1];
        assert_eq!(verdict.status, VerdictStatus::Pass);
        assert!((verdict.value - 0.01).abs() < 1e-12, "{verdict:?}");
        // Ties on accuracy go to the lower loss.
        rows[1].val_acc = 0.92;
        assert_eq!(best(&rows, Select::ValAcc), 1);
    }

    #[test]
    fn best_toml_groups_knobs_by_section() {
        let rows = vec![row(0, 0.2, None)];
        let overrides = vec![
            (crate::ids::knob::AUGMENT_CROP_PAD, KnobValue::Int(2)),
            (crate::ids::knob::MODEL_DROPOUT, KnobValue::Float(workspace::Float(0.1))),
            (crate::ids::knob::TRAIN_EARLY_STOPPING, KnobValue::Bool(true)),
        ];
        let text = best_toml(&rows, 0, &overrides);
        assert!(
            text.ends_with("\n[augment]\ncrop_pad = 2\n\n[model]\ndropout = 0.1\n\n[train]\nearly_stopping = true\n"),
            "{text}"
        );
        let schema = crate::knobs::schema();
        workspace::Config::parse(&schema, &text, "best.toml").unwrap();
    }
}
