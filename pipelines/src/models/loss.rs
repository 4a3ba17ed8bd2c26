//! The training loss and accuracy over logits: a fused softmax cross-entropy on CPU.

use candle_core::{DType, Result, Tensor};

/// Mean cross-entropy of logits `[batch, classes]` against u32 labels. On CPU one
/// fused op (log-sum-exp per row forward, softmax minus one-hot backward) replaces
/// the nine graph nodes of log_softmax + nll; elsewhere candle-nn's composition.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let fusable = logits.device().is_cpu()
        && logits.dtype() == DType::F32
        && labels.dtype() == DType::U32
        && logits.rank() == 2
        && labels.rank() == 1;
    if fusable {
        logits.contiguous()?.apply_op2(&labels.contiguous()?, SoftmaxCrossEntropy)
    } else {
        candle_nn::loss::cross_entropy(logits, labels)
    }
}

struct SoftmaxCrossEntropy;

fn rows_and_labels<'a>(
    logits: &'a candle_core::CpuStorage,
    logits_layout: &candle_core::Layout,
    labels: &'a candle_core::CpuStorage,
    labels_layout: &candle_core::Layout,
) -> Result<(&'a [f32], &'a [u32], usize)> {
    use candle_core::CpuStorage;
    let (CpuStorage::F32(values), CpuStorage::U32(targets)) = (logits, labels) else {
        candle_core::bail!("softmax-cross-entropy: f32 logits and u32 labels only")
    };
    let (Some((v0, v1)), Some((t0, t1))) = (logits_layout.contiguous_offsets(), labels_layout.contiguous_offsets())
    else {
        candle_core::bail!("softmax-cross-entropy: contiguous tensors only")
    };
    let (batch, classes) = logits_layout.shape().dims2()?;
    if t1 - t0 != batch {
        candle_core::bail!("softmax-cross-entropy: {batch} rows but {} labels", t1 - t0)
    }
    let targets = &targets[t0..t1];
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= classes) {
        candle_core::bail!("softmax-cross-entropy: label {bad} out of range for {classes} classes")
    }
    Ok((&values[v0..v1], targets, classes))
}

impl candle_core::CustomOp2 for SoftmaxCrossEntropy {
    fn name(&self) -> &'static str {
        "softmax-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (values, targets, classes) = rows_and_labels(s1, l1, s2, l2)?;
        let mut total = 0f64;
        for (row, &target) in values.chunks_exact(classes).zip(targets) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
            total += f64::from(max + sum.ln() - row[target as usize]);
        }
        let loss = (total / targets.len().max(1) as f64) as f32;
        Ok((candle_core::CpuStorage::F32(vec![loss]), candle_core::Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (batch, classes) = logits.dims2()?;
        let values: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let targets: Vec<u32> = labels.to_vec1()?;
        let scale = 1.0 / batch.max(1) as f32;
        let mut out = Vec::with_capacity(values.len());
        for (row, &target) in values.chunks_exact(classes).zip(&targets) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = row.iter().map(|&v| (v - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            for (class, e) in exps.iter().enumerate() {
                let onehot = if class == target as usize { 1.0 } else { 0.0 };
                out.push((e / sum - onehot) * scale);
            }
        }
        let grad_logits = Tensor::from_vec(out, (batch, classes), logits.device())?.broadcast_mul(grad)?;
        Ok((Some(grad_logits), None))
    }
}

/// Share of rows whose arg-max logit equals the label.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let predicted = logits.argmax(1)?;
    let correct = predicted.eq(labels)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok(correct as f64 / labels.dim(0)? as f64)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn fused_cross_entropy_matches_candle_nn_in_value_and_gradient() {
        let values: Vec<f32> = (0..5 * 4).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.8).collect();
        let labels = Tensor::from_vec(vec![0u32, 3, 1, 2, 3], 5, &Device::Cpu).unwrap();
        let fused = Var::from_vec(values.clone(), (5, 4), &Device::Cpu).unwrap();
        let reference = Var::from_vec(values, (5, 4), &Device::Cpu).unwrap();
        let a = cross_entropy(fused.as_tensor(), &labels).unwrap();
        let b = candle_nn::loss::cross_entropy(reference.as_tensor(), &labels).unwrap();
        let (va, vb) = (a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
        assert!((va - vb).abs() < 1e-5, "{va} vs {vb}");
        let ga = a.backward().unwrap().get(fused.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gb =
            b.backward().unwrap().get(reference.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (x, y) in ga.iter().zip(&gb) {
            assert!((x - y).abs() < 1e-6, "{ga:?} vs {gb:?}");
        }
        let bad = Tensor::from_vec(vec![0u32, 9, 1, 2, 3], 5, &Device::Cpu).unwrap();
        assert!(cross_entropy(fused.as_tensor(), &bad).is_err(), "a label past the classes is an error");
    }
}
