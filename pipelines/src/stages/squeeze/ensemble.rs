//! Ensembles as numbers: members' class probabilities (optionally softened by a
//! temperature), their average, accuracy and log loss of a probability table, and
//! the share of an ensemble's gain a distilled student keeps. Also the one way to
//! rebuild a model from a checkpoint's bytes and predict a split with it, which
//! `evaluate` can call to score an ensemble on the test split.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::models::{load_state, Init, Model, ModelSpec};
use crate::tensors::TensorFile;

/// Class probabilities of `rows` examples, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Probs {
    pub rows: usize,
    pub classes: usize,
    pub values: Vec<f32>,
}

impl Probs {
    pub fn row(&self, index: usize) -> &[f32] {
        &self.values[index * self.classes..(index + 1) * self.classes]
    }

    /// Softmax of each row of `logits` (`rows x classes`) divided by `temperature`,
    /// in f64, so it is the same on every machine and thread count.
    pub fn softmax(logits: &[f32], classes: usize, temperature: f64) -> Probs {
        let classes = classes.max(1);
        let mut values = Vec::with_capacity(logits.len());
        for row in logits.chunks(classes) {
            let scaled: Vec<f64> = row.iter().map(|&z| f64::from(z) / temperature).collect();
            let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exp: Vec<f64> = scaled.iter().map(|z| (z - max).exp()).collect();
            let sum: f64 = exp.iter().sum();
            values.extend(exp.iter().map(|e| (e / sum) as f32));
        }
        Probs { rows: logits.len() / classes, classes, values }
    }

    /// The mean of `members` (same shape), summed in member order.
    pub fn average(members: &[Probs]) -> Option<Probs> {
        let first = members.first()?;
        if members.iter().any(|m| m.rows != first.rows || m.classes != first.classes) {
            return None;
        }
        let mut sums = vec![0f64; first.values.len()];
        for member in members {
            for (sum, &p) in sums.iter_mut().zip(&member.values) {
                *sum += f64::from(p);
            }
        }
        let k = members.len() as f64;
        Some(Probs { rows: first.rows, classes: first.classes, values: sums.iter().map(|s| (s / k) as f32).collect() })
    }

    /// The normalised geometric mean of `members` (same shape): per row, the
    /// softmax of the mean log-probability (floored at 1e-30), in member order and
    /// in f64. A member that is sure a class is wrong vetoes it, where the
    /// arithmetic mean lets a confident member outvote the rest.
    pub fn geometric_mean(members: &[Probs]) -> Option<Probs> {
        let first = members.first()?;
        if members.iter().any(|m| m.rows != first.rows || m.classes != first.classes) {
            return None;
        }
        let mut logs = vec![0f64; first.values.len()];
        for member in members {
            for (sum, &p) in logs.iter_mut().zip(&member.values) {
                *sum += f64::from(p).max(1e-30).ln();
            }
        }
        let k = members.len() as f64;
        let mut values = Vec::with_capacity(logs.len());
        for row in logs.chunks(first.classes.max(1)) {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exp: Vec<f64> = row.iter().map(|l| ((l - max) / k).exp()).collect();
            let sum: f64 = exp.iter().sum();
            values.extend(exp.iter().map(|e| (e / sum) as f32));
        }
        Some(Probs { rows: first.rows, classes: first.classes, values })
    }

    /// `members` pooled as `combine` says.
    pub fn pool(members: &[Probs], combine: Combine) -> Option<Probs> {
        match combine {
            Combine::Mean => Probs::average(members),
            Combine::Geomean => Probs::geometric_mean(members),
        }
    }

    /// Accuracy (argmax, first of ties) and mean negative log-likelihood of `labels`
    /// (probabilities floored at 1e-12).
    pub fn score(&self, labels: &[u32]) -> Score {
        let n = self.rows.min(labels.len());
        if n == 0 {
            return Score { acc: 0.0, loss: 0.0 };
        }
        let mut correct = 0usize;
        let mut loss = 0f64;
        for (index, &label) in labels.iter().enumerate().take(n) {
            let row = self.row(index);
            correct += usize::from(super::super::common::argmax(row) == label);
            loss -= f64::from(row[label as usize]).max(1e-12).ln();
        }
        Score { acc: correct as f64 / n as f64, loss: loss / n as f64 }
    }
}

/// Accuracy and log loss of a probability table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub acc: f64,
    pub loss: f64,
}

/// The share of the ensemble's accuracy gain over its best member that the student
/// keeps: 1 when it matches the ensemble, 0 when it is no better than the best
/// member, negative when worse. 0 when the ensemble gained nothing (nothing to keep).
pub fn kept_share(best_member: f64, ensemble: f64, student: f64) -> f64 {
    let gain = ensemble - best_member;
    if gain > 0.0 {
        (student - best_member) / gain
    } else {
        0.0
    }
}

/// The model a checkpoint describes (spec from its metadata), with its parameters and
/// buffers loaded, in evaluation mode, and the checkpoint's metadata.
pub fn load_checkpoint(bytes: &[u8], device: &Device) -> Result<(ModelSpec, Box<dyn Model>, Value), String> {
    let file = TensorFile::decode(bytes).map_err(|e| e.to_string())?;
    let meta: Value = file.meta().map_err(|e| e.to_string())?;
    let spec = ModelSpec::from_meta(&meta)?;
    let model = spec.build(&Init::Naive, 0, device).map_err(|e| format!("rebuild model: {e}"))?;
    let mut tensors = HashMap::new();
    for name in file.names() {
        let shape = file.shape(name).map_err(|e| e.to_string())?.to_vec();
        let values = file.f32(name).map_err(|e| e.to_string())?;
        let tensor = Tensor::from_vec(values, shape, device).map_err(|e| format!("checkpoint tensor: {e}"))?;
        tensors.insert(name.to_string(), tensor);
    }
    load_state(model.as_ref(), &tensors).map_err(|e| format!("load checkpoint: {e}"))?;
    model.set_training(false);
    Ok((spec, model, meta))
}

/// Examples per forward pass when predicting a split (bounds memory).
const CHUNK: usize = 1024;

/// The logits of `model` (in evaluation mode) on the rows of `x` (`features` each).
pub fn logits(model: &dyn Model, x: &[f32], features: usize, device: &Device) -> candle_core::Result<Vec<f32>> {
    let rows = x.len() / features.max(1);
    let mut out = Vec::new();
    for start in (0..rows).step_by(CHUNK) {
        let n = CHUNK.min(rows - start);
        let batch = Tensor::from_slice(&x[start * features..(start + n) * features], (n, features), device)?;
        out.extend(model.forward(&batch)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// `squeeze.tta`: test-time augmentation of every member's predictions (on the
/// validation, training and test splits alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tta {
    /// Each example as it is.
    None,
    /// The mean of the probabilities of the image and of its mirror image (right for
    /// members trained with `augment.hflip`, which have seen both).
    Hflip,
}

impl workspace::ChoiceKnob for Tta {
    const OPTIONS: &'static [&'static str] = &["none", "hflip"];

    fn from_index(index: usize) -> Tta {
        [Tta::None, Tta::Hflip][index]
    }
}

/// `squeeze.combine`: how several probability tables of one split (the views of
/// a test-time augmentation, the members of an ensemble) become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// The arithmetic mean of the probabilities.
    Mean,
    /// The normalised geometric mean (the softmax of the mean log-probability).
    Geomean,
}

impl workspace::ChoiceKnob for Combine {
    const OPTIONS: &'static [&'static str] = &["mean", "geomean"];

    fn from_index(index: usize) -> Combine {
        [Combine::Mean, Combine::Geomean][index]
    }
}

/// How members see a split: the test-time augmentation, the examples' shape, and
/// how the views' (and then the members') probabilities are pooled.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub tta: Tta,
    pub shape: &'a [usize],
    pub combine: Combine,
}

impl View<'_> {
    /// Refuses a mirror image of data that is not a picture.
    pub fn check(&self) -> Result<(), String> {
        if self.tta == Tta::Hflip && !crate::render::is_image(self.shape) {
            return Err(format!(
                "squeeze.tta = \"hflip\" mirrors images, but examples have shape {:?}: set squeeze.tta = \"none\"",
                self.shape
            ));
        }
        Ok(())
    }
}

/// Every row of `x` (examples whose last axis, of `width` values, runs left to
/// right) mirrored left to right.
pub fn hflip(x: &[f32], width: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_mut(width.max(1)) {
        row.reverse();
    }
    out
}

/// `model`'s probabilities at `temperature` for the rows of `x`, under the view's
/// test-time augmentation (the mirror image's probabilities averaged in second).
pub fn predict(
    model: &dyn Model,
    classes: usize,
    x: &[f32],
    temperature: f64,
    view: View<'_>,
    device: &Device,
) -> Result<Probs, String> {
    view.check()?;
    let features = view.shape.iter().product::<usize>().max(1);
    let probs = |x: &[f32]| -> Result<Probs, String> {
        let z = logits(model, x, features, device).map_err(|e| format!("predict: {e}"))?;
        Ok(Probs::softmax(&z, classes, temperature))
    };
    let plain = probs(x)?;
    match view.tta {
        Tta::None => Ok(plain),
        Tta::Hflip => {
            let width = view.shape.last().copied().unwrap_or(1);
            let mirrored = probs(&hflip(x, width))?;
            Probs::pool(&[plain, mirrored], view.combine).ok_or_else(|| "mirror images predicted another shape".into())
        }
    }
}

/// The ensemble of the checkpoints `members` on `x`: each member's probabilities at
/// `temperature` (under the view's test-time augmentation), pooled in member order
/// as the view says.
pub fn ensemble_probs(
    members: &[Vec<u8>],
    x: &[f32],
    temperature: f64,
    view: View<'_>,
    device: &Device,
) -> Result<Probs, String> {
    let mut probs = Vec::with_capacity(members.len());
    for bytes in members {
        let (spec, model, _) = load_checkpoint(bytes, device)?;
        probs.push(predict(model.as_ref(), spec_classes(&spec), x, temperature, view, device)?);
    }
    Probs::pool(&probs, view.combine)
        .ok_or_else(|| "the ensemble has no members, or members disagree on the classes".into())
}

/// The number of classes a model spec predicts.
pub fn spec_classes(spec: &ModelSpec) -> usize {
    match spec {
        ModelSpec::Mlp(s) => s.n_out,
        ModelSpec::Convnet(s) => s.n_out,
        ModelSpec::Resnet(s) => s.n_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(rows: &[[f32; 3]]) -> Probs {
        Probs { rows: rows.len(), classes: 3, values: rows.iter().flatten().copied().collect() }
    }

    /// Three members, each right on two of three examples but wrong on a different
    /// one: every member scores 2/3, their average 3/3.
    #[test]
    fn an_ensemble_of_different_mistakes_beats_each_member() {
        let labels = [0, 1, 2];
        let a = probs(&[[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]);
        let b = probs(&[[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8]]);
        let c = probs(&[[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.7, 0.1, 0.2]]);
        for member in [&a, &b, &c] {
            assert!((member.score(&labels).acc - 2.0 / 3.0).abs() < 1e-12);
        }
        let mean = Probs::average(&[a.clone(), b, c]).unwrap();
        for (p, expected) in mean.row(0).iter().zip([0.6, 0.3, 0.1]) {
            assert!((f64::from(*p) - expected).abs() < 1e-6, "{:?}", mean.row(0));
        }
        let score = mean.score(&labels);
        assert_eq!(score.acc, 1.0);
        // Each true-class probability is 0.6: the log loss is -ln(0.6).
        assert!((score.loss + 0.6f64.ln()).abs() < 1e-6, "{score:?}");
        // Member a: -(ln 0.2 + ln 0.8 + ln 0.8) / 3.
        let a_loss = -(0.2f64.ln() + 2.0 * 0.8f64.ln()) / 3.0;
        assert!((a.score(&labels).loss - a_loss).abs() < 1e-6);
        assert!(Probs::average(&[]).is_none());
    }

    /// The geometric mean of (0.5, 0.5) and (0.9, 0.1) is (sqrt .45, sqrt .05)
    /// normalised: (0.75, 0.25), where the arithmetic mean is (0.7, 0.3); and a
    /// member sure that a class is wrong vetoes it.
    #[test]
    fn geometric_mean_normalises_and_vetoes() {
        let two = |a: [f32; 2], b: [f32; 2]| {
            [Probs { rows: 1, classes: 2, values: a.to_vec() }, Probs { rows: 1, classes: 2, values: b.to_vec() }]
        };
        let members = two([0.5, 0.5], [0.9, 0.1]);
        let geo = Probs::pool(&members, Combine::Geomean).unwrap();
        let mean = Probs::pool(&members, Combine::Mean).unwrap();
        for (got, want) in geo.values.iter().zip([0.75, 0.25]) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{:?}", geo.values);
        }
        for (got, want) in mean.values.iter().zip([0.7, 0.3]) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{:?}", mean.values);
        }
        let veto = Probs::geometric_mean(&two([0.6, 0.4], [0.0, 1.0])).unwrap();
        assert!(veto.values[0] < 1e-10 && (veto.values[1] - 1.0).abs() < 1e-6, "{:?}", veto.values);
        let mismatched = [members[0].clone(), probs(&[[0.2, 0.3, 0.5]])];
        assert!(Probs::geometric_mean(&mismatched).is_none() && Probs::geometric_mean(&[]).is_none());
    }

    #[test]
    fn temperature_softens_without_reordering() {
        let logits = [2.0f32, 1.0, 0.0];
        let sharp = Probs::softmax(&logits, 3, 1.0);
        let soft = Probs::softmax(&logits, 3, 4.0);
        let e = [1.0f64, (-1.0f64).exp(), (-2.0f64).exp()];
        let sum: f64 = e.iter().sum();
        for (p, e) in sharp.values.iter().zip(e) {
            assert!((f64::from(*p) - e / sum).abs() < 1e-6);
        }
        assert!(soft.values[0] < sharp.values[0] && soft.values[2] > sharp.values[2]);
        assert!(soft.values[0] > soft.values[1] && soft.values[1] > soft.values[2]);
        assert!((soft.values.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn hflip_mirrors_each_row_and_twice_is_the_identity() {
        // Two 2x3 images, row-major: each row of 3 reversed, nothing crosses rows.
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let flipped = hflip(&x, 3);
        assert_eq!(flipped, [2.0, 1.0, 0.0, 5.0, 4.0, 3.0, 8.0, 7.0, 6.0, 11.0, 10.0, 9.0]);
        assert_eq!(hflip(&flipped, 3), x);
    }

    #[test]
    fn hflip_needs_pictures() {
        let table = View { tta: Tta::Hflip, shape: &[16], combine: Combine::Mean };
        let err = table.check().unwrap_err();
        assert!(err.contains("squeeze.tta") && err.contains("[16]"), "{err}");
        assert!(View { tta: Tta::None, shape: &[16], combine: Combine::Mean }.check().is_ok());
        assert!(View { tta: Tta::Hflip, shape: &[1, 4, 4], combine: Combine::Mean }.check().is_ok());
    }

    /// Under hflip a member's probabilities are the mean of the image's and the
    /// mirror image's; an image that is its own mirror image is unchanged.
    #[test]
    fn hflip_tta_averages_the_image_and_its_mirror() {
        use crate::models::{Activation, Init, MlpSpec};
        let device = Device::Cpu;
        let spec = ModelSpec::Mlp(MlpSpec { n_in: 4, hidden: vec![5], n_out: 3, activation: Activation::Relu });
        let model = spec.build(&Init::Naive, 7, &device).unwrap();
        model.set_training(false);
        let shape = [1, 2, 2];
        let x = [0.5f32, -1.0, 2.0, 0.25, 1.0, 1.0, -0.5, -0.5];
        let plain = View { tta: Tta::None, shape: &shape, combine: Combine::Mean };
        let tta = View { tta: Tta::Hflip, shape: &shape, combine: Combine::Mean };
        let got = predict(model.as_ref(), 3, &x, 1.0, tta, &device).unwrap();
        let a = predict(model.as_ref(), 3, &x, 1.0, plain, &device).unwrap();
        let b = predict(model.as_ref(), 3, &hflip(&x, 2), 1.0, plain, &device).unwrap();
        assert_ne!(a.row(0), b.row(0), "the net is not mirror-symmetric: the test would prove nothing");
        assert_eq!(got, Probs::average(&[a.clone(), b]).unwrap());
        // The second image is its own mirror image.
        for (p, q) in got.row(1).iter().zip(a.row(1)) {
            assert!((p - q).abs() < 1e-6, "{:?} vs {:?}", got.row(1), a.row(1));
        }
    }

    #[test]
    fn kept_share_of_the_gain() {
        // Best member 0.90, ensemble 0.94: a student at 0.93 keeps 75% of the gain.
        assert!((kept_share(0.90, 0.94, 0.93) - 0.75).abs() < 1e-9);
        assert!((kept_share(0.90, 0.94, 0.94) - 1.0).abs() < 1e-9);
        assert!((kept_share(0.90, 0.94, 0.88) + 0.5).abs() < 1e-9);
        assert_eq!(kept_share(0.90, 0.90, 0.95), 0.0, "no gain, nothing to keep");
    }
}
