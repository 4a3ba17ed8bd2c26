//! `grad_deps`: backprop from one example's outputs to the batch input for a few
//! examples of the first batch: no other example may receive gradient.

use serde::{Deserialize, Serialize};
use serde_json::json;
use workspace::{Checks, ExecError, StageSpec, Verdict, VerdictError};

use super::common::{err, json_bytes, knobs, verdict, Cx, MODEL_KNOBS};
use super::{RecipeStage, Run};
use crate::grad_deps::check;
use crate::ids::{knob, stage};
use crate::render::{matrix_heatmap, ColorMap, Scale};
use crate::rng::Rng;
use crate::train::Batches;

pub struct GradDeps;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub n_probes: f64,
    pub n_leaking_probes: f64,
    pub n_without_self_gradient: f64,
}

impl RecipeStage for GradDeps {
    type Metrics = Metrics;

    fn spec(&self) -> StageSpec {
        StageSpec {
            id: stage::GRAD_DEPS,
            version: 3,
            doc: "backprop from one example's outputs to the inputs: no other example may receive gradient",
            knobs: knobs(&[&MODEL_KNOBS, &[knob::TRAIN_SEED, knob::TRAIN_BATCH_SIZE, knob::GRAD_DEPS_SAMPLES]]),
            checks: vec![],
            upstream: vec![stage::DATA],
            fingerprints: vec![],
            device_dependent: true,
        }
    }

    fn run(&self, cx: &Cx<'_, '_>) -> Result<Run<Metrics>, ExecError> {
        let (batch_size, seed, samples) =
            (cx.count(knob::TRAIN_BATCH_SIZE)?, cx.seed()?, cx.count(knob::GRAD_DEPS_SAMPLES)?);
        let data = cx.data()?;
        let train = cx.tensors(&data, &data.train)?;
        let model = cx.recipe_model(&data)?;
        // The first training batch, as the training loop sees it.
        let mut batches = Batches::new(&train, batch_size, seed, "train");
        let (x, _) = batches.next_batch().map_err(err("batch"))?;
        let batch = x.dim(0).map_err(err("batch"))?;
        let mut indices: Vec<usize> = (0..batch).collect();
        Rng::new(seed, "grad_deps/samples").shuffle(&mut indices);
        indices.truncate(samples);
        indices.sort_unstable();
        let probes = check(&model, &x, &indices).map_err(err("grad_deps"))?;
        let leaking = probes.iter().filter(|p| !p.leaks_from.is_empty() || !p.leaks_from_future.is_empty()).count();
        let without_self = probes.iter().filter(|p| !p.depends_on_itself).count();
        // A picture: one row per probe, one cell per batch example, brightness = gradient mass.
        let rows: Vec<Vec<f32>> =
            probes.iter().map(|p| p.gradient_per_example.iter().map(|&g| g as f32).collect()).collect();
        let max = rows.iter().flatten().fold(0f32, |m, &v| m.max(v)).max(1e-12);
        let cells: Vec<(String, &[f32])> =
            rows.iter().zip(&probes).map(|(r, p)| (format!("example {}", p.example), r.as_slice())).collect();
        let scale = Scale { low: 0.0, high: max };
        let picture = matrix_heatmap(&cells, scale, ColorMap::Sequential, "batch example", "gradient");
        let report = json!({
            "note": "the sum of one example's outputs is back-propagated to the batch input; only that example may receive gradient. Layers that mix the batch by design (batch norm) run in evaluation mode for this check.",
            "mode": "eval",
            "model": cx.model_spec(&data)?.kind_name(),
            "batch_size": batch,
            "probes": probes,
        });
        Ok(Run {
            artifacts: vec![("grad_deps.json".into(), json_bytes(&report)?), ("grad_deps.png".into(), picture)],
            metrics: Metrics {
                n_probes: probes.len() as f64,
                n_leaking_probes: leaking as f64,
                n_without_self_gradient: without_self as f64,
            },
        })
    }

    fn judge(&self, m: &Metrics, _checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        let leaks = m.n_leaking_probes;
        Ok(vec![verdict(
            "batch_independence",
            leaks == 0.0 && m.n_without_self_gradient == 0.0,
            leaks,
            0.0,
            format!(
                "{leaks} of {} probes leak gradient to other examples (or later positions); {} get none from their own input (model in evaluation mode: batch norm uses running statistics)",
                m.n_probes, m.n_without_self_gradient
            ),
            "something mixes examples across the batch: look for a view/reshape/transpose on the batch dimension (grad_deps.json lists the probes)",
        )])
    }
}
