//! 2x2 max-pooling with stride 2 (NCHW, f32) as a candle custom op, forward and
//! backward. The gradient goes to the first maximum of each window in row-major
//! order (PyTorch's choice; candle's own op splits it among tied maxima).

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Max over each 2x2 window, stride 2, of `x [batch, channels, h, w]`:
/// `[batch, channels, h / 2, w / 2]` (a trailing odd row or column is dropped).
/// f32 on the CPU runs our kernel; anything else falls back to candle's op.
pub fn max_pool2d(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return x.max_pool2d(2);
    }
    if x.rank() != 4 {
        bail!("max_pool2d: input {:?} must be 4-d (NCHW)", x.dims())
    }
    x.contiguous()?.apply_op1(MaxPool2x2)
}

/// Planes handled by one rayon task: about 16k input floats.
fn planes_per_task(h: usize, w: usize) -> usize {
    (16 * 1024 / (h * w).max(1)).max(1)
}

/// Index within the 2x2 window at `(2 * oy, 2 * ox)` of its first maximum (a NaN
/// counts as the maximum), as an offset into `plane`.
/// Written with selects, not branches: on real activations the comparisons are
/// unpredictable.
#[inline(always)]
fn argmax(plane: &[f32], w: usize, oy: usize, ox: usize) -> usize {
    let top = 2 * oy * w + 2 * ox;
    let (mut best, mut max) = (top, plane[top]);
    for offset in [top + 1, top + w, top + w + 1] {
        let value = plane[offset];
        let wins = value > max || (value.is_nan() & !max.is_nan());
        best = if wins { offset } else { best };
        max = if wins { value } else { max };
    }
    best
}

fn dims(layout: &Layout) -> Result<(usize, usize, usize)> {
    let &[n, c, h, w] = layout.dims() else { bail!("max_pool2d: input {:?} must be 4-d", layout.dims()) };
    Ok((n * c, h, w))
}

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { bail!("max_pool2d: f32 tensors only") };
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("max_pool2d: contiguous tensors only") };
    Ok(&data[start..end])
}

struct MaxPool2x2;

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "pipe-max-pool-2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, h, w) = dims(layout)?;
        let x = f32_slice(storage, layout)?;
        let (ho, wo) = (h / 2, w / 2);
        let mut y = vec![0f32; planes * ho * wo];
        if ho * wo > 0 {
            let per_task = planes_per_task(h, w);
            y.par_chunks_mut(per_task * ho * wo).enumerate().for_each(|(task, y_chunk)| {
                for (i, y_plane) in y_chunk.chunks_exact_mut(ho * wo).enumerate() {
                    let plane = &x[(task * per_task + i) * h * w..][..h * w];
                    for oy in 0..ho {
                        for ox in 0..wo {
                            y_plane[oy * wo + ox] = plane[argmax(plane, w, oy, ox)];
                        }
                    }
                }
            });
        }
        let &[n, c, ..] = layout.dims() else { bail!("max_pool2d: 4-d input only") };
        Ok((CpuStorage::F32(y), Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &MaxPool2x2Grad)?))
    }
}

/// `(x, dy) -> dx`: each window's gradient to its first maximum.
struct MaxPool2x2Grad;

impl CustomOp2 for MaxPool2x2Grad {
    fn name(&self) -> &'static str {
        "pipe-max-pool-2x2-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, h, w) = dims(l1)?;
        let (x, dy) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let (ho, wo) = (h / 2, w / 2);
        if dy.len() != planes * ho * wo {
            bail!("max_pool2d backward: gradient {:?} does not match input {:?}", l2.dims(), l1.dims())
        }
        let mut dx = vec![0f32; planes * h * w];
        if ho * wo > 0 {
            let per_task = planes_per_task(h, w);
            dx.par_chunks_mut(per_task * h * w).enumerate().for_each(|(task, dx_chunk)| {
                for (i, dx_plane) in dx_chunk.chunks_exact_mut(h * w).enumerate() {
                    let index = task * per_task + i;
                    let plane = &x[index * h * w..][..h * w];
                    let dy_plane = &dy[index * ho * wo..][..ho * wo];
                    for oy in 0..ho {
                        for ox in 0..wo {
                            dx_plane[argmax(plane, w, oy, ox)] = dy_plane[oy * wo + ox];
                        }
                    }
                }
            });
        }
        Ok((CpuStorage::F32(dx), Shape::from(l1.dims())))
    }
}
