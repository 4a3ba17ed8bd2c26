//! The trials as tables: `trials.json`, `trials.csv`, and `best.toml` (the best
//! trial's knobs as a `pipe.toml` snippet).

use std::collections::BTreeMap;

use serde_json::{json, Value};
use workspace::{KnobId, KnobValue, StageOutput};

use crate::ids::knob;
use crate::tune::importance::Importance;

/// The metrics of a trial that the tables show, in column order.
pub const METRICS: [&str; 4] = ["val_acc", "val_loss", "train_acc", "train_loss"];

/// One trial at one rung, with its result.
#[derive(Debug, Clone)]
pub struct Row {
    pub trial: usize,
    pub rung: usize,
    pub steps: u64,
    /// The searched knobs' values, in space order.
    pub knobs: Vec<(KnobId, KnobValue)>,
    pub output: StageOutput,
}

impl Row {
    pub fn metric(&self, name: &str) -> f64 {
        self.output.metrics.get(name).copied().unwrap_or(f64::NAN)
    }

    /// Seconds of training, when the trial's stage records them.
    pub fn secs(&self) -> Option<f64> {
        self.output.metrics.get("secs").copied()
    }

    fn json(&self) -> Value {
        let knobs: serde_json::Map<String, Value> =
            self.knobs.iter().map(|(k, v)| (k.to_string(), v.to_json())).collect();
        let metrics: serde_json::Map<String, Value> =
            METRICS.iter().map(|name| (name.to_string(), number(self.metric(name)))).collect();
        let mut row =
            json!({"trial": self.trial, "rung": self.rung, "steps": self.steps, "knobs": knobs, "metrics": metrics});
        if let Some(secs) = self.secs() {
            row["secs"] = number(secs);
        }
        row
    }
}

/// A JSON number, or null for NaN and infinities (JSON has none).
fn number(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

/// What `trials.json` records besides the rows.
pub struct Summary<'a> {
    pub space: &'a [String],
    pub seed: u64,
    pub rungs: &'a [u64],
    pub untuned: &'a Row,
    pub best: &'a Row,
    pub importance: &'a [(KnobId, Importance)],
}

pub fn trials_json(rows: &[Row], summary: &Summary<'_>) -> Value {
    let importance: Vec<Value> = summary
        .importance
        .iter()
        .map(|(knob, imp)| {
            json!({"knob": knob.to_string(), "share": imp.share.map(number), "eta_squared": imp.eta_squared.map(number), "groups": imp.groups})
        })
        .collect();
    json!({
        "metric": "val_acc",
        "seed": summary.seed,
        "space": summary.space,
        "rungs": summary.rungs,
        "untuned": {"steps": summary.untuned.steps, "metrics": summary.untuned.json()["metrics"]},
        "best": {"trial": summary.best.trial, "steps": summary.best.steps},
        "importance": importance,
        "trials": rows.iter().map(Row::json).collect::<Vec<_>>(),
    })
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// `trial,rung,steps,<knobs>,<metrics>[,secs]`, one line per trial and rung.
pub fn trials_csv(rows: &[Row], knobs: &[KnobId]) -> String {
    let with_secs = rows.iter().any(|row| row.secs().is_some());
    let mut header: Vec<String> = ["trial", "rung", "steps"].iter().map(|s| s.to_string()).collect();
    header.extend(knobs.iter().map(|k| field(k.as_str())));
    header.extend(METRICS.iter().map(|m| m.to_string()));
    if with_secs {
        header.push("secs".into());
    }
    let mut text = header.join(",") + "\n";
    for row in rows {
        let mut cells = vec![row.trial.to_string(), row.rung.to_string(), row.steps.to_string()];
        for knob in knobs {
            let value = row.knobs.iter().find(|(k, _)| k == knob).map(|(_, v)| plain(v)).unwrap_or_default();
            cells.push(field(&value));
        }
        cells.extend(METRICS.iter().map(|m| format!("{:?}", row.metric(m))));
        if with_secs {
            cells.push(row.secs().map(|s| format!("{s:?}")).unwrap_or_default());
        }
        text += &(cells.join(",") + "\n");
    }
    text
}

/// A value as a CSV cell: strings without their TOML quotes.
fn plain(value: &KnobValue) -> String {
    value.as_str().map_or_else(|| value.to_toml(), str::to_string)
}

/// The best trial's knobs (and its budget) as `pipe.toml` sections.
pub fn best_toml(best: &Row, trials: usize) -> String {
    let mut sections: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let steps = (knob::TRAIN_STEPS, KnobValue::Int(best.steps as i64));
    for (knob, value) in best.knobs.iter().chain(std::iter::once(&steps)) {
        let (section, leaf) = knob.as_str().rsplit_once('.').unwrap_or(("", knob.as_str()));
        sections.entry(section).or_default().push(format!("{leaf} = {}", value.to_toml()));
    }
    let mut text = format!(
        "# The best of {trials} trials: trial {} (val_acc {:.4}, val_loss {:.4} after {} steps).\n\
         # Paste into pipe.toml, or pass each line as --set SECTION.KEY=VALUE.\n",
        best.trial,
        best.metric("val_acc"),
        best.metric("val_loss"),
        best.steps
    );
    for (section, mut lines) in sections {
        lines.sort();
        text += &format!("\n[{section}]\n{}\n", lines.join("\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use workspace::Float;

    use super::*;

    fn row(trial: usize, lr: f64, acc: f64) -> Row {
        let metrics = BTreeMap::from([("val_acc".to_string(), acc), ("val_loss".to_string(), f64::NAN)]);
        Row {
            trial,
            rung: 0,
            steps: 50,
            knobs: vec![
                (knob::TRAIN_LR, KnobValue::Float(Float(lr))),
                (knob::MODEL_HIDDEN, KnobValue::IntList(vec![32, 32])),
                (knob::TRAIN_OPTIMIZER, KnobValue::Str("sgd".into())),
            ],
            output: StageOutput::new(BTreeMap::new(), metrics),
        }
    }

    #[test]
    fn csv_quotes_lists_and_writes_nan() {
        let csv = trials_csv(&[row(3, 1e-3, 0.9)], &[knob::TRAIN_LR, knob::MODEL_HIDDEN, knob::TRAIN_OPTIMIZER]);
        assert_eq!(
            csv,
            "trial,rung,steps,train.lr,model.hidden,train.optimizer,val_acc,val_loss,train_acc,train_loss\n\
             3,0,50,0.001,\"[32, 32]\",sgd,0.9,NaN,NaN,NaN\n"
        );
    }

    #[test]
    fn best_toml_parses_back_into_the_trials_knobs() {
        let best = row(7, 2.5e-3, 0.97);
        let text = best_toml(&best, 16);
        let schema = crate::knobs::schema();
        let config = workspace::Config::parse(&schema, &text, "best.toml").unwrap();
        for (knob, value) in &best.knobs {
            assert_eq!(config.get(knob.as_str()), Some(value), "{text}");
        }
        assert_eq!(config.get("train.steps"), Some(&KnobValue::Int(50)));
        assert!(text.starts_with("# The best of 16 trials: trial 7 (val_acc 0.9700"), "{text}");
    }
}
