//! `regularize.rungs`: the ladder as a list of strings, each one change on top of
//! the rung before. A rung is either assignments, `knob=value` separated by commas
//! (commas inside `[...]` or quotes belong to the value:
//! `"model.hidden=[256, 256],train.steps=6000"`), or one word of a small vocabulary
//! that picks the change for the data and model at hand:
//!
//! | word | images | tabular (csv) |
//! |---|---|---|
//! | `augment` | `augment.crop_pad=1` (8x8 digits) or `=2` | `augment.noise=0.1` |
//! | `dropout` | `model.dropout` 0.1 higher than configured (spatial on conv layers, units on dense ones), at most 0.5 | 0.2 higher, at most 0.5 |
//! | `weight_decay` | adam(w): `train.optimizer="adamw",train.weight_decay=0.05`; sgd: `train.weight_decay=0.0005` | same |
//! | `larger` | twice the width (`model.hidden`, `model.channels` and `model.dense`, or `model.width`) and twice `train.steps`: early stopping picks the step | same |
//! | `downscale` | `data.downscale=2` | (an error) |
//! | `smaller_batch` | half `train.batch_size` | same |
//!
//! Rung 0 is the configured `overfit` with no change. Every rung trains with
//! `train.early_stopping = true`.

use std::collections::{BTreeMap, BTreeSet};

use workspace::{Config, InstanceSpec, KnobId, KnobSpec, KnobValue};

use crate::ids::{knob, stage};

/// The default ladder: valid for image and tabular data alike.
pub const DEFAULT_RUNGS: [&str; 4] = ["augment", "dropout", "weight_decay", "larger"];

/// The vocabulary's words.
pub const WORDS: [&str; 6] = ["augment", "dropout", "weight_decay", "larger", "downscale", "smaller_batch"];

/// The knobs the vocabulary reads to pick a change (besides `regularize.rungs`).
pub const VOCABULARY_KNOBS: [KnobId; 10] = [
    knob::DATA_SOURCE,
    knob::MODEL_KIND,
    knob::MODEL_HIDDEN,
    knob::MODEL_CHANNELS,
    knob::MODEL_DENSE,
    knob::MODEL_DROPOUT,
    knob::MODEL_WIDTH,
    knob::TRAIN_OPTIMIZER,
    knob::TRAIN_STEPS,
    knob::TRAIN_BATCH_SIZE,
];

/// One rung: what it changes (as written, or the word with its expansion) and the
/// overrides it adds.
#[derive(Debug, Clone, PartialEq)]
pub struct Rung {
    pub change: String,
    pub overrides: Vec<(KnobId, KnobValue)>,
}

/// What the ladder is built from: the schema, the knobs a rung may change (those
/// `overfit` reads, its upstream's included), and the values of the stage's knobs.
pub struct Ladder<'a> {
    pub schema: &'a [KnobSpec],
    pub trainable: &'a BTreeSet<KnobId>,
    pub knobs: &'a BTreeMap<KnobId, KnobValue>,
}

impl Ladder<'_> {
    /// Rung 0 (no change) and one rung per entry of `rungs`.
    pub fn rungs(&self, rungs: &[String]) -> Result<Vec<Rung>, String> {
        // Every knob the vocabulary may read is read, whichever words are used.
        for id in VOCABULARY_KNOBS {
            self.value(id)?;
        }
        let mut out = vec![Rung { change: "overfit as configured".into(), overrides: Vec::new() }];
        for (i, text) in rungs.iter().enumerate() {
            let at = format!("regularize.rungs[{i}] = {text:?}");
            let text = text.trim();
            let (change, assignments) = if WORDS.contains(&text) {
                let expanded = self.word(text).map_err(|message| format!("{at}: {message}"))?;
                (format!("{text}: {}", expanded.join(",")), expanded)
            } else if !text.contains('=') {
                let hint =
                    workspace::knob::suggest(text, WORDS).map_or(String::new(), |w| format!(", did you mean `{w}`?"));
                return Err(format!(
                    "{at}: `{text}` is neither knob=value assignments nor one of {}{hint}",
                    WORDS.join(", ")
                ));
            } else {
                (text.to_string(), split_assignments(text))
            };
            let overrides = assignments
                .iter()
                .map(|assignment| self.assignment(assignment).map_err(|message| format!("{at}: {message}")))
                .collect::<Result<Vec<_>, String>>()?;
            out.push(Rung { change, overrides });
        }
        Ok(out)
    }

    /// One `knob=value`, checked against the schema.
    fn assignment(&self, assignment: &str) -> Result<(KnobId, KnobValue), String> {
        let Some((name, _)) = assignment.split_once('=') else {
            return Err(format!("`{assignment}` is not knob=value"));
        };
        let name = name.trim();
        let Some(spec) = self.schema.iter().find(|spec| spec.name == name) else {
            let names = self.schema.iter().map(|spec| spec.name);
            let hint =
                workspace::knob::suggest(name, names).map_or(String::new(), |n| format!(", did you mean `{n}`?"));
            return Err(format!("unknown knob `{name}`{hint}"));
        };
        if !self.trainable.contains(&spec.id()) {
            return Err(format!("`{name}` does not change how `overfit` trains, so the rung would change nothing"));
        }
        let mut config = Config::defaults(self.schema);
        config.set(self.schema, assignment).map_err(|error| error.to_string())?;
        let value = config.get(spec.name).cloned().ok_or_else(|| format!("no value for `{name}`"))?;
        Ok((spec.id(), value))
    }

    fn value(&self, id: KnobId) -> Result<&KnobValue, String> {
        self.knobs.get(&id).ok_or_else(|| format!("the ladder reads `{id}` it did not declare"))
    }

    fn text(&self, id: KnobId) -> Result<&str, String> {
        self.value(id)?.as_str().ok_or_else(|| format!("`{id}` is not a string"))
    }

    fn int(&self, id: KnobId) -> Result<i64, String> {
        self.value(id)?.as_i64().ok_or_else(|| format!("`{id}` is not an integer"))
    }

    fn doubled_list(&self, id: KnobId) -> Result<String, String> {
        let list = self.value(id)?.as_int_list().ok_or_else(|| format!("`{id}` is not a list of integers"))?;
        let doubled: Vec<String> = list.iter().map(|w| (w * 2).to_string()).collect();
        Ok(format!("{id}=[{}]", doubled.join(", ")))
    }

    /// The assignments a vocabulary word stands for, for this data and model.
    fn word(&self, word: &str) -> Result<Vec<String>, String> {
        let source = self.text(knob::DATA_SOURCE)?;
        let tabular = source.starts_with("csv:");
        let kind = match self.text(knob::MODEL_KIND)? {
            "auto" if tabular => "mlp",
            "auto" => "convnet",
            kind => kind,
        };
        Ok(match word {
            "augment" if tabular => vec!["augment.noise=0.1".into()],
            "augment" if source == "builtin:digits" => vec!["augment.crop_pad=1".into()],
            "augment" => vec!["augment.crop_pad=2".into()],
            "dropout" => {
                // One step more than configured, so the rung always adds dropout.
                let step = if matches!(kind, "convnet" | "resnet") { 0.1 } else { 0.2 };
                let now = self.value(knob::MODEL_DROPOUT)?.as_f64().ok_or("`model.dropout` is not a number")?;
                if now >= 0.5 {
                    return Err(format!("`dropout`: model.dropout is already {now}; name a rung of your own"));
                }
                vec![format!("model.dropout={}", ((now + step).min(0.5) * 100.0).round() / 100.0)]
            }
            "weight_decay" if self.text(knob::TRAIN_OPTIMIZER)? == "sgd" => vec!["train.weight_decay=0.0005".into()],
            "weight_decay" => vec!["train.optimizer=\"adamw\"".into(), "train.weight_decay=0.05".into()],
            "larger" => {
                let dense = self.value(knob::MODEL_DENSE)?.as_int_list().is_some_and(|d| !d.is_empty());
                let mut wider = match kind {
                    "convnet" if dense => {
                        vec![self.doubled_list(knob::MODEL_CHANNELS)?, self.doubled_list(knob::MODEL_DENSE)?]
                    }
                    "convnet" => vec![self.doubled_list(knob::MODEL_CHANNELS)?],
                    "resnet" => vec![format!("model.width={}", self.int(knob::MODEL_WIDTH)? * 2)],
                    "linear" => vec!["model.kind=\"mlp\"".to_string()],
                    _ => vec![self.doubled_list(knob::MODEL_HIDDEN)?],
                };
                wider.push(format!("train.steps={}", self.int(knob::TRAIN_STEPS)? * 2));
                wider
            }
            "downscale" if tabular => return Err("`downscale` needs image data".into()),
            "downscale" => vec!["data.downscale=2".into()],
            "smaller_batch" => vec![format!("train.batch_size={}", (self.int(knob::TRAIN_BATCH_SIZE)? / 2).max(1))],
            other => return Err(format!("unknown rung word `{other}`")),
        })
    }
}

/// Splits `a=1,b=[2, 3],c="x,y"` at the commas outside brackets and quotes.
pub fn split_assignments(text: &str) -> Vec<String> {
    let (mut parts, mut current, mut depth, mut quoted) = (Vec::new(), String::new(), 0i32, false);
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts.into_iter().map(|part| part.trim().to_string()).filter(|part| !part.is_empty()).collect()
}

/// The `overfit` instances of the ladder: each rung's overrides on top of those
/// before it, with early stopping on.
pub fn members(rungs: &[Rung]) -> Vec<InstanceSpec> {
    let mut overrides = vec![(knob::TRAIN_EARLY_STOPPING, KnobValue::Bool(true))];
    rungs
        .iter()
        .map(|rung| {
            overrides.extend(rung.overrides.iter().cloned());
            InstanceSpec::new(stage::OVERFIT, overrides.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder_knobs(source: &str) -> BTreeMap<KnobId, KnobValue> {
        let config = Config::defaults(&crate::knobs::schema());
        let mut knobs: BTreeMap<KnobId, KnobValue> =
            VOCABULARY_KNOBS.iter().map(|id| (*id, config.get(id.as_str()).unwrap().clone())).collect();
        knobs.insert(knob::DATA_SOURCE, KnobValue::Str(source.into()));
        knobs
    }

    fn rungs(source: &str, rungs: &[&str]) -> Result<Vec<Rung>, String> {
        let schema = crate::knobs::schema();
        let trainable: BTreeSet<KnobId> =
            schema.iter().map(|spec| spec.id()).filter(|id| !id.as_str().starts_with("checks.")).collect();
        let knobs = ladder_knobs(source);
        let rungs: Vec<String> = rungs.iter().map(|r| r.to_string()).collect();
        Ladder { schema: &schema, trainable: &trainable, knobs: &knobs }.rungs(&rungs)
    }

    #[test]
    fn the_default_ladder_fits_images_and_tables() {
        let images = rungs("builtin:digits", &DEFAULT_RUNGS).unwrap();
        let changes: Vec<&str> = images.iter().map(|r| r.change.as_str()).collect();
        assert_eq!(
            changes,
            [
                "overfit as configured",
                "augment: augment.crop_pad=1",
                "dropout: model.dropout=0.1",
                "weight_decay: train.optimizer=\"adamw\",train.weight_decay=0.05",
                "larger: model.channels=[32, 64],train.steps=6000",
            ]
        );
        let table = rungs("csv:data.csv", &DEFAULT_RUNGS).unwrap();
        assert_eq!(table[1].change, "augment: augment.noise=0.1");
        assert_eq!(table[4].change, "larger: model.hidden=[256, 256],train.steps=6000");
        let members = members(&table);
        assert_eq!(members.len(), 5);
        assert_eq!(members[0].overrides, [(knob::TRAIN_EARLY_STOPPING, KnobValue::Bool(true))]);
        assert_eq!(members[4].overrides.len(), 7, "cumulative: {:?}", members[4].overrides);
    }

    #[test]
    fn assignments_keep_lists_and_errors_name_the_rung_and_knob() {
        assert_eq!(split_assignments("a=1, b=[2, 3],c=\"x,y\""), ["a=1", "b=[2, 3]", "c=\"x,y\""]);
        let ladder = rungs("builtin:digits", &["model.hidden=[8, 8],train.lr=0.01"]).unwrap();
        assert_eq!(ladder[1].overrides[0], (knob::MODEL_HIDDEN, KnobValue::IntList(vec![8, 8])));
        let typo = rungs("builtin:digits", &["augment", "model.dropuot=0.2"]).unwrap_err();
        assert!(
            typo.starts_with("regularize.rungs[1] = \"model.dropuot=0.2\": unknown knob `model.dropuot`"),
            "{typo}"
        );
        assert!(typo.contains("did you mean `model.dropout`?"), "{typo}");
        let word = rungs("builtin:digits", &["dropuot"]).unwrap_err();
        assert!(word.contains("did you mean `dropout`?"), "{word}");
        let value = rungs("builtin:digits", &["model.dropout=2"]).unwrap_err();
        assert!(value.starts_with("regularize.rungs[0]") && value.contains("model.dropout"), "{value}");
        let threshold = rungs("builtin:digits", &["checks.overfit.min_drop=0.1"]).unwrap_err();
        assert!(threshold.contains("does not change how `overfit` trains"), "{threshold}");
        assert!(rungs("csv:x.csv", &["downscale"]).unwrap_err().contains("needs image data"));
    }

    #[test]
    fn dropout_and_larger_build_on_the_configured_model() {
        let schema = crate::knobs::schema();
        let trainable: BTreeSet<KnobId> = schema.iter().map(|spec| spec.id()).collect();
        let mut knobs = ladder_knobs("idx:/fashion");
        knobs.insert(knob::MODEL_DROPOUT, KnobValue::Float(workspace::Float(0.25)));
        knobs.insert(knob::MODEL_DENSE, KnobValue::IntList(vec![256]));
        let words = ["dropout".to_string(), "larger".to_string()];
        let ladder = Ladder { schema: &schema, trainable: &trainable, knobs: &knobs }.rungs(&words).unwrap();
        assert_eq!(ladder[1].change, "dropout: model.dropout=0.35");
        assert_eq!(ladder[2].change, "larger: model.channels=[32, 64],model.dense=[512],train.steps=6000");
        knobs.insert(knob::MODEL_DROPOUT, KnobValue::Float(workspace::Float(0.5)));
        let full = Ladder { schema: &schema, trainable: &trainable, knobs: &knobs }.rungs(&words).unwrap_err();
        assert!(full.contains("already 0.5"), "{full}");
    }
}
