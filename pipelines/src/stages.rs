//! The recipe's stages: what each reads, what it writes, and its verdicts.

use std::collections::BTreeMap;

use candle_core::Device;
use serde::Serialize;
use serde_json::json;
use workspace::{
    ExecContext, ExecError, ExecOutput, Executor, KnobValue, StageOutput, StageSpec, Target, Verdict, VerdictStatus,
};

use crate::data::{self, Prepared};
use crate::inspect::{self, InspectOptions};
use crate::model::{Activation, Init, Mlp, MlpSpec, Model};
use crate::sources::{Source, SourceOptions};
use crate::tensors::TensorFile;
use crate::train::{evaluate, Batches, OptimSpec, OptimizerKind, SplitTensors, TrainError, Trainer};

const MODEL_KNOBS: [&str; 3] = ["model.kind", "model.hidden", "model.activation"];
const OPTIM_KNOBS: [&str; 8] = [
    "train.optimizer",
    "train.lr",
    "train.beta1",
    "train.beta2",
    "train.eps",
    "train.momentum",
    "train.weight_decay",
    "train.seed",
];

fn knobs(groups: &[&[&'static str]]) -> Vec<&'static str> {
    groups.iter().flat_map(|group| group.iter().copied()).collect()
}

/// The stages in dependency order.
pub fn specs() -> Vec<StageSpec> {
    vec![
        StageSpec {
            id: "data",
            version: 1,
            doc: "load, stratified split, normalise with training statistics",
            knobs: vec![
                "data.source",
                "data.seed",
                "data.split",
                "data.normalize",
                "data.csv.label",
                "data.csv.header",
                "data.images.size",
                "data.images.channels",
            ],
            checks: vec![],
            upstream: vec![],
            fingerprints: vec!["dataset"],
            device_dependent: false,
        },
        StageSpec {
            id: "inspect",
            version: 1,
            doc: "become one with the data: balance, duplicates, leakage, corrupt values, outliers, label noise, pictures",
            knobs: vec![
                "checks.inspect.top_k",
                "checks.inspect.knn_k",
                "checks.inspect.knn_queries",
                "checks.inspect.outlier_z",
                "data.seed",
            ],
            checks: INSPECT_CHECKS.to_vec(),
            upstream: vec!["data"],
            fingerprints: vec![],
            device_dependent: false,
        },
        StageSpec {
            id: "batch_preview",
            version: 1,
            doc: "the first training batch exactly as the training loop receives it, decoded to pictures",
            knobs: vec!["train.batch_size", "train.seed"],
            checks: vec![],
            upstream: vec!["data"],
            fingerprints: vec![],
            device_dependent: false,
        },
        StageSpec {
            id: "human_baseline",
            version: 1,
            doc: "agreement of a second annotation (data.human_labels) with the labels",
            knobs: vec!["data.human_labels"],
            checks: vec![],
            upstream: vec!["data"],
            fingerprints: vec!["human_labels"],
            device_dependent: false,
        },
        StageSpec {
            id: "dumb_baselines",
            version: 1,
            doc: "majority class and softmax regression on the same splits",
            knobs: vec!["checks.dumb_baselines.steps", "checks.dumb_baselines.lr", "train.seed", "train.batch_size"],
            checks: vec![],
            upstream: vec!["data"],
            fingerprints: vec![],
            device_dependent: true,
        },
        StageSpec {
            id: "grad_deps",
            version: 1,
            doc: "backprop from one example's outputs to the inputs: no other example may receive gradient",
            knobs: knobs(&[&MODEL_KNOBS, &["train.seed", "train.batch_size", "checks.grad_deps.samples"]]),
            checks: vec![],
            upstream: vec!["data"],
            fingerprints: vec![],
            device_dependent: true,
        },
        StageSpec {
            id: "loss_at_init",
            version: 1,
            doc: "loss at init over the whole training split vs the label entropy",
            knobs: knobs(&[&MODEL_KNOBS, &["train.seed"]]),
            checks: vec!["checks.loss_at_init.tolerance"],
            upstream: vec!["data"],
            fingerprints: vec![],
            device_dependent: true,
        },
        StageSpec {
            id: "zero_input_baseline",
            version: 1,
            doc: "the same short training on real and on all-zero inputs",
            knobs: knobs(&[&MODEL_KNOBS, &OPTIM_KNOBS, &["train.batch_size", "checks.zero_input_baseline.steps"]]),
            checks: vec!["checks.zero_input_baseline.margin"],
            upstream: vec!["data"],
            fingerprints: vec![],
            device_dependent: true,
        },
        StageSpec {
            id: "overfit_batch",
            version: 2,
            doc: "overfit fixed tiny batches to near-zero loss",
            knobs: knobs(&[
                &MODEL_KNOBS,
                &OPTIM_KNOBS,
                &["checks.overfit_batch.size", "checks.overfit_batch.target_loss", "checks.overfit_batch.max_steps"],
            ]),
            checks: vec![],
            upstream: vec!["data"],
            fingerprints: vec![],
            device_dependent: true,
        },
        StageSpec {
            id: "overfit",
            version: 3,
            doc: "train the configured model; full-split evaluations; checkpoint",
            knobs: knobs(&[
                &MODEL_KNOBS,
                &OPTIM_KNOBS,
                &["train.batch_size", "train.steps", "train.eval_every", "checks.dynamics.size"],
            ]),
            checks: vec!["checks.overfit.min_drop", "checks.overfit.min_train_acc"],
            upstream: vec!["data"],
            fingerprints: vec![],
            device_dependent: true,
        },
        StageSpec {
            id: "beats_baselines",
            version: 1,
            doc: "the trained model against the dumb (and human) baselines on validation",
            knobs: vec![],
            checks: vec!["checks.dumb_baselines.fail"],
            upstream: vec!["dumb_baselines", "human_baseline", "overfit"],
            fingerprints: vec![],
            device_dependent: false,
        },
    ]
}

const INSPECT_CHECKS: [&str; 10] = [
    "checks.inspect.max_imbalance",
    "checks.inspect.max_leaked",
    "checks.inspect.max_duplicates",
    "checks.inspect.max_conflicting",
    "checks.inspect.max_near_duplicate_share",
    "checks.inspect.max_corrupt",
    "checks.inspect.max_constant_share",
    "checks.inspect.max_all_zero",
    "checks.inspect.max_outlier_share",
    "checks.inspect.max_suspect_share",
];

pub fn targets() -> Vec<Target> {
    let skeleton = vec![
        "data",
        "inspect",
        "batch_preview",
        "human_baseline",
        "dumb_baselines",
        "grad_deps",
        "loss_at_init",
        "zero_input_baseline",
        "overfit_batch",
    ];
    let mut overfit = skeleton.clone();
    overfit.extend(["overfit", "beats_baselines"]);
    vec![
        Target { name: "inspect", doc: "become one with the data", stages: vec!["data", "inspect"] },
        Target { name: "skeleton", doc: "end-to-end skeleton with dumb baselines", stages: skeleton },
        Target { name: "overfit", doc: "skeleton, then overfit the training split", stages: overfit.clone() },
        Target { name: "all", doc: "every stage", stages: overfit },
    ]
}

/// Runs the recipe's stages with candle.
pub struct Stages {
    /// The directory of `pipe.toml`: relative data paths start here.
    pub base_dir: std::path::PathBuf,
}

fn err(context: &str) -> impl Fn(candle_core::Error) -> ExecError + '_ {
    move |error| ExecError::Failed(format!("{context}: {error}"))
}

fn train_err(error: TrainError) -> ExecError {
    ExecError::Failed(error.to_string())
}

fn device(name: &str) -> Result<Device, ExecError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        "cuda" => Device::new_cuda(0).map_err(err("cuda device")),
        #[cfg(feature = "metal")]
        "metal" => Device::new_metal(0).map_err(err("metal device")),
        other => Err(ExecError::Failed(format!("device `{other}` is not available in this build"))),
    }
}

fn json_bytes(value: &impl Serialize) -> Result<Vec<u8>, ExecError> {
    serde_json::to_vec_pretty(value).map_err(|error| ExecError::Failed(format!("json: {error}")))
}

struct Ctx<'a, 'b> {
    exec: &'a ExecContext<'b>,
    device: Device,
    base_dir: &'a std::path::Path,
}

impl Ctx<'_, '_> {
    fn f64(&self, name: &str) -> Result<f64, ExecError> {
        self.exec.knob(name)?.as_f64().ok_or_else(|| ExecError::Failed(format!("knob `{name}` is not a number")))
    }

    fn int(&self, name: &str) -> Result<i64, ExecError> {
        self.exec.knob(name)?.as_i64().ok_or_else(|| ExecError::Failed(format!("knob `{name}` is not an integer")))
    }

    fn text(&self, name: &str) -> Result<&str, ExecError> {
        self.exec.knob(name)?.as_str().ok_or_else(|| ExecError::Failed(format!("knob `{name}` is not a string")))
    }

    fn seed(&self) -> Result<u64, ExecError> {
        Ok(self.int("train.seed")? as u64)
    }

    fn data(&self) -> Result<Prepared, ExecError> {
        let bytes = self.exec.artifact("data", "dataset.safetensors")?;
        Prepared::decode(&bytes).map_err(|error| ExecError::Failed(error.to_string()))
    }

    fn mlp_spec(&self, data: &Prepared) -> Result<MlpSpec, ExecError> {
        let hidden = match self.text("model.kind")? {
            "linear" => Vec::new(),
            _ => {
                self.exec.knob("model.hidden")?.as_int_list().unwrap_or_default().iter().map(|&w| w as usize).collect()
            }
        };
        Ok(MlpSpec {
            n_in: data.n_features(),
            hidden,
            n_out: data.n_classes(),
            activation: Activation::parse(self.text("model.activation")?),
        })
    }

    fn recipe_model(&self, data: &Prepared) -> Result<Mlp, ExecError> {
        let log_priors = data.train_priors().iter().map(|p| p.max(1e-12).ln() as f32).collect();
        Mlp::new(&self.mlp_spec(data)?, &Init::Recipe { log_priors }, self.seed()?, &self.device).map_err(err("init"))
    }

    fn optim(&self) -> Result<OptimSpec, ExecError> {
        let kind = match self.text("train.optimizer")? {
            "sgd" => OptimizerKind::Sgd { momentum: self.f64("train.momentum")? },
            _ => OptimizerKind::Adam {
                beta1: self.f64("train.beta1")?,
                beta2: self.f64("train.beta2")?,
                eps: self.f64("train.eps")?,
            },
        };
        Ok(OptimSpec { kind, lr: self.f64("train.lr")?, weight_decay: self.f64("train.weight_decay")? })
    }

    fn tensors(&self, data: &Prepared, split: &data::Split) -> Result<SplitTensors, ExecError> {
        SplitTensors::new(split, data.n_features(), &self.device).map_err(err("tensors"))
    }
}

impl Executor for Stages {
    fn execute(&self, exec: &ExecContext<'_>) -> Result<ExecOutput, ExecError> {
        let ctx = Ctx { exec, device: device(exec.device)?, base_dir: &self.base_dir };
        match exec.spec.id {
            "data" => stage_data(&ctx),
            "inspect" => stage_inspect(&ctx),
            "batch_preview" => stage_batch_preview(&ctx),
            "human_baseline" => stage_human_baseline(&ctx),
            "dumb_baselines" => stage_dumb_baselines(&ctx),
            "grad_deps" => stage_grad_deps(&ctx),
            "beats_baselines" => stage_beats_baselines(&ctx),
            "loss_at_init" => stage_loss_at_init(&ctx),
            "zero_input_baseline" => stage_zero_input_baseline(&ctx),
            "overfit_batch" => stage_overfit_batch(&ctx),
            "overfit" => stage_overfit(&ctx),
            other => Err(ExecError::Failed(format!("no such stage `{other}`"))),
        }
    }

    fn verdicts(&self, stage: &str, output: &StageOutput, checks: &BTreeMap<&'static str, KnobValue>) -> Vec<Verdict> {
        let metric = |name: &str| output.metrics.get(name).copied().unwrap_or(f64::NAN);
        let check = |name: &str| checks.get(name).and_then(KnobValue::as_f64).unwrap_or(f64::NAN);
        let verdict = |check: &str, pass: bool, value: f64, expected: f64, message: String, hint: &str| Verdict {
            check: check.to_string(),
            status: if pass { VerdictStatus::Pass } else { VerdictStatus::Fail },
            value,
            expected,
            message,
            hint: (!pass).then(|| hint.to_string()),
        };
        match stage {
            "inspect" => inspect_verdicts(output, checks),
            "grad_deps" => {
                let leaks = metric("n_leaking_probes");
                vec![verdict(
                    "batch_independence",
                    leaks == 0.0 && metric("n_without_self_gradient") == 0.0,
                    leaks,
                    0.0,
                    format!(
                        "{leaks} of {} probes leak gradient to other examples (or later positions); {} get none from their own input",
                        metric("n_probes"),
                        metric("n_without_self_gradient")
                    ),
                    "something mixes examples across the batch: look for a view/reshape/transpose on the batch dimension (grad_deps.json lists the probes)",
                )]
            }
            "beats_baselines" => {
                let warn_or_fail =
                    if checks.get("checks.dumb_baselines.fail").and_then(KnobValue::as_bool).unwrap_or(false) {
                        VerdictStatus::Fail
                    } else {
                        VerdictStatus::Warn
                    };
                ["majority", "linear"]
                    .iter()
                    .map(|baseline| {
                        let (model, base) = (metric("model_val_loss"), metric(&format!("{baseline}_val_loss")));
                        let pass = model < base;
                        Verdict {
                            check: format!("beats_{baseline}"),
                            status: if pass { VerdictStatus::Pass } else { warn_or_fail },
                            value: model,
                            expected: base,
                            message: format!(
                                "validation loss {model:.4} (acc {:.4}) vs the {baseline} baseline's {base:.4} (acc {:.4})",
                                metric("model_val_acc"),
                                metric(&format!("{baseline}_val_acc"))
                            ),
                            hint: (!pass).then(|| "the model does not beat a dumb baseline: do the labels depend on the inputs? is the model learning the training split at all?".to_string()),
                        }
                    })
                    .collect()
            }
            "loss_at_init" => {
                let (loss, entropy, tolerance) =
                    (metric("loss"), metric("entropy"), check("checks.loss_at_init.tolerance"));
                vec![verdict(
                    "loss_at_init",
                    (loss - entropy).abs() <= tolerance,
                    loss,
                    entropy,
                    format!(
                        "loss at init {loss:.4}, expected the label entropy {entropy:.4} +/- {tolerance} (a naive init gives {:.4})",
                        metric("naive_loss")
                    ),
                    "initialise the last layer to predict the class priors: bias = log priors, small weights",
                )]
            }
            "zero_input_baseline" => {
                let (real, zero, margin) =
                    (metric("real_val_loss"), metric("zero_val_loss"), check("checks.zero_input_baseline.margin"));
                vec![verdict(
                    "zero_input_baseline",
                    zero - real >= margin,
                    zero - real,
                    margin,
                    format!("validation loss {real:.4} on real inputs vs {zero:.4} on all-zero inputs"),
                    "the model does not use its inputs: check what enters the net (normalisation, a detached or zeroed tensor, shuffled labels)",
                )]
            }
            "overfit_batch" => {
                let target = metric("target_loss");
                let mut sizes: Vec<(usize, f64)> = output
                    .metrics
                    .iter()
                    .filter_map(|(name, value)| {
                        let size = name.strip_prefix("size_")?.strip_suffix("_loss")?.parse().ok()?;
                        Some((size, *value))
                    })
                    .collect();
                sizes.sort_by_key(|(size, _)| *size);
                sizes
                    .into_iter()
                    .map(|(size, loss)| {
                        let steps = metric(&format!("size_{size}_steps"));
                        verdict(
                            &format!("overfit_batch[{size}]"),
                            loss < target,
                            loss,
                            target,
                            format!("a fixed batch of {size} reached loss {loss:.2e} in {steps} steps (target < {target:.0e})"),
                            "a model that cannot memorise a tiny batch has a bug: check labels vs outputs, the loss, gradient flow, train.lr",
                        )
                    })
                    .collect()
            }
            "overfit" => {
                let (first, last) = (metric("first_train_loss"), metric("train_loss"));
                let drop = if first > 0.0 { 1.0 - last / first } else { 0.0 };
                let min_drop = check("checks.overfit.min_drop");
                let (acc, min_acc) = (metric("train_acc"), check("checks.overfit.min_train_acc"));
                vec![
                    verdict(
                        "loss_decreased",
                        drop >= min_drop,
                        drop,
                        min_drop,
                        format!("training loss went {first:.4} -> {last:.4} ({:.1}% lower)", drop * 100.0),
                        "loss is not going down: try another train.lr, check the optimizer sees the parameters",
                    ),
                    verdict(
                        "min_train_acc",
                        acc >= min_acc,
                        acc,
                        min_acc,
                        format!("training accuracy {acc:.4}, want >= {min_acc}"),
                        "the model cannot fit its training data: train longer (train.steps), a bigger model (model.hidden), or check the data",
                    ),
                ]
            }
            _ => Vec::new(),
        }
    }
}

fn stage_data(ctx: &Ctx<'_, '_>) -> Result<ExecOutput, ExecError> {
    let source = ctx.text("data.source")?;
    let parsed = Source::parse(source, ctx.base_dir).map_err(|error| ExecError::BadInput(error.to_string()))?;
    let size = ctx.exec.knob("data.images.size")?.as_int_list().unwrap_or_default().to_vec();
    let options = SourceOptions {
        csv_label: ctx.text("data.csv.label")?.to_string(),
        csv_header: ctx.exec.knob("data.csv.header")?.as_bool().unwrap_or(true),
        image_size: match size[..] {
            [height, width] => (height as usize, width as usize),
            [side] => (side as usize, side as usize),
            _ => return Err(ExecError::BadInput("data.images.size must be [height, width]".into())),
        },
        image_channels: ctx.int("data.images.channels")? as usize,
    };
    let raw = parsed.load(&options).map_err(|error| ExecError::BadInput(error.to_string()))?;
    let fractions = ctx.exec.knob("data.split")?.as_float_list().unwrap_or_default();
    let prepared = data::prepare(&raw, source, &fractions, ctx.int("data.seed")? as u64, ctx.text("data.normalize")?)
        .map_err(|error| ExecError::Failed(error.to_string()))?;
    let bytes = prepared.encode().map_err(|error| ExecError::Failed(error.to_string()))?;
    Ok(ExecOutput { artifacts: vec![("dataset.safetensors".into(), bytes)], metrics: prepared.metrics() })
}

fn stage_loss_at_init(ctx: &Ctx<'_, '_>) -> Result<ExecOutput, ExecError> {
    let data = ctx.data()?;
    let train = ctx.tensors(&data, &data.train)?;
    let model = ctx.recipe_model(&data)?;
    let (loss, _) = evaluate(&model, &train).map_err(err("loss at init"))?;
    let naive = Mlp::new(&ctx.mlp_spec(&data)?, &Init::Naive, ctx.seed()?, &ctx.device).map_err(err("naive init"))?;
    let (naive_loss, _) = evaluate(&naive, &train).map_err(err("naive loss"))?;
    let priors = data.train_priors();
    let entropy: f64 = priors.iter().filter(|p| **p > 0.0).map(|p| -p * p.ln()).sum();
    let report = json!({ "loss": loss, "entropy": entropy, "naive_loss": naive_loss, "priors": priors });
    Ok(ExecOutput {
        artifacts: vec![("init.json".into(), json_bytes(&report)?)],
        metrics: BTreeMap::from([
            ("loss".into(), loss),
            ("entropy".into(), entropy),
            ("naive_loss".into(), naive_loss),
        ]),
    })
}

fn stage_zero_input_baseline(ctx: &Ctx<'_, '_>) -> Result<ExecOutput, ExecError> {
    let data = ctx.data()?;
    let steps = ctx.int("checks.zero_input_baseline.steps")? as usize;
    let batch_size = ctx.int("train.batch_size")? as usize;
    let (train, val) = (ctx.tensors(&data, &data.train)?, ctx.tensors(&data, &data.val)?);
    let mut results = BTreeMap::new();
    ctx.exec.progress.begin("zero_input_baseline", 2 * steps as u64);
    for (run, offset) in [("real", 0), ("zero", steps)] {
        let (train, val) = if run == "zero" {
            (train.zeroed().map_err(err("zeros"))?, val.zeroed().map_err(err("zeros"))?)
        } else {
            (train.head(train.len).map_err(err("split"))?, val.head(val.len).map_err(err("split"))?)
        };
        let model = ctx.recipe_model(&data)?;
        let mut trainer = Trainer::new(&model, &ctx.optim()?).map_err(train_err)?;
        let mut batches = Batches::new(&train, batch_size, ctx.seed()?, "train");
        for step in 0..steps {
            let (x, y) = batches.next_batch().map_err(err("batch"))?;
            trainer.step(&x, &y).map_err(train_err)?;
            if step % 50 == 0 {
                ctx.exec.progress.advance((offset + step) as u64, run);
            }
        }
        let (val_loss, val_acc) = evaluate(&model, &val).map_err(err("evaluate"))?;
        results.insert(format!("{run}_val_loss"), val_loss);
        results.insert(format!("{run}_val_acc"), val_acc);
    }
    ctx.exec.progress.end();
    Ok(ExecOutput {
        artifacts: vec![("baseline.json".into(), json_bytes(&json!({ "steps": steps, "results": results }))?)],
        metrics: results,
    })
}

#[derive(Serialize)]
struct BatchExample {
    /// Index in the raw dataset.
    index: u32,
    label: u32,
    predicted: u32,
    prob_label: f64,
}

#[derive(Serialize)]
struct BatchResult {
    size: usize,
    steps: usize,
    final_loss: f64,
    losses: Vec<f64>,
    examples: Vec<BatchExample>,
}

fn stage_overfit_batch(ctx: &Ctx<'_, '_>) -> Result<ExecOutput, ExecError> {
    let data = ctx.data()?;
    let sizes = ctx.exec.knob("checks.overfit_batch.size")?.as_int_list().unwrap_or_default().to_vec();
    let target = ctx.f64("checks.overfit_batch.target_loss")?;
    let max_steps = ctx.int("checks.overfit_batch.max_steps")? as usize;
    let train = ctx.tensors(&data, &data.train)?;
    let mut metrics = BTreeMap::from([("target_loss".to_string(), target)]);
    let mut results = Vec::new();
    for size in sizes {
        let size = size as usize;
        let batch = train.head(size).map_err(err("batch"))?;
        let model = ctx.recipe_model(&data)?;
        let mut trainer = Trainer::new(&model, &ctx.optim()?).map_err(train_err)?;
        ctx.exec.progress.begin(&format!("overfit_batch[{size}]"), max_steps as u64);
        let mut losses = Vec::new();
        let mut loss = f64::INFINITY;
        while trainer.step < max_steps {
            loss = trainer.step(&batch.x, &batch.y).map_err(train_err)? as f64;
            losses.push(loss);
            if loss < target {
                break;
            }
            if trainer.step % 50 == 0 {
                ctx.exec.progress.advance(trainer.step as u64, &format!("loss {loss:.2e}"));
            }
        }
        ctx.exec.progress.end();
        // The loss after the last step, measured on the same batch.
        let (final_loss, _) = evaluate(&model, &batch).map_err(err("evaluate"))?;
        let final_loss = if loss < target { loss } else { final_loss };
        let logits = model.forward(&batch.x).map_err(err("forward"))?;
        let probs = candle_nn::ops::softmax(&logits, 1).map_err(err("softmax"))?;
        let probs: Vec<Vec<f32>> = probs.to_vec2().map_err(err("probs"))?;
        let labels = &data.train.y[..batch.len];
        let examples = probs
            .iter()
            .zip(labels)
            .zip(&data.train.index)
            .map(|((row, &label), &index)| BatchExample {
                index,
                label,
                predicted: argmax(row),
                prob_label: row[label as usize] as f64,
            })
            .collect();
        metrics.insert(format!("size_{size}_loss"), final_loss);
        metrics.insert(format!("size_{size}_steps"), trainer.step as f64);
        results.push(BatchResult { size, steps: trainer.step, final_loss, losses, examples });
    }
    let curves: Vec<crate::render::Series> = results
        .iter()
        .enumerate()
        .map(|(i, r)| crate::render::Series {
            name: format!("batch of {}", r.size),
            color: crate::render::PALETTE[i % crate::render::PALETTE.len()],
            points: r.losses.iter().enumerate().map(|(step, &loss)| (step as f64 + 1.0, loss)).collect(),
        })
        .collect();
    let chart = crate::render::charts_svg(&[("overfitting a fixed batch: loss per step", curves, true)]);
    let mut artifacts =
        vec![("predictions.json".into(), json_bytes(&results)?), ("loss.svg".into(), chart.into_bytes())];
    // The smallest batch as pictures, each labelled `label>prediction`.
    if let (true, Some(first)) = (crate::render::is_image(&data.meta.shape), results.first()) {
        let d = data.n_features();
        let name = |l: u32| data.meta.class_names.get(l as usize).cloned().unwrap_or_else(|| l.to_string());
        let tiles: Vec<(&[f32], String)> = first
            .examples
            .iter()
            .enumerate()
            .map(|(i, e)| (&data.train.x[i * d..(i + 1) * d], format!("{}>{}", name(e.label), name(e.predicted))))
            .collect();
        let scale = crate::render::Scale { low: -3.0, high: 3.0 };
        artifacts.push(("batch.png".into(), crate::render::tiles(&tiles, &data.meta.shape, scale, 8)));
    }
    Ok(ExecOutput { artifacts, metrics })
}

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32
}

#[derive(Serialize, Default)]
struct Series {
    step: Vec<usize>,
    train_loss: Vec<f64>,
    train_acc: Vec<f64>,
    val_loss: Vec<f64>,
    val_acc: Vec<f64>,
    /// Mean mini-batch loss over each evaluation interval.
    batch_loss: Vec<f64>,
}

/// Per-layer health at each evaluation: activation statistics on a fixed probe
/// batch, weight norms, and gradient norms of the last step.
#[derive(Serialize, Default)]
struct LayerStats {
    step: Vec<usize>,
    /// layer -> series
    activation_mean: BTreeMap<String, Vec<f64>>,
    activation_std: BTreeMap<String, Vec<f64>>,
    /// Share of units that are zero for every probe example (dead ReLUs).
    dead_share: BTreeMap<String, Vec<f64>>,
    weight_norm: BTreeMap<String, Vec<f64>>,
    grad_norm: BTreeMap<String, Vec<f64>>,
}

/// Predicted class probabilities of fixed validation examples at each evaluation.
#[derive(Serialize, Default)]
struct Dynamics {
    step: Vec<usize>,
    /// Index within the validation split, and label, of each tracked example.
    index: Vec<usize>,
    label: Vec<u32>,
    /// probs[e][s] = class probabilities of example e at evaluation s.
    probs: Vec<Vec<Vec<f32>>>,
}

fn layer_stats(
    stats: &mut LayerStats,
    model: &Mlp,
    probe: &candle_core::Tensor,
    step: usize,
    grads: &[(String, f64)],
) -> Result<(), ExecError> {
    let (_, hidden) = model.forward_traced(probe).map_err(err("trace"))?;
    stats.step.push(step);
    for (name, activation) in hidden {
        let values: Vec<Vec<f32>> = activation.to_vec2().map_err(err("trace"))?;
        let flat: Vec<f64> = values.iter().flatten().map(|&v| v as f64).collect();
        let n = flat.len().max(1) as f64;
        let mean = flat.iter().sum::<f64>() / n;
        let std = (flat.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let units = values.first().map_or(0, Vec::len);
        let dead = (0..units).filter(|&u| values.iter().all(|row| row[u] <= 0.0)).count();
        stats.activation_mean.entry(name.clone()).or_default().push(mean);
        stats.activation_std.entry(name.clone()).or_default().push(std);
        stats.dead_share.entry(name).or_default().push(dead as f64 / units.max(1) as f64);
    }
    for (name, var) in model.parameters().iter().filter(|(name, _)| name.ends_with(".weight")) {
        let norm =
            var.as_tensor().sqr().and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f32>()).map_err(err("norm"))?;
        let layer = name.trim_end_matches(".weight").to_string();
        stats.weight_norm.entry(layer.clone()).or_default().push((norm as f64).sqrt());
        let grad = grads.iter().find(|(n, _)| n == name).map_or(f64::NAN, |(_, g)| *g);
        stats.grad_norm.entry(layer).or_default().push(grad);
    }
    Ok(())
}

fn series_of(steps: &[usize], values: &[f64], name: &str, color: &'static str) -> crate::render::Series {
    crate::render::Series {
        name: name.to_string(),
        color,
        points: steps.iter().zip(values).map(|(&s, &v)| (s as f64, v)).collect(),
    }
}

fn stage_overfit(ctx: &Ctx<'_, '_>) -> Result<ExecOutput, ExecError> {
    use crate::render::{charts_svg, PALETTE};
    let data = ctx.data()?;
    let steps = ctx.int("train.steps")? as usize;
    let eval_every = ctx.int("train.eval_every")? as usize;
    let (train, val) = (ctx.tensors(&data, &data.train)?, ctx.tensors(&data, &data.val)?);
    let model = ctx.recipe_model(&data)?;
    let mut trainer = Trainer::new(&model, &ctx.optim()?).map_err(train_err)?;
    let mut batches = Batches::new(&train, ctx.int("train.batch_size")? as usize, ctx.seed()?, "train");
    let probe = train.head(256).map_err(err("probe"))?;
    let tracked = val.head(ctx.int("checks.dynamics.size")? as usize).map_err(err("dynamics"))?;
    let mut series = Series::default();
    let mut layers = LayerStats::default();
    let mut dynamics = Dynamics {
        index: (0..tracked.len).collect(),
        label: data.val.y[..tracked.len].to_vec(),
        probs: vec![Vec::new(); tracked.len],
        ..Dynamics::default()
    };
    let names: Vec<String> = model.parameters().into_iter().map(|(name, _)| name).collect();
    let record = |series: &mut Series,
                  layers: &mut LayerStats,
                  dynamics: &mut Dynamics,
                  step: usize,
                  batch_loss: f64,
                  grad_norms: &[f64]|
     -> Result<(), ExecError> {
        let (train_loss, train_acc) = evaluate(&model, &train).map_err(err("evaluate"))?;
        let (val_loss, val_acc) = evaluate(&model, &val).map_err(err("evaluate"))?;
        series.step.push(step);
        series.train_loss.push(train_loss);
        series.train_acc.push(train_acc);
        series.val_loss.push(val_loss);
        series.val_acc.push(val_acc);
        series.batch_loss.push(batch_loss);
        let grads: Vec<(String, f64)> = names.iter().cloned().zip(grad_norms.iter().copied()).collect();
        layer_stats(layers, &model, &probe.x, step, &grads)?;
        if tracked.len > 0 {
            let logits = model.forward(&tracked.x).map_err(err("dynamics"))?;
            let probs: Vec<Vec<f32>> =
                candle_nn::ops::softmax(&logits, 1).and_then(|p| p.to_vec2()).map_err(err("dynamics"))?;
            dynamics.step.push(step);
            for (example, row) in dynamics.probs.iter_mut().zip(probs) {
                example.push(row);
            }
        }
        Ok(())
    };
    record(&mut series, &mut layers, &mut dynamics, 0, f64::NAN, &[])?;
    ctx.exec.progress.begin("overfit", steps as u64);
    let mut interval_loss = 0.0;
    let mut interval_steps = 0usize;
    while trainer.step < steps {
        let (x, y) = batches.next_batch().map_err(err("batch"))?;
        interval_loss += trainer.step(&x, &y).map_err(train_err)? as f64;
        interval_steps += 1;
        if trainer.step % eval_every == 0 || trainer.step == steps {
            let grad_norms = trainer.grad_norms.clone();
            record(
                &mut series,
                &mut layers,
                &mut dynamics,
                trainer.step,
                interval_loss / interval_steps as f64,
                &grad_norms,
            )?;
            ctx.exec.progress.advance(
                trainer.step as u64,
                &format!("train loss {:.4}", series.train_loss.last().copied().unwrap_or_default()),
            );
            interval_loss = 0.0;
            interval_steps = 0;
        }
    }
    ctx.exec.progress.end();
    let last = series.step.len() - 1;
    let metrics = BTreeMap::from([
        ("first_train_loss".to_string(), series.train_loss[0]),
        ("train_loss".to_string(), series.train_loss[last]),
        ("train_acc".to_string(), series.train_acc[last]),
        ("val_loss".to_string(), series.val_loss[last]),
        ("val_acc".to_string(), series.val_acc[last]),
        ("steps".to_string(), steps as f64),
    ]);
    // JSON has no NaN: missing values (the first point's batch loss, the first
    // evaluation's gradient norms) are null.
    let finite = |values: &[f64]| values.iter().map(|v| v.is_finite().then_some(*v)).collect::<Vec<_>>();
    let series_json = json!({
        "step": series.step,
        "train_loss": series.train_loss,
        "train_acc": series.train_acc,
        "val_loss": series.val_loss,
        "val_acc": series.val_acc,
        "batch_loss": finite(&series.batch_loss),
    });
    let layers_json = json!({
        "step": layers.step,
        "activation_mean": layers.activation_mean,
        "activation_std": layers.activation_std,
        "dead_share": layers.dead_share,
        "weight_norm": layers.weight_norm,
        "grad_norm": layers.grad_norm.iter().map(|(k, v)| (k.clone(), finite(v))).collect::<BTreeMap<_, _>>(),
    });
    let curves = charts_svg(&[
        (
            "loss (full splits)",
            vec![
                series_of(&series.step, &series.train_loss, "train", PALETTE[0]),
                series_of(&series.step, &series.val_loss, "val", PALETTE[1]),
            ],
            true,
        ),
        (
            "accuracy (full splits)",
            vec![
                series_of(&series.step, &series.train_acc, "train", PALETTE[0]),
                series_of(&series.step, &series.val_acc, "val", PALETTE[1]),
            ],
            false,
        ),
    ]);
    let per_layer = |map: &BTreeMap<String, Vec<f64>>| -> Vec<crate::render::Series> {
        map.iter()
            .enumerate()
            .map(|(i, (name, v))| series_of(&layers.step, v, name, PALETTE[i % PALETTE.len()]))
            .collect()
    };
    let layer_chart = charts_svg(&[
        ("activation std (probe batch)", per_layer(&layers.activation_std), false),
        ("dead units (share)", per_layer(&layers.dead_share), false),
        ("weight norm", per_layer(&layers.weight_norm), false),
        ("gradient norm", per_layer(&layers.grad_norm), true),
    ]);
    let class_name = |l: u32| data.meta.class_names.get(l as usize).cloned().unwrap_or_else(|| l.to_string());
    let true_prob: Vec<crate::render::Series> = dynamics
        .probs
        .iter()
        .zip(&dynamics.label)
        .enumerate()
        .map(|(e, (probs, &label))| crate::render::Series {
            name: format!("val {e} ({})", class_name(label)),
            color: PALETTE[e % PALETTE.len()],
            points: dynamics.step.iter().zip(probs).map(|(&s, p)| (s as f64, p[label as usize] as f64)).collect(),
        })
        .collect();
    let dynamics_chart =
        charts_svg(&[("probability of the true class, tracked validation examples", true_prob, false)]);

    let spec = ctx.mlp_spec(&data)?;
    let mut checkpoint = TensorFile::default();
    for (name, var) in model.parameters() {
        let tensor = var.as_tensor();
        let values = tensor.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(err("checkpoint"))?;
        checkpoint.push_f32(&name, tensor.dims().to_vec(), values);
    }
    let meta = json!({
        "model": if spec.hidden.is_empty() { "linear" } else { "mlp" },
        "n_in": spec.n_in,
        "hidden": spec.hidden,
        "n_out": spec.n_out,
        "activation": ctx.text("model.activation")?,
        "input_shape": data.meta.shape,
        "class_names": data.meta.class_names,
        "normalize": data.meta.normalize,
    });
    let checkpoint = checkpoint.encode(&meta).map_err(|error| ExecError::Failed(error.to_string()))?;
    let mut artifacts = vec![
        ("checkpoint.safetensors".into(), checkpoint),
        ("metrics.json".into(), json_bytes(&series_json)?),
        ("curves.svg".into(), curves.into_bytes()),
        ("layers.json".into(), json_bytes(&layers_json)?),
        ("layers.svg".into(), layer_chart.into_bytes()),
        ("dynamics.json".into(), json_bytes(&dynamics)?),
        ("dynamics.svg".into(), dynamics_chart.into_bytes()),
    ];
    // The first layer's weights drawn in the input's shape, one tile per unit.
    if let (true, Some(weights)) = (crate::render::is_image(&data.meta.shape), model.first_layer()) {
        let rows: Vec<Vec<f32>> = weights.to_vec2().map_err(err("weights"))?;
        let bound = rows.iter().flatten().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let tiles: Vec<(&[f32], String)> =
            rows.iter().enumerate().map(|(i, r)| (r.as_slice(), format!("{i}"))).collect();
        let scale = crate::render::Scale { low: -bound, high: bound };
        artifacts.push(("first_layer.png".into(), crate::render::tiles(&tiles, &data.meta.shape, scale, 16)));
    }
    Ok(ExecOutput { artifacts, metrics })
}

fn stage_inspect(ctx: &Ctx<'_, '_>) -> Result<ExecOutput, ExecError> {
    let data = ctx.data()?;
    let options = InspectOptions {
        top_k: ctx.int("checks.inspect.top_k")? as usize,
        knn_k: ctx.int("checks.inspect.knn_k")? as usize,
        knn_queries: ctx.int("checks.inspect.knn_queries")? as usize,
        outlier_z: ctx.f64("checks.inspect.outlier_z")?,
        seed: ctx.int("data.seed")? as u64,
    };
    let inspection = inspect::inspect(&data, &options).map_err(err("inspect"))?;
    let mut artifacts = vec![("report.json".to_string(), json_bytes(&inspection.report)?)];
    artifacts.extend(inspection.files);
    Ok(ExecOutput { artifacts, metrics: inspection.metrics })
}

fn inspect_verdicts(output: &StageOutput, checks: &BTreeMap<&'static str, KnobValue>) -> Vec<Verdict> {
    let metric = |name: &str| output.metrics.get(name).copied().unwrap_or(f64::NAN);
    let check = |name: &str| checks.get(name).and_then(KnobValue::as_f64).unwrap_or(f64::NAN);
    // (check, metric, threshold knob, fail or warn, message, hint)
    let rules: [(&str, &str, &str, VerdictStatus, String, &str); 10] = [
        (
            "class_balance",
            "imbalance_ratio",
            "checks.inspect.max_imbalance",
            VerdictStatus::Warn,
            format!("largest/smallest training class count is {:.2}", metric("imbalance_ratio")),
            "re-weight the loss or resample, and judge the model by per-class metrics",
        ),
        (
            "leakage",
            "n_leaked",
            "checks.inspect.max_leaked",
            VerdictStatus::Fail,
            format!("{} val/test examples are exact copies of examples in another split", metric("n_leaked")),
            "deduplicate before splitting; report.json lists the copies under duplicates.cross_split",
        ),
        (
            "duplicates",
            "n_duplicates_within",
            "checks.inspect.max_duplicates",
            VerdictStatus::Warn,
            format!("{} exact duplicates within splits", metric("n_duplicates_within")),
            "duplicates over-weight some examples; report.json lists them under duplicates.within_split",
        ),
        (
            "conflicting_labels",
            "n_conflicting",
            "checks.inspect.max_conflicting",
            VerdictStatus::Fail,
            format!("{} examples have an identical twin with a different label", metric("n_conflicting")),
            "fix the labels of duplicates.conflicting_labels in report.json",
        ),
        (
            "near_duplicates",
            "near_duplicate_share",
            "checks.inspect.max_near_duplicate_share",
            VerdictStatus::Warn,
            format!("{} val/test examples nearly duplicate a training example", metric("n_near_duplicates")),
            "near copies inflate validation scores: look at near_duplicates in report.json",
        ),
        (
            "corrupt_values",
            "n_non_finite",
            "checks.inspect.max_corrupt",
            VerdictStatus::Fail,
            format!("{} examples hold NaN or Inf", metric("n_non_finite")),
            "fix or drop the examples listed under non_finite in report.json",
        ),
        (
            "value_range",
            "n_out_of_range",
            "checks.inspect.max_corrupt",
            VerdictStatus::Fail,
            format!("{} examples hold values outside the format's range", metric("n_out_of_range")),
            "check the decoding of the examples listed under out_of_range",
        ),
        (
            "constant_features",
            "constant_feature_share",
            "checks.inspect.max_constant_share",
            VerdictStatus::Warn,
            format!("{} features are constant on the training split", metric("n_constant_features")),
            "constant features carry no signal; check the loader, or drop them",
        ),
        (
            "all_zero",
            "n_all_zero",
            "checks.inspect.max_all_zero",
            VerdictStatus::Warn,
            format!("{} examples are all zeros", metric("n_all_zero")),
            "all-zero inputs are often failed reads: look at all_zero in report.json",
        ),
        (
            "outliers",
            "outlier_share",
            "checks.inspect.max_outlier_share",
            VerdictStatus::Warn,
            format!("{} examples have a robust z-score above the outlier threshold", metric("n_outliers")),
            "look at outliers.png and the outliers in report.json",
        ),
    ];
    let mut verdicts: Vec<Verdict> = rules
        .into_iter()
        .map(|(name, metric_name, knob, severity, message, hint)| {
            let (value, expected) = (metric(metric_name), check(knob));
            let pass = value <= expected;
            Verdict {
                check: name.to_string(),
                status: if pass { VerdictStatus::Pass } else { severity },
                value,
                expected,
                message,
                hint: (!pass).then(|| hint.to_string()),
            }
        })
        .collect();
    let (share, max_share) = (metric("suspect_share"), check("checks.inspect.max_suspect_share"));
    verdicts.push(Verdict {
        check: "label_noise".into(),
        status: if share <= max_share { VerdictStatus::Pass } else { VerdictStatus::Warn },
        value: share,
        expected: max_share,
        message: format!(
            "{} of {} checked training examples disagree with most of their nearest neighbours",
            metric("n_suspects"),
            metric("knn_queries")
        ),
        hint: (share > max_share).then(|| "look at suspects.png and label_noise in report.json".to_string()),
    });
    verdicts
}

fn stage_batch_preview(ctx: &Ctx<'_, '_>) -> Result<ExecOutput, ExecError> {
    let data = ctx.data()?;
    let train = ctx.tensors(&data, &data.train)?;
    // The very code path of the training stages: same batcher, same seed, same purpose.
    let mut batches = Batches::new(&train, ctx.int("train.batch_size")? as usize, ctx.seed()?, "train");
    let (x, y) = batches.next_batch().map_err(err("batch"))?;
    let values: Vec<Vec<f32>> = x.to_vec2().map_err(err("batch"))?;
    let labels: Vec<u32> = y.to_vec1().map_err(err("batch"))?;
    let flat: Vec<f32> = values.iter().flatten().copied().filter(|v| v.is_finite()).collect();
    let n = flat.len().max(1) as f64;
    let mean = flat.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (flat.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let (min, max) = flat.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let names = &data.meta.class_names;
    let summary = json!({
        "batch_size": labels.len(),
        "labels": labels,
        "label_names": labels.iter().map(|&l| names.get(l as usize).cloned().unwrap_or_default()).collect::<Vec<_>>(),
        "mean": mean, "std": std, "min": min, "max": max,
        "normalize": data.meta.normalize,
        "rendering": "normalised values drawn with -3 as black and +3 as white, exactly as fed to the model",
    });
    let mut artifacts = vec![("batch_preview.json".to_string(), json_bytes(&summary)?)];
    if crate::render::is_image(&data.meta.shape) {
        let tiles: Vec<(&[f32], String)> = values
            .iter()
            .zip(&labels)
            .map(|(row, &l)| (row.as_slice(), names.get(l as usize).cloned().unwrap_or_else(|| l.to_string())))
            .collect();
        let scale = if data.meta.normalize == "standard" {
            crate::render::Scale { low: -3.0, high: 3.0 }
        } else {
            let (low, high) = data.meta.value_range.unwrap_or((min, max));
            crate::render::Scale { low, high }
        };
        artifacts.push(("batch_preview.png".to_string(), crate::render::tiles(&tiles, &data.meta.shape, scale, 8)));
    }
    let metrics = BTreeMap::from([
        ("batch_mean".to_string(), mean),
        ("batch_std".to_string(), std),
        ("batch_size".to_string(), labels.len() as f64),
    ]);
    Ok(ExecOutput { artifacts, metrics })
}

fn stage_human_baseline(ctx: &Ctx<'_, '_>) -> Result<ExecOutput, ExecError> {
    let file = ctx.text("data.human_labels")?;
    if file.is_empty() {
        let report = json!({ "status": "not provided", "how": "set data.human_labels to a CSV of split,index,label" });
        return Ok(ExecOutput {
            artifacts: vec![("human_baseline.json".into(), json_bytes(&report)?)],
            metrics: BTreeMap::from([("provided".to_string(), 0.0)]),
        });
    }
    let data = ctx.data()?;
    let path = ctx.base_dir.join(file);
    let rows = crate::sources::read_human_labels(&path, &data.meta.class_names)
        .map_err(|error| ExecError::BadInput(error.to_string()))?;
    let mut agree = 0usize;
    let mut disagreements = Vec::new();
    for (line, split, index, label) in &rows {
        let labels = match split.as_str() {
            "train" => &data.train.y,
            "val" => &data.val.y,
            _ => &data.test.y,
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
    let accuracy = agree as f64 / rows.len().max(1) as f64;
    let report =
        json!({ "status": "provided", "n": rows.len(), "agreement": accuracy, "disagreements": disagreements });
    Ok(ExecOutput {
        artifacts: vec![("human_baseline.json".into(), json_bytes(&report)?)],
        metrics: BTreeMap::from([
            ("provided".to_string(), 1.0),
            ("human_acc".to_string(), accuracy),
            ("n_human".to_string(), rows.len() as f64),
        ]),
    })
}

fn stage_dumb_baselines(ctx: &Ctx<'_, '_>) -> Result<ExecOutput, ExecError> {
    let data = ctx.data()?;
    let priors = data.train_priors();
    // Majority: the best input-independent predictor, the training priors.
    let n_val = data.val.len().max(1) as f64;
    let majority_class =
        priors.iter().enumerate().fold((0, 0.0), |best, (c, &p)| if p > best.1 { (c, p) } else { best }).0;
    let majority_val_loss = data.val.y.iter().map(|&y| -priors[y as usize].max(1e-12).ln()).sum::<f64>() / n_val;
    let majority_val_acc = data.val.y.iter().filter(|&&y| y as usize == majority_class).count() as f64 / n_val;
    // Softmax regression with Adam, explicit knobs.
    let spec =
        MlpSpec { n_in: data.n_features(), hidden: vec![], n_out: data.n_classes(), activation: Activation::Relu };
    let log_priors = priors.iter().map(|p| p.max(1e-12).ln() as f32).collect();
    let model = Mlp::new(&spec, &Init::Recipe { log_priors }, ctx.seed()?, &ctx.device).map_err(err("init"))?;
    let optim = OptimSpec {
        kind: OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 },
        lr: ctx.f64("checks.dumb_baselines.lr")?,
        weight_decay: 0.0,
    };
    let (train, val) = (ctx.tensors(&data, &data.train)?, ctx.tensors(&data, &data.val)?);
    let mut trainer = Trainer::new(&model, &optim).map_err(train_err)?;
    let mut batches = Batches::new(&train, ctx.int("train.batch_size")? as usize, ctx.seed()?, "dumb_baselines/linear");
    for _ in 0..ctx.int("checks.dumb_baselines.steps")? {
        let (x, y) = batches.next_batch().map_err(err("batch"))?;
        trainer.step(&x, &y).map_err(train_err)?;
    }
    let (linear_val_loss, linear_val_acc) = evaluate(&model, &val).map_err(err("evaluate"))?;
    let metrics = BTreeMap::from([
        ("majority_val_loss".to_string(), majority_val_loss),
        ("majority_val_acc".to_string(), majority_val_acc),
        ("linear_val_loss".to_string(), linear_val_loss),
        ("linear_val_acc".to_string(), linear_val_acc),
    ]);
    Ok(ExecOutput { artifacts: vec![("baselines.json".into(), json_bytes(&metrics)?)], metrics })
}

fn stage_grad_deps(ctx: &Ctx<'_, '_>) -> Result<ExecOutput, ExecError> {
    let data = ctx.data()?;
    let train = ctx.tensors(&data, &data.train)?;
    let model = ctx.recipe_model(&data)?;
    // The first training batch, as the training loop sees it.
    let mut batches = Batches::new(&train, ctx.int("train.batch_size")? as usize, ctx.seed()?, "train");
    let (x, _) = batches.next_batch().map_err(err("batch"))?;
    let batch = x.dim(0).map_err(err("batch"))?;
    let mut indices: Vec<usize> = (0..batch).collect();
    crate::rng::Rng::new(ctx.seed()?, "grad_deps/samples").shuffle(&mut indices);
    indices.truncate(ctx.int("checks.grad_deps.samples")? as usize);
    indices.sort_unstable();
    let probes = crate::grad_deps::check(&model, &x, &indices).map_err(err("grad_deps"))?;
    let leaking = probes.iter().filter(|p| !p.leaks_from.is_empty() || !p.leaks_from_future.is_empty()).count();
    let without_self = probes.iter().filter(|p| !p.depends_on_itself).count();
    // A picture: one row per probe, one cell per batch example, brightness = gradient mass.
    let rows: Vec<Vec<f32>> =
        probes.iter().map(|p| p.gradient_per_example.iter().map(|&g| g as f32).collect()).collect();
    let max = rows.iter().flatten().fold(0f32, |m, &v| m.max(v)).max(1e-12);
    let tiles: Vec<(&[f32], String)> =
        rows.iter().zip(&probes).map(|(r, p)| (r.as_slice(), format!("example {}", p.example))).collect();
    let picture = crate::render::tiles(&tiles, &[1, batch], crate::render::Scale { low: 0.0, high: max }, 1);
    let report = json!({
        "note": "the sum of one example's outputs is back-propagated to the batch input; only that example may receive gradient. Layers that mix the batch by design run in evaluation mode for this check.",
        "batch_size": batch,
        "probes": probes,
    });
    Ok(ExecOutput {
        artifacts: vec![("grad_deps.json".into(), json_bytes(&report)?), ("grad_deps.png".into(), picture)],
        metrics: BTreeMap::from([
            ("n_probes".to_string(), probes.len() as f64),
            ("n_leaking_probes".to_string(), leaking as f64),
            ("n_without_self_gradient".to_string(), without_self as f64),
        ]),
    })
}

fn stage_beats_baselines(ctx: &Ctx<'_, '_>) -> Result<ExecOutput, ExecError> {
    let metric = |stage: &str, name: &str| -> f64 {
        ctx.exec.upstream.get(stage).and_then(|o| o.metrics.get(name).copied()).unwrap_or(f64::NAN)
    };
    let mut metrics = BTreeMap::from([
        ("model_val_loss".to_string(), metric("overfit", "val_loss")),
        ("model_val_acc".to_string(), metric("overfit", "val_acc")),
        ("majority_val_loss".to_string(), metric("dumb_baselines", "majority_val_loss")),
        ("majority_val_acc".to_string(), metric("dumb_baselines", "majority_val_acc")),
        ("linear_val_loss".to_string(), metric("dumb_baselines", "linear_val_loss")),
        ("linear_val_acc".to_string(), metric("dumb_baselines", "linear_val_acc")),
    ]);
    if metric("human_baseline", "provided") == 1.0 {
        metrics.insert("human_acc".to_string(), metric("human_baseline", "human_acc"));
    }
    Ok(ExecOutput { artifacts: vec![("comparison.json".into(), json_bytes(&metrics)?)], metrics })
}
