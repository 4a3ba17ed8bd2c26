//! The regularization knobs as the training code sees them: one reader per group,
//! shared by `overfit` (which trains with them) and `batch_preview` (which shows the
//! augmented batch through the very same [`Augment`]).

use std::path::Path;

use workspace::{ExecError, KnobId};

use super::super::common::{err, Cx};
use crate::augment::{Augment, AugmentSpec};
use crate::data::Prepared;
use crate::ids::knob;
use crate::models::{pretrained, Model};
use crate::train::EarlyStop;

/// The knobs [`Cx::augment`] reads.
pub const AUGMENT_KNOBS: [KnobId; 6] = [
    knob::AUGMENT_CROP_PAD,
    knob::AUGMENT_HFLIP,
    knob::AUGMENT_TRANSLATE,
    knob::AUGMENT_ROTATE,
    knob::AUGMENT_CUTOUT,
    knob::AUGMENT_NOISE,
];

/// The knobs [`Regularization::new`] reads besides [`AUGMENT_KNOBS`].
pub const TRAINING_KNOBS: [KnobId; 4] =
    [knob::MODEL_DROPOUT, knob::MODEL_INIT_FROM, knob::TRAIN_EARLY_STOPPING, knob::TRAIN_PATIENCE];

/// A checkpoint larger than this is refused (a safetensors file of 100M f32 weights).
const MAX_CHECKPOINT_BYTES: u64 = 400 << 20;

impl Cx<'_, '_> {
    /// `augment.*` for `data`, seeded by `train.seed`.
    pub fn augment(&self, data: &Prepared) -> Result<Augment, ExecError> {
        let spec = AugmentSpec {
            crop_pad: self.count(knob::AUGMENT_CROP_PAD)?,
            hflip: self.bool(knob::AUGMENT_HFLIP)?,
            translate: self.f64(knob::AUGMENT_TRANSLATE)?,
            rotate: self.f64(knob::AUGMENT_ROTATE)?,
            cutout: self.count(knob::AUGMENT_CUTOUT)?,
            noise: self.f64(knob::AUGMENT_NOISE)?,
        };
        Augment::new(spec, &data.meta.shape, &data.mean, &data.std, self.seed()?)
            .map_err(|error| ExecError::BadInput(error.to_string()))
    }
}

/// What a regularized training run adds to the plain loop: augmented batches,
/// dropout (set on the model), the initial weights, and early stopping.
pub struct Regularization {
    pub augment: Augment,
    early_stop: Option<EarlyStop>,
    /// Whether anything here is switched on (the `regularized` metric).
    pub active: bool,
}

impl Regularization {
    /// Reads every knob of the group, sets `model`'s dropout rate and loads
    /// `model.init_from` (relative to `base_dir`) into it.
    pub fn new(
        cx: &Cx<'_, '_>,
        data: &Prepared,
        model: &dyn Model,
        base_dir: &Path,
    ) -> Result<Regularization, ExecError> {
        let augment = cx.augment(data)?;
        let dropout = cx.f64(knob::MODEL_DROPOUT)?;
        let init_from = cx.text(knob::MODEL_INIT_FROM)?;
        let early = cx.bool(knob::TRAIN_EARLY_STOPPING)?;
        let patience = cx.count(knob::TRAIN_PATIENCE)?;
        model.set_dropout(dropout);
        if let Some(path) = pretrained::resolve(base_dir, init_from) {
            let bytes = cache::read_input(&path, MAX_CHECKPOINT_BYTES, "a checkpoint (model.init_from)")
                .map_err(|error| ExecError::BadInput(format!("model.init_from: {error}")))?;
            pretrained::load_into(model, &bytes, Path::new(init_from))
                .map_err(|error| ExecError::BadInput(error.to_string()))?;
        }
        let active = !augment.is_identity() || dropout > 0.0 || early;
        Ok(Regularization { augment, early_stop: early.then(|| EarlyStop::new(patience)), active })
    }

    /// Whether early stopping is on (its state is not part of a saved training state).
    pub fn early_stopping(&self) -> bool {
        self.early_stop.is_some()
    }

    /// After evaluation number `evaluation` (at `step`, validation loss `val_loss`):
    /// whether early stopping ends the run here.
    pub fn stop_after(
        &mut self,
        model: &dyn Model,
        step: usize,
        evaluation: usize,
        val_loss: f64,
    ) -> Result<bool, ExecError> {
        match &mut self.early_stop {
            Some(stop) => stop.observe(model, step, evaluation, val_loss).map_err(err("early stopping")),
            None => Ok(false),
        }
    }

    /// At the end of the run: puts the best weights back (early stopping) and returns
    /// the evaluation the checkpoint comes from (`None`: the last one).
    pub fn finish(&self, model: &dyn Model) -> Result<Option<(usize, usize)>, ExecError> {
        match &self.early_stop {
            Some(stop) => stop.restore(model).map_err(err("early stopping")),
            None => Ok(None),
        }
    }
}
