//! The recipe's stages: what each reads, what it writes, and its verdicts.

use std::collections::BTreeMap;

use candle_core::Device;
use serde::Serialize;
use serde_json::json;
use workspace::{
    ExecContext, ExecError, ExecOutput, Executor, KnobValue, StageOutput, StageSpec, Target, Verdict, VerdictStatus,
};

use crate::data::{self, Prepared};
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
            version: 1,
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
            version: 1,
            doc: "train the configured model; full-split evaluations; checkpoint",
            knobs: knobs(&[&MODEL_KNOBS, &OPTIM_KNOBS, &["train.batch_size", "train.steps", "train.eval_every"]]),
            checks: vec!["checks.overfit.min_drop", "checks.overfit.min_train_acc"],
            upstream: vec!["data"],
            fingerprints: vec![],
            device_dependent: true,
        },
    ]
}

pub fn targets() -> Vec<Target> {
    let skeleton = vec!["data", "loss_at_init", "zero_input_baseline", "overfit_batch"];
    let mut overfit = skeleton.clone();
    overfit.push("overfit");
    vec![
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
    Ok(ExecOutput { artifacts: vec![("predictions.json".into(), json_bytes(&results)?)], metrics })
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

fn stage_overfit(ctx: &Ctx<'_, '_>) -> Result<ExecOutput, ExecError> {
    let data = ctx.data()?;
    let steps = ctx.int("train.steps")? as usize;
    let eval_every = ctx.int("train.eval_every")? as usize;
    let (train, val) = (ctx.tensors(&data, &data.train)?, ctx.tensors(&data, &data.val)?);
    let model = ctx.recipe_model(&data)?;
    let mut trainer = Trainer::new(&model, &ctx.optim()?).map_err(train_err)?;
    let mut batches = Batches::new(&train, ctx.int("train.batch_size")? as usize, ctx.seed()?, "train");
    let mut series = Series::default();
    let record = |series: &mut Series, step: usize, batch_loss: f64| -> Result<(), ExecError> {
        let (train_loss, train_acc) = evaluate(&model, &train).map_err(err("evaluate"))?;
        let (val_loss, val_acc) = evaluate(&model, &val).map_err(err("evaluate"))?;
        series.step.push(step);
        series.train_loss.push(train_loss);
        series.train_acc.push(train_acc);
        series.val_loss.push(val_loss);
        series.val_acc.push(val_acc);
        series.batch_loss.push(batch_loss);
        Ok(())
    };
    record(&mut series, 0, f64::NAN)?;
    ctx.exec.progress.begin("overfit", steps as u64);
    let mut interval_loss = 0.0;
    let mut interval_steps = 0usize;
    while trainer.step < steps {
        let (x, y) = batches.next_batch().map_err(err("batch"))?;
        interval_loss += trainer.step(&x, &y).map_err(train_err)? as f64;
        interval_steps += 1;
        if trainer.step % eval_every == 0 || trainer.step == steps {
            record(&mut series, trainer.step, interval_loss / interval_steps as f64)?;
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
    // The first point has no batch loss yet; JSON has no NaN.
    let series_json = json!({
        "step": series.step,
        "train_loss": series.train_loss,
        "train_acc": series.train_acc,
        "val_loss": series.val_loss,
        "val_acc": series.val_acc,
        "batch_loss": series.batch_loss.iter().map(|v| if v.is_finite() { Some(*v) } else { None }).collect::<Vec<_>>(),
    });
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
    Ok(ExecOutput {
        artifacts: vec![
            ("checkpoint.safetensors".into(), checkpoint),
            ("metrics.json".into(), json_bytes(&series_json)?),
        ],
        metrics,
    })
}
