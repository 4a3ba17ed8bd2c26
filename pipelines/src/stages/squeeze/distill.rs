//! Distillation (Hinton et al. 2015): a student trained on the ensemble's softened
//! predictions mixed with the hard labels,
//!
//! `loss = alpha * T^2 * CE(teacher_T, softmax(student / T)) + (1 - alpha) * CE(y, softmax(student))`
//!
//! where `teacher_T` is the mean of the members' `softmax(z / T)`. The `T^2` keeps the
//! soft term's gradients on the scale of the hard one's as `T` grows.

use candle_core::Tensor;
use workspace::ExecError;

use super::ensemble::Probs;
use crate::models::{cross_entropy, Model};
use crate::stages::common::{err, train_err, Cx};
use crate::train::{Batches, OptimSpec, Schedule, SplitTensors, Trainer};

/// How the student learns from the teacher.
#[derive(Debug, Clone, Copy)]
pub struct Distill {
    pub temperature: f64,
    /// Weight of the soft targets (1 - alpha: the hard labels).
    pub alpha: f64,
}

impl Distill {
    /// The mean distillation loss of `logits` against the teacher's `soft`
    /// probabilities (at the temperature) and the labels `y`.
    pub fn loss(&self, logits: &Tensor, soft: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
        let t = self.temperature;
        let log_p = candle_nn::ops::log_softmax(&(logits / t)?, 1)?;
        let soft_ce = (soft * log_p)?.sum(1)?.mean(0)?.neg()?;
        let hard = cross_entropy(logits, y)?;
        (soft_ce * (self.alpha * t * t))? + (hard * (1.0 - self.alpha))?
    }
}

/// What the student trains on.
pub struct Lesson<'a> {
    pub train: &'a SplitTensors,
    /// The teacher's softened probabilities of each training example.
    pub soft: &'a Probs,
    pub steps: usize,
    pub batch_size: usize,
    pub seed: u64,
}

/// Trains `student` for `lesson.steps` steps: batches drawn like the members' (a
/// seeded order without replacement), each with its rows of the soft targets.
pub fn train_student(
    cx: &Cx<'_, '_>,
    student: &dyn Model,
    optim: &OptimSpec,
    schedule: Schedule,
    distill: Distill,
    lesson: &Lesson<'_>,
) -> Result<(), ExecError> {
    let device = &cx.device;
    let soft = Tensor::from_slice(&lesson.soft.values, (lesson.soft.rows, lesson.soft.classes), device)
        .map_err(err("soft targets"))?;
    // Batches of row indices: the same seeded order as any training run.
    let rows: Vec<u32> = (0..lesson.train.len as u32).collect();
    let index = SplitTensors {
        x: lesson.train.x.clone(),
        y: Tensor::from_vec(rows, lesson.train.len, device).map_err(err("rows"))?,
        len: lesson.train.len,
    };
    let mut batches = Batches::new(&index, lesson.batch_size, lesson.seed, "distill");
    let mut trainer = Trainer::with_schedule(student, optim, schedule, lesson.steps).map_err(train_err)?;
    cx.exec.progress.begin("squeeze: student", lesson.steps as u64);
    while trainer.step < lesson.steps {
        cx.exec.check_cancelled()?;
        let (x, rows) = batches.next_batch().map_err(err("batch"))?;
        let y = lesson.train.y.index_select(&rows, 0).map_err(err("batch"))?;
        let targets = soft.index_select(&rows, 0).map_err(err("batch"))?;
        let logits = student.forward(&x).map_err(err("student"))?;
        let loss = distill.loss(&logits, &targets, &y).map_err(err("distillation loss"))?;
        let value = trainer.step_on(&loss).map_err(train_err)?;
        if trainer.step.is_multiple_of(100) {
            cx.exec.progress.advance(trainer.step as u64, &format!("distillation loss {value:.4}"));
        }
    }
    cx.exec.progress.end();
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// One example, two classes, by hand: student logits (1, 0), teacher (0.25, 0.75)
    /// at T = 2, label 0, alpha = 0.5.
    #[test]
    fn distillation_loss_by_hand() {
        let device = Device::Cpu;
        let logits = Tensor::from_slice(&[1f32, 0.0], (1, 2), &device).unwrap();
        let soft = Tensor::from_slice(&[0.25f32, 0.75], (1, 2), &device).unwrap();
        let y = Tensor::from_slice(&[0u32], 1, &device).unwrap();
        let loss = Distill { temperature: 2.0, alpha: 0.5 }.loss(&logits, &soft, &y).unwrap();
        let log_z_t = (0.5f64.exp() + 1.0).ln(); // log-sum-exp of (0.5, 0)
        let soft_ce = -(0.25 * (0.5 - log_z_t) + 0.75 * (0.0 - log_z_t));
        let hard = (1f64.exp() + 1.0).ln() - 1.0;
        let expected = 0.5 * 4.0 * soft_ce + 0.5 * hard;
        let value = f64::from(loss.to_scalar::<f32>().unwrap());
        assert!((value - expected).abs() < 1e-5, "{value} vs {expected}");
        // alpha = 0 is plain cross-entropy on the labels.
        let plain = Distill { temperature: 2.0, alpha: 0.0 }.loss(&logits, &soft, &y).unwrap();
        assert!((f64::from(plain.to_scalar::<f32>().unwrap()) - hard).abs() < 1e-6);
    }
}
