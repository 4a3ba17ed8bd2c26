//! Helpers several stages share: typed knob readers, the device, the recipe's model
//! and optimizer from their knobs, errors, JSON bytes and verdict construction.

use candle_core::Device;
use serde::de::DeserializeOwned;
use serde::Serialize;
use workspace::{ChoiceKnob, ExecContext, ExecError, KnobId, StageId, Verdict, VerdictStatus};

use crate::data::{self, Prepared};
use crate::ids::{knob, stage};
use crate::models::{image_shape, Activation, ConvnetSpec, Init, MlpSpec, Model, ModelKind, ModelSpec, ResnetSpec};
use crate::train::{
    OptimSpec, OptimizerKind, OptimizerName, Schedule, ScheduleKind, ScheduleName, SplitTensors, TrainError,
};

/// What a stage's `run` sees: the engine's context and the device to train on.
pub struct Cx<'a, 'b> {
    pub exec: &'a ExecContext<'b>,
    pub device: Device,
}

/// Maps a candle error to a failure with `context`.
pub fn err(context: &str) -> impl Fn(candle_core::Error) -> ExecError + '_ {
    move |error| ExecError::Failed(format!("{context}: {error}"))
}

pub fn train_err(error: TrainError) -> ExecError {
    ExecError::Failed(error.to_string())
}

/// The candle device named by the build (`cpu`, and `cuda`/`metal` with their features).
pub fn device(name: &str) -> Result<Device, ExecError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        "cuda" => Device::new_cuda(0).map_err(err("cuda device")),
        #[cfg(feature = "metal")]
        "metal" => Device::new_metal(0).map_err(err("metal device")),
        other => Err(ExecError::Failed(format!("device `{other}` is not available in this build"))),
    }
}

/// Pretty JSON, the format of every JSON artifact.
pub fn json_bytes(value: &impl Serialize) -> Result<Vec<u8>, ExecError> {
    serde_json::to_vec_pretty(value).map_err(|error| ExecError::Failed(format!("json: {error}")))
}

/// The option text of a `Choice` value (`"relu"`), as artifacts record it.
pub fn choice_name<C: ChoiceKnob>(value: C) -> &'static str {
    (0..C::OPTIONS.len()).find(|&i| C::from_index(i) == value).map_or("", |i| C::OPTIONS[i])
}

/// `{:.N}` of a number, written through integers: core's exact float formatting (a
/// bignum fallback for most values) was half of judging a trial, and a no-op build of
/// a 1,000-trial tune judges every trial. The same text as `{:.N}` but where the
/// scaled value lies within rounding error of a tie; `{:.N}` itself for what this
/// cannot hold exactly (non-finite, more than 9 digits, or 2^52 or more once scaled).
#[derive(Clone, Copy)]
pub struct Fixed(pub f64, pub usize);

impl std::fmt::Display for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Fixed(value, digits) = *self;
        if !value.is_finite() || digits > 9 || value.abs() * 10f64.powi(digits as i32) >= 4.5e15 {
            return write!(f, "{value:.digits$}");
        }
        let scale = 10u64.pow(digits as u32);
        let scaled = (value.abs() * scale as f64).round_ties_even() as u64;
        let sign = if value.is_sign_negative() { "-" } else { "" };
        match digits {
            0 => write!(f, "{sign}{scaled}"),
            _ => write!(f, "{sign}{}.{:0digits$}", scaled / scale, scaled % scale),
        }
    }
}

/// A pass/fail verdict with a hint shown only when it does not pass.
pub fn verdict(check: &str, pass: bool, value: f64, expected: f64, message: String, hint: &str) -> Verdict {
    Verdict {
        check: check.to_string(),
        status: if pass { VerdictStatus::Pass } else { VerdictStatus::Fail },
        value,
        expected,
        message,
        hint: (!pass).then(|| hint.to_string()),
    }
}

pub fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32
}

impl Cx<'_, '_> {
    /// The bytes of artifact `name` of `output` (the output of `who`: a member or an
    /// upstream instance). A missing name is an error naming both; a missing or corrupt
    /// object is [`ExecError::DamagedInput`], so the build heals it and runs again.
    pub fn artifact(&self, who: &str, output: &workspace::StageOutput, name: &str) -> Result<Vec<u8>, ExecError> {
        let found =
            output.artifacts.get(name).ok_or_else(|| ExecError::Failed(format!("`{who}` wrote no `{name}`")))?;
        self.exec.read(&found.hash)
    }

    pub fn f64(&self, id: KnobId) -> Result<f64, ExecError> {
        self.exec.knob(id)?.as_f64().ok_or_else(|| ExecError::Failed(format!("knob `{id}` is not a number")))
    }

    pub fn int(&self, id: KnobId) -> Result<i64, ExecError> {
        self.exec.knob(id)?.as_i64().ok_or_else(|| ExecError::Failed(format!("knob `{id}` is not an integer")))
    }

    /// A non-negative integer knob as a count (the schema's minimum is at least 0).
    pub fn count(&self, id: KnobId) -> Result<usize, ExecError> {
        Ok(self.int(id)? as usize)
    }

    pub fn bool(&self, id: KnobId) -> Result<bool, ExecError> {
        self.exec.knob(id)?.as_bool().ok_or_else(|| ExecError::Failed(format!("knob `{id}` is not a boolean")))
    }

    pub fn text(&self, id: KnobId) -> Result<&str, ExecError> {
        self.exec.knob(id)?.as_str().ok_or_else(|| ExecError::Failed(format!("knob `{id}` is not a string")))
    }

    pub fn int_list(&self, id: KnobId) -> Result<&[i64], ExecError> {
        self.exec
            .knob(id)?
            .as_int_list()
            .ok_or_else(|| ExecError::Failed(format!("knob `{id}` is not a list of integers")))
    }

    pub fn float_list(&self, id: KnobId) -> Result<Vec<f64>, ExecError> {
        self.exec
            .knob(id)?
            .as_float_list()
            .ok_or_else(|| ExecError::Failed(format!("knob `{id}` is not a list of numbers")))
    }

    /// A `Choice` knob as its enum. Config validation already rejected other values.
    pub fn choice<C: ChoiceKnob>(&self, id: KnobId) -> Result<C, ExecError> {
        let text = self.text(id)?;
        C::parse(text)
            .ok_or_else(|| ExecError::Failed(format!("knob `{id}` is `{text}`, not one of {}", C::OPTIONS.join(", "))))
    }

    /// `train.seed`.
    pub fn seed(&self) -> Result<u64, ExecError> {
        Ok(self.int(knob::TRAIN_SEED)? as u64)
    }

    /// The typed metrics of upstream stage `id` (`M` is that stage's `Metrics`).
    pub fn upstream_metrics<M: DeserializeOwned>(&self, id: StageId) -> Result<M, ExecError> {
        super::flat::from_map(&self.exec.upstream(id)?.metrics)
            .map_err(|error| ExecError::Failed(format!("metrics of `{id}`: {error}")))
    }

    /// The prepared dataset written by the `data` stage, without its test split
    /// (empty here): only `evaluate` scores the test split ([`Cx::data_with_test`]).
    pub fn data(&self) -> Result<Prepared, ExecError> {
        let mut data = self.data_with_test(TestAccess::Withheld)?;
        data.test = data::Split::default();
        Ok(data)
    }

    /// The prepared dataset with its test split, saying why: `Audit` for the data
    /// audit (leakage and duplicates across splits, human labels: no model sees
    /// the examples), `Score` for `evaluate`. Every access is recorded for the
    /// test that only `evaluate` scores the test split.
    pub fn data_with_test(&self, access: TestAccess) -> Result<Prepared, ExecError> {
        record_test_access(self.exec.spec.id, access);
        let bytes = self.exec.artifact(stage::DATA, "dataset.safetensors")?;
        Prepared::decode(&bytes).map_err(|error| ExecError::Failed(error.to_string()))
    }

    pub fn tensors(&self, data: &Prepared, split: &data::Split) -> Result<SplitTensors, ExecError> {
        SplitTensors::new(split, data.n_features(), &self.device).map_err(err("tensors"))
    }

    /// The model knobs (all read whatever the kind) resolved for `data`:
    /// `auto` is `convnet` for image data and `mlp` otherwise.
    pub fn model_spec(&self, data: &Prepared) -> Result<ModelSpec, ExecError> {
        let kind: ModelKind = self.choice(knob::MODEL_KIND)?;
        let hidden: Vec<usize> = self.int_list(knob::MODEL_HIDDEN)?.iter().map(|&w| w as usize).collect();
        let activation: Activation = self.choice(knob::MODEL_ACTIVATION)?;
        let channels: Vec<usize> = self.int_list(knob::MODEL_CHANNELS)?.iter().map(|&c| c as usize).collect();
        let pool_every = self.count(knob::MODEL_POOL_EVERY)?;
        let dense: Vec<usize> = self.int_list(knob::MODEL_DENSE)?.iter().map(|&w| w as usize).collect();
        let (depth, width) = (self.count(knob::MODEL_DEPTH)?, self.count(knob::MODEL_WIDTH)?);
        let (n_in, n_out) = (data.n_features(), data.n_classes());
        let image = image_shape(&data.meta.shape);
        let kind = match (kind, image) {
            (ModelKind::Auto, Some(_)) => ModelKind::Convnet,
            (ModelKind::Auto, None) => ModelKind::Mlp,
            (kind, _) => kind,
        };
        let need_image = |name: &str| {
            ExecError::Failed(format!(
                "model.kind = \"{name}\" needs image data ([C, H, W] or [H, W]), but examples have shape {:?}; try \"mlp\"",
                data.meta.shape
            ))
        };
        Ok(match kind {
            ModelKind::Mlp | ModelKind::Auto => ModelSpec::Mlp(MlpSpec { n_in, hidden, n_out, activation }),
            ModelKind::Linear => ModelSpec::Mlp(MlpSpec { n_in, hidden: Vec::new(), n_out, activation }),
            ModelKind::Convnet => {
                let (channels_in, height, width) = image.ok_or_else(|| need_image("convnet"))?;
                ModelSpec::Convnet(ConvnetSpec {
                    channels_in,
                    height,
                    width,
                    channels,
                    pool_every,
                    dense,
                    n_out,
                    activation,
                })
            }
            ModelKind::Resnet => {
                let (channels_in, height, image_width) = image.ok_or_else(|| need_image("resnet"))?;
                ModelSpec::Resnet(ResnetSpec {
                    channels_in,
                    height,
                    width: image_width,
                    depth,
                    width_base: width,
                    n_out,
                })
            }
        })
    }

    /// The configured model with the recipe's init (last-layer bias = log priors).
    pub fn recipe_model(&self, data: &Prepared) -> Result<Box<dyn Model>, ExecError> {
        let log_priors = data.train_priors().iter().map(|p| p.max(1e-12).ln() as f32).collect();
        self.model_spec(data)?.build(&Init::Recipe { log_priors }, self.seed()?, &self.device).map_err(err("init"))
    }

    /// The optimizer knobs, all read whatever `train.optimizer` is.
    pub fn optim(&self) -> Result<OptimSpec, ExecError> {
        let name: OptimizerName = self.choice(knob::TRAIN_OPTIMIZER)?;
        let (lr, weight_decay) = (self.f64(knob::TRAIN_LR)?, self.f64(knob::TRAIN_WEIGHT_DECAY)?);
        let (beta1, beta2, eps) =
            (self.f64(knob::TRAIN_BETA1)?, self.f64(knob::TRAIN_BETA2)?, self.f64(knob::TRAIN_EPS)?);
        let (momentum, nesterov) = (self.f64(knob::TRAIN_MOMENTUM)?, self.bool(knob::TRAIN_NESTEROV)?);
        let kind = match name {
            OptimizerName::Adam => OptimizerKind::Adam { beta1, beta2, eps },
            OptimizerName::AdamW => OptimizerKind::AdamW { beta1, beta2, eps },
            OptimizerName::Sgd => OptimizerKind::Sgd { momentum, nesterov },
        };
        Ok(OptimSpec { kind, lr, weight_decay })
    }

    /// The learning-rate schedule knobs, all read whatever `train.schedule` is.
    pub fn schedule(&self) -> Result<Schedule, ExecError> {
        let name: ScheduleName = self.choice(knob::TRAIN_SCHEDULE)?;
        let warmup_steps = self.count(knob::TRAIN_WARMUP_STEPS)?;
        let (every, gamma) = (self.count(knob::TRAIN_STEP_EVERY)?, self.f64(knob::TRAIN_STEP_GAMMA)?);
        let min_ratio = self.f64(knob::TRAIN_MIN_LR_RATIO)?;
        let kind = match name {
            ScheduleName::Constant => ScheduleKind::Constant,
            ScheduleName::Step => ScheduleKind::Step { every, gamma },
            ScheduleName::Cosine => ScheduleKind::Cosine { min_ratio },
        };
        Ok(Schedule { kind, warmup_steps })
    }
}

/// The knobs [`Cx::model_spec`] reads.
pub const MODEL_KNOBS: [KnobId; 8] = [
    knob::MODEL_KIND,
    knob::MODEL_HIDDEN,
    knob::MODEL_ACTIVATION,
    knob::MODEL_CHANNELS,
    knob::MODEL_POOL_EVERY,
    knob::MODEL_DENSE,
    knob::MODEL_DEPTH,
    knob::MODEL_WIDTH,
];

/// The knobs [`Cx::optim`] and [`Cx::seed`] read.
pub const OPTIM_KNOBS: [KnobId; 9] = [
    knob::TRAIN_OPTIMIZER,
    knob::TRAIN_LR,
    knob::TRAIN_BETA1,
    knob::TRAIN_BETA2,
    knob::TRAIN_EPS,
    knob::TRAIN_MOMENTUM,
    knob::TRAIN_WEIGHT_DECAY,
    knob::TRAIN_SEED,
    knob::TRAIN_NESTEROV,
];

/// The knobs [`Cx::schedule`] reads (only the `overfit` stage follows a schedule).
pub const SCHEDULE_KNOBS: [KnobId; 5] = [
    knob::TRAIN_SCHEDULE,
    knob::TRAIN_WARMUP_STEPS,
    knob::TRAIN_STEP_EVERY,
    knob::TRAIN_STEP_GAMMA,
    knob::TRAIN_MIN_LR_RATIO,
];

/// Concatenated knob groups for a spec.
pub fn knobs(groups: &[&[KnobId]]) -> Vec<KnobId> {
    groups.iter().flat_map(|group| group.iter().copied()).collect()
}

/// Why a stage reads the test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestAccess {
    /// The split is dropped before the stage sees it.
    Withheld,
    /// The data audit: compared with the other splits, never fed to a model.
    Audit,
    /// Scored by a trained model: `evaluate` alone.
    Score,
}

#[cfg(test)]
static TEST_ACCESS: std::sync::Mutex<Vec<(StageId, TestAccess)>> = std::sync::Mutex::new(Vec::new());

#[cfg(test)]
fn record_test_access(stage: StageId, access: TestAccess) {
    TEST_ACCESS.lock().unwrap_or_else(|e| e.into_inner()).push((stage, access));
}

#[cfg(not(test))]
fn record_test_access(_stage: StageId, _access: TestAccess) {}

/// Every `(stage, access)` recorded in this test process so far.
#[cfg(test)]
pub fn test_accesses() -> Vec<(StageId, TestAccess)> {
    TEST_ACCESS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod fixed_tests {
    use super::Fixed;

    #[test]
    fn fixed_writes_what_precision_formatting_writes() {
        let mut values =
            vec![0.0, -0.0, 1.0, 0.5, 2.345_678, 99.99999, -3.25e-7, 1234.5678, 1e14, f64::NAN, f64::INFINITY];
        values.extend((0..20_000).map(|i| (i as f64 * 0.618_033_988_7).sin() * 10f64.powi(i % 9 - 4)));
        for value in values {
            for digits in [0, 1, 3, 4, 9, 12] {
                let (fast, exact) = (Fixed(value, digits).to_string(), format!("{value:.digits$}"));
                if fast != exact {
                    // Only a scaled value within rounding error of a tie may round the other way.
                    let scaled = value.abs() * 10f64.powi(digits as i32);
                    let off = (scaled.fract() - 0.5).abs();
                    assert!(off <= 1e-15 * scaled.max(1.0) * 4.0, "{value:e} at {digits}: {fast} vs {exact}");
                }
            }
        }
    }
}
