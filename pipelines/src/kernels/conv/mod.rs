//! 2-d convolution (NCHW, f32, the same stride and padding on both axes, no dilation
//! or groups) as a candle custom op, optionally fused with ReLU and 2x2 max-pooling:
//! forward `weight · im2col(x)` with the im2col matrix packed straight from a padded
//! image (the private `Im2col` operand: never materialised); backward to the input
//! (GEMM + col2im), the weight and the bias (one GEMM against im2col plus a row of
//! ones).

use std::cell::RefCell;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{copy_short, gemm_acc, gemm_packed, MatRef, Operand, PackedA, Scratch, Start};

mod im2col;
mod ops;
mod passes;
mod upstream;

use im2col::*;
use ops::*;
use passes::*;
use upstream::Upstream;

/// Stride and zero padding, the same on both spatial axes, and the optional fused
/// ReLU and max-pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub padding: usize,
    pub stride: usize,
    /// Apply ReLU to the output inside the op (forward and backward), saving candle's
    /// separate ReLU node: its forward pass and a backward of four tensor passes.
    /// ReLU's gradient at exactly 0 is taken as 0 (PyTorch's choice); NaN stays NaN.
    pub relu: bool,
    /// Then 2x2 max-pooling with stride 2 inside the op, as [`super::max_pool2d`]
    /// does it: the full-resolution activation is never stored (the op keeps which
    /// element of each window won, one byte per pooled output, for its backward).
    pub pool: bool,
}

impl Default for Conv2dParams {
    fn default() -> Conv2dParams {
        Conv2dParams { padding: 0, stride: 1, relu: false, pool: false }
    }
}

/// Per-thread buffers, kept between calls so that steady-state training allocates
/// (and page-faults) nothing for them.
#[derive(Default)]
struct Workspace {
    gemm: Scratch,
    columns: Vec<f32>,
    padded: Vec<f32>,
    /// One sample's full-resolution activation, for the pooled forward.
    activation: Vec<f32>,
    /// One sample's full-resolution output gradient, for the backward passes.
    upstream: Vec<f32>,
}

thread_local! {
    static WORKSPACE: RefCell<Workspace> = RefCell::default();
}

/// Runs `f` with this thread's workspace (a fresh one if it is already in use).
fn with_workspace<R>(f: impl FnOnce(&mut Workspace) -> R) -> R {
    WORKSPACE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut workspace) => f(&mut workspace),
        Err(_) => f(&mut Workspace::default()),
    })
}

/// `columns` grown to at least `len` floats (contents unspecified), as a slice of `len`.
fn grown(columns: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if columns.len() < len {
        columns.resize(len, 0.0);
    }
    &mut columns[..len]
}

/// `x [batch, c_in, h, w]` convolved with `weight [c_out, c_in, kh, kw]`, plus
/// `bias [c_out]`: `[batch, c_out, h_out, w_out]` (halved with `params.pool`),
/// differentiable in all three. f32 on the CPU runs our deterministic kernels;
/// anything else falls back to candle's `conv2d`, broadcast add, `relu` and
/// `max_pool2d` (whose backward scales the gradient by 1/4: see the module docs).
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, params: Conv2dParams) -> Result<Tensor> {
    let ours = x.device().is_cpu() && [x.dtype(), weight.dtype()].iter().all(|&d| d == DType::F32);
    if !ours || bias.is_some_and(|b| b.dtype() != DType::F32) {
        let y = x.conv2d(weight, params.padding, params.stride, 1, 1)?;
        let y = match bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, bias.elem_count(), 1, 1))?)?,
            None => y,
        };
        let y = if params.relu { y.relu()? } else { y };
        return if params.pool { y.max_pool2d(2) } else { Ok(y) };
    }
    let geometry = Geometry::new(x.dims(), weight.dims(), params)?;
    let op = Conv2d { params, winners: Mutex::default() };
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        Some(bias) => {
            if bias.dims() != [geometry.c_out] {
                bail!("conv2d: bias shape {:?}, expected [{}]", bias.dims(), geometry.c_out)
            }
            x.apply_op3(&weight, &bias.contiguous()?, op)
        }
        None => x.apply_op2(&weight, op),
    }
}

/// Every size of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub padding: usize,
    pub stride: usize,
    pub h_out: usize,
    pub w_out: usize,
}

impl Geometry {
    /// The convolution's sizes (`params.relu` and `params.pool` do not change them;
    /// see [`Geometry::pooled`]).
    pub fn new(x: &[usize], weight: &[usize], params: Conv2dParams) -> Result<Geometry> {
        let (&[batch, c_in, h, w], &[c_out, c_in_w, kh, kw]) = (x, weight) else {
            bail!("conv2d: input {x:?} and weight {weight:?} must both be 4-d (NCHW, OIHW)")
        };
        if c_in != c_in_w {
            bail!("conv2d: input has {c_in} channels, weight expects {c_in_w}")
        }
        if params.stride == 0 || kh == 0 || kw == 0 {
            bail!("conv2d: stride and kernel size must be positive")
        }
        let (h_pad, w_pad) = (h + 2 * params.padding, w + 2 * params.padding);
        if h_pad < kh || w_pad < kw {
            bail!("conv2d: kernel {kh}x{kw} larger than the padded input {h_pad}x{w_pad}")
        }
        Ok(Geometry {
            batch,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            padding: params.padding,
            stride: params.stride,
            h_out: (h_pad - kh) / params.stride + 1,
            w_out: (w_pad - kw) / params.stride + 1,
        })
    }

    /// Pooled output rows and columns (2x2, stride 2; an odd last row or column is
    /// dropped).
    fn pooled(&self) -> (usize, usize) {
        (self.h_out / 2, self.w_out / 2)
    }

    /// Output pixels per channel.
    fn pixels(&self) -> usize {
        self.h_out * self.w_out
    }

    /// Rows of the im2col matrix: `c_in * kh * kw`.
    fn taps(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Floats of one input sample.
    fn image(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// A 1x1, stride-1, unpadded convolution is a plain matrix product: no im2col.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }
}

/// Index tables of the im2col matrix over a zero-padded image (`c_in x hp x wp`,
/// `hp = h + 2 * padding`): element `(tap, pixel)` is `padded[pixel_base[pixel] +
/// tap_offset[tap]]`, where tap `(ci, ky, kx)` and pixel `(oh, ow)` give
/// `ci * hp * wp + (oh * stride + ky) * wp + ow * stride + kx`. Shared by all samples.
struct Tables {
    pixel_base: Vec<usize>,
    tap_offset: Vec<usize>,
    padded_len: usize,
    /// The largest index read: the last pixel base plus the last tap offset.
    max_index: usize,
    /// Output row length, when a stride of 1 makes each output row's pixels read
    /// consecutive floats (so the gather can copy runs).
    unit_stride_row: Option<usize>,
}

impl Tables {
    fn new(g: &Geometry) -> Tables {
        let (hp, wp) = (g.h + 2 * g.padding, g.w + 2 * g.padding);
        let pixel_base: Vec<usize> =
            (0..g.h_out).flat_map(|oh| (0..g.w_out).map(move |ow| oh * g.stride * wp + ow * g.stride)).collect();
        let tap_offset: Vec<usize> = (0..g.c_in)
            .flat_map(|ci| (0..g.kh).flat_map(move |ky| (0..g.kw).map(move |kx| ci * hp * wp + ky * wp + kx)))
            .collect();
        let max_index = pixel_base.last().copied().unwrap_or(0) + tap_offset.last().copied().unwrap_or(0);
        let unit_stride_row = (g.stride == 1).then_some(g.w_out);
        Tables { pixel_base, tap_offset, padded_len: g.c_in * hp * wp, max_index, unit_stride_row }
    }
}

/// A contiguous f32 view of a custom op's operand.
pub(super) fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { bail!("{what}: f32 tensors only") };
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("{what}: contiguous tensors only") };
    Ok(&data[start..end])
}
