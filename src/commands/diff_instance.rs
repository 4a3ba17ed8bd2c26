//! Sides of `pipe diff` that name one stage instance rather than a whole config: a
//! trial by name (`overfit[train.lr=0.001,train.steps=40]`, as the build prints it) or
//! by its index in the tune (`tune/trial-3`, the trial at its last rung). Such a side
//! is the current pipeline under the instance's overrides as `--set`s (equal resolved
//! knobs are the same key, so it finds the trial's own cache entry), showing only that
//! stage and the stages upstream of it.

use std::collections::BTreeMap;

use pipelines::ids::knob;
use pipelines::stages::tune::plan::{list_knobs, Setup, TUNE_KNOBS};
use workspace::{InstanceSpec, KnobId, KnobValue};

use crate::project::{load_config, usage, Failure, Project};

/// One instance named as a diff side.
pub struct InstanceSide {
    /// `--set` assignments giving the instance's overrides.
    pub sets: Vec<String>,
    /// The instance (`stage[]`, under the sets) the side shows with its upstream.
    pub stage: String,
    /// How it is shown: `tune/trial-3 = overfit[...]` or the instance name.
    pub label: String,
}

/// `name` as an instance side, or `None` when it names something else (a run, a file).
pub fn resolve(project: &Project, name: &str) -> Result<Option<InstanceSide>, Failure> {
    let instance = if let Some(index) = name.strip_prefix("tune/trial-") {
        let index: usize = index
            .parse()
            .map_err(|_| usage(anyhow::anyhow!("`{name}`: a trial is written tune/trial-N with N a number")))?;
        let trial = tune_trial(project, index)?;
        let label = format!("{name} = {}", trial.name());
        (trial, label)
    } else if name.contains('[') {
        let recipe = pipelines::recipe(&project.directory);
        match workspace::parse_instance(&recipe, name).map_err(|e| usage(anyhow::anyhow!(e)))? {
            Some(instance) => (instance, name.to_string()),
            None => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    let (instance, label) = instance;
    let sets = instance.overrides.iter().map(|(id, value)| format!("{id}={}", value.to_toml())).collect();
    // `overfit[]`: the stage itself, not the target of the same name.
    Ok(Some(InstanceSide { sets, stage: format!("{}[]", instance.stage.0), label }))
}

/// Trial `index` of the current pipeline's tune, at its last rung.
fn tune_trial(project: &Project, index: usize) -> Result<InstanceSpec, Failure> {
    let schema = pipelines::knobs::schema();
    let config = load_config(&schema, &project.file, &[])?;
    let value = |id: KnobId| -> Option<(KnobId, KnobValue)> {
        let spec = schema.iter().find(|spec| spec.name == id.0)?;
        Some((id, config.get(spec.name).cloned().unwrap_or_else(|| spec.default.clone())))
    };
    let knobs: BTreeMap<KnobId, KnobValue> =
        TUNE_KNOBS.into_iter().chain(list_knobs()).chain([knob::TRAIN_STEPS]).filter_map(value).collect();
    let setup = Setup::new(&knobs).map_err(|e| usage(anyhow::anyhow!("{e}")))?;
    if index >= setup.trials {
        return Err(usage(anyhow::anyhow!(
            "`tune/trial-{index}`: the tune has {} trials (tune/trial-0 to tune/trial-{})",
            setup.trials,
            setup.trials.saturating_sub(1)
        )));
    }
    let steps = setup.rungs().last().copied().unwrap_or(setup.steps);
    Ok(setup.trial(index, steps))
}
