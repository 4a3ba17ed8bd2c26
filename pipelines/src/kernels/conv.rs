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

/// Copies sample `image` into `padded` (`c_in x hp x wp`, zero border); returns the
/// image itself when there is no padding.
fn pad_image<'a>(g: &Geometry, image: &'a [f32], padded: &'a mut Vec<f32>) -> &'a [f32] {
    if g.padding == 0 {
        return image;
    }
    let (hp, wp) = (g.h + 2 * g.padding, g.w + 2 * g.padding);
    padded.clear();
    padded.resize(g.c_in * hp * wp, 0.0);
    for (plane, src) in padded.chunks_exact_mut(hp * wp).zip(image.chunks_exact(g.h * g.w)) {
        for (y, row) in src.chunks_exact(g.w).enumerate() {
            let at = (y + g.padding) * wp + g.padding;
            plane[at..at + g.w].copy_from_slice(row);
        }
    }
    padded
}

/// One sample's im2col matrix (`taps x pixels`, or its transpose), read on the fly
/// from the padded image while packing: never materialised. With `ones`, tap row
/// `taps` is all ones (the bias column of the weight gradient).
struct Im2col<'a> {
    padded: &'a [f32],
    tables: &'a Tables,
    ones: bool,
    transposed: bool,
}

impl Im2col<'_> {
    fn taps(&self) -> usize {
        self.tables.tap_offset.len() + usize::from(self.ones)
    }

    /// `dst[t * t_stride + p * p_stride]` for taps `t0..t0+nt`, pixels `p0..p0+np`
    /// (positions relative to `t0` and `p0`).
    ///
    /// Panics if the ranges or `dst` are out of bounds; inside, the reads are unchecked
    /// (this gather is the hot loop of packing).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn gather(&self, t0: usize, nt: usize, p0: usize, np: usize, t_stride: usize, p_stride: usize, dst: &mut [f32]) {
        if nt == 0 || np == 0 {
            return;
        }
        let real = self.tables.tap_offset.len();
        assert!(t0 + nt <= self.taps() && p0 + np <= self.tables.pixel_base.len(), "im2col: range out of bounds");
        assert!((nt - 1) * t_stride + (np - 1) * p_stride < dst.len(), "im2col: destination too short");
        assert!(self.padded.len() > self.tables.max_index, "im2col: padded image too short");
        let bases = &self.tables.pixel_base[p0..p0 + np];
        // The ones row (the bias column), if it is in range, is written separately.
        let ones_at = (t0..t0 + nt).contains(&real).then(|| real - t0);
        if let Some(t) = ones_at {
            for p in 0..np {
                dst[t * t_stride + p * p_stride] = 1.0;
            }
        }
        let taps = &self.tables.tap_offset[t0.min(real)..(t0 + nt).min(real)];
        match (p_stride, self.tables.unit_stride_row) {
            (1, Some(row_len)) => {
                // Consecutive pixels of one output row read consecutive floats: copy runs.
                // The first run ends where p0's output row does; the others are whole
                // rows (no division per run).
                let first_run = row_len - p0 % row_len;
                for (t, &offset) in taps.iter().enumerate() {
                    let row = &mut dst[t * t_stride..];
                    let (mut p, mut run) = (0, first_run.min(np));
                    while p < np {
                        let start = bases[p] + offset;
                        copy_short(&self.padded[start..start + run], &mut row[p..p + run]);
                        p += run;
                        run = row_len.min(np - p);
                    }
                }
            }
            (1, None) => {
                for (t, &offset) in taps.iter().enumerate() {
                    let row = &mut dst[t * t_stride..t * t_stride + np];
                    for (value, &base) in row.iter_mut().zip(bases) {
                        // SAFETY: base + offset <= max_index < padded.len() (asserted).
                        *value = unsafe { *self.padded.get_unchecked(base + offset) };
                    }
                }
            }
            _ => {
                // Pixel-major, so that each pixel's taps are written contiguously when
                // t_stride is 1 (the weight gradient's transposed panels).
                for (p, &base) in bases.iter().enumerate() {
                    let src = &self.padded[base..];
                    for (t, &offset) in taps.iter().enumerate() {
                        // SAFETY: base + offset <= max_index < padded.len(), and the
                        // destination index is within the bound asserted above.
                        unsafe { *dst.get_unchecked_mut(t * t_stride + p * p_stride) = *src.get_unchecked(offset) };
                    }
                }
            }
        }
    }
}

/// `dst[i] += src[i]` for short runs, eight at a time in fixed-size arrays (the rows
/// are too short for the loop vectoriser's unrolled loop).
#[inline(always)]
fn add_run(src: &[f32], dst: &mut [f32]) {
    let mut chunks = dst.chunks_exact_mut(8).zip(src.chunks_exact(8));
    for (d, s) in &mut chunks {
        let d: &mut [f32; 8] = d.try_into().unwrap_or_else(|_| unreachable!());
        let s: &[f32; 8] = s.try_into().unwrap_or_else(|_| unreachable!());
        for i in 0..8 {
            d[i] += s[i];
        }
    }
    let done = dst.len() / 8 * 8;
    for (d, s) in dst[done..].iter_mut().zip(&src[done..]) {
        *d += *s;
    }
}

impl Operand for Im2col<'_> {
    fn covers(&self, rows: usize, cols: usize) -> bool {
        let (taps, pixels) = if self.transposed { (cols, rows) } else { (rows, cols) };
        taps <= self.taps() && pixels <= self.tables.pixel_base.len() && self.padded.len() > self.tables.max_index
    }

    fn pack_rows(&self, i0: usize, rows: usize, l0: usize, depth: usize, width: usize, dst: &mut [f32]) {
        if self.transposed {
            // Rows are pixels, depth runs over taps.
            self.gather(l0, depth, i0, rows, width, 1, dst);
        } else {
            self.gather(i0, rows, l0, depth, 1, width, dst);
        }
    }

    fn pack_cols(&self, l0: usize, depth: usize, j0: usize, cols: usize, width: usize, dst: &mut [f32]) {
        if self.transposed {
            // Depth runs over pixels, columns are taps.
            self.gather(j0, cols, l0, depth, 1, width, dst);
        } else {
            self.gather(l0, depth, j0, cols, width, 1, dst);
        }
    }
}

/// The adjoint of im2col: `dx = sum over taps` of `columns` (`taps x pixels`)
/// scattered back to the pixels they were read from, each input pixel's taps added
/// in tap order (into a padded buffer whose border is then dropped). Overwrites `dx`.
fn col2im(g: &Geometry, tables: &Tables, columns: &[f32], padded: &mut Vec<f32>, dx: &mut [f32]) {
    let pixels = g.pixels();
    padded.clear();
    padded.resize(tables.padded_len, 0.0);
    for (row, &offset) in columns.chunks_exact(pixels).zip(&tables.tap_offset) {
        let dst = &mut padded[offset..];
        match tables.unit_stride_row {
            // Each output row adds into consecutive floats.
            Some(row_len) => {
                for (src, &base) in row.chunks_exact(row_len).zip(tables.pixel_base.iter().step_by(row_len)) {
                    add_run(src, &mut dst[base..base + row_len]);
                }
            }
            None => {
                for (&value, &base) in row.iter().zip(&tables.pixel_base) {
                    dst[base] += value;
                }
            }
        }
    }
    let (hp, wp) = (g.h + 2 * g.padding, g.w + 2 * g.padding);
    for (plane, src) in dx.chunks_exact_mut(g.h * g.w).zip(padded.chunks_exact(hp * wp)) {
        for (y, row) in plane.chunks_exact_mut(g.w).enumerate() {
            let at = (y + g.padding) * wp + g.padding;
            row.copy_from_slice(&src[at..at + g.w]);
        }
    }
}

/// A contiguous f32 view of a custom op's operand.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { bail!("{what}: f32 tensors only") };
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("{what}: contiguous tensors only") };
    Ok(&data[start..end])
}

/// Forward, fused with 2x2 max-pooling: each sample's activation goes through a
/// per-thread buffer; returns the pooled output and each window's winner.
fn forward_pooled(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>, relu: bool) -> (Vec<f32>, Vec<u8>) {
    let (ho, wo) = g.pooled();
    let per_sample = g.c_out * ho * wo;
    let mut y = vec![0f32; g.batch * per_sample];
    let mut winners = vec![0u8; g.batch * per_sample];
    if per_sample == 0 {
        return (y, winners);
    }
    let tables = Tables::new(g);
    let weight = PackedA::new(g.c_out, g.taps(), &MatRef::row_major(weight, g.taps()));
    let chunks = y.par_chunks_mut(per_sample).zip(winners.par_chunks_mut(per_sample));
    chunks.enumerate().for_each(|(n, (y_n, winners_n))| {
        with_workspace(|workspace| {
            let mut full = std::mem::take(&mut workspace.activation);
            full.resize(g.c_out * g.pixels(), 0.0);
            forward_sample(
                g,
                &tables,
                &weight,
                &x[n * g.image()..(n + 1) * g.image()],
                bias,
                relu,
                &mut full,
                workspace,
            );
            let planes = full.chunks_exact(g.pixels()).zip(y_n.chunks_exact_mut(ho * wo));
            for ((plane, y_plane), codes) in planes.zip(winners_n.chunks_exact_mut(ho * wo)) {
                super::pool::pool_plane_recording(plane, g.w_out, y_plane, codes, wo);
            }
            workspace.activation = full;
        })
    });
    (y, winners)
}

/// One sample's `y_n = bias + weight · im2col(image)` (then ReLU if `relu`).
#[allow(clippy::too_many_arguments)]
fn forward_sample(
    g: &Geometry,
    tables: &Tables,
    weight: &PackedA,
    image: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    y_n: &mut [f32],
    workspace: &mut Workspace,
) {
    let pixels = g.pixels();
    let start = match bias {
        Some(bias) => {
            for (row, &b) in y_n.chunks_exact_mut(pixels).zip(bias) {
                row.fill(b);
            }
            Start::Accumulate
        }
        None => Start::Zero,
    };
    if g.is_pointwise() {
        let b = MatRef::row_major(image, pixels);
        gemm_packed(weight, pixels, &b, y_n, pixels, start, &mut workspace.gemm);
    } else {
        let padded = pad_image(g, image, &mut workspace.padded);
        let b = Im2col { padded, tables, ones: false, transposed: false };
        gemm_packed(weight, pixels, &b, y_n, pixels, start, &mut workspace.gemm);
    }
    if relu {
        // Not `max(0.0)`: a NaN must survive for the non-finite guard. A select,
        // not a branch (signs are random: a branch would mispredict).
        y_n.iter_mut().for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v });
    }
}

/// Forward: `y[n] = bias + weight · im2col(x[n])` (then ReLU if `relu`), parallel
/// over samples.
fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    let (pixels, taps) = (g.pixels(), g.taps());
    let mut y = vec![0f32; g.batch * g.c_out * pixels];
    if pixels == 0 {
        return y;
    }
    let tables = Tables::new(g);
    let weight = PackedA::new(g.c_out, taps, &MatRef::row_major(weight, taps));
    y.par_chunks_mut(g.c_out * pixels).enumerate().for_each(|(n, y_n)| {
        with_workspace(|workspace| {
            let image = &x[n * g.image()..(n + 1) * g.image()];
            forward_sample(g, &tables, &weight, image, bias, relu, y_n, workspace);
        })
    });
    y
}

/// The pooled op's backward into the full-resolution gradient: each window's `dy`
/// to its winner (0 where the pooled ReLU output is not positive), zero elsewhere.
fn unpool(g: &Geometry, dy: &[f32], y: &[f32], winners: &[u8], relu: bool) -> Vec<f32> {
    let (ho, wo) = g.pooled();
    let (pixels, pooled) = (g.pixels(), ho * wo);
    let mut full = vec![0f32; g.batch * g.c_out * pixels];
    if pooled == 0 {
        return full;
    }
    full.par_chunks_mut(pixels).enumerate().for_each(|(plane, out)| {
        let range = plane * pooled..(plane + 1) * pooled;
        let (dy, y, winners) = (&dy[range.clone()], &y[range.clone()], &winners[range]);
        let rows = dy.chunks_exact(wo).zip(y.chunks_exact(wo)).zip(winners.chunks_exact(wo));
        for (oy, ((dy_row, y_row), code_row)) in rows.enumerate() {
            let (upper, lower) = out[2 * oy * g.w_out..].split_at_mut(g.w_out);
            let (top, bottom) = (&mut upper[..2 * wo], &mut lower[..2 * wo]);
            let windows = top.chunks_exact_mut(2).zip(bottom.chunks_exact_mut(2));
            for ((t, b), ((&g, &y), &code)) in windows.zip(dy_row.iter().zip(y_row).zip(code_row)) {
                // Selects: all four positions written, the winner gets the gradient.
                let g = if !relu || y > 0.0 { g } else { 0.0 };
                t[0] = if code == 0 { g } else { 0.0 };
                t[1] = if code == 1 { g } else { 0.0 };
                b[0] = if code == 2 { g } else { 0.0 };
                b[1] = if code == 3 { g } else { 0.0 };
            }
        }
    });
    full
}

/// `dy` where the ReLU output `y` is positive, else 0.
fn relu_mask(dy: &[f32], y: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; dy.len()];
    out.par_chunks_mut(1 << 14).zip(dy.par_chunks(1 << 14).zip(y.par_chunks(1 << 14))).for_each(|(out, (dy, y))| {
        for ((o, &d), &v) in out.iter_mut().zip(dy).zip(y) {
            *o = if v > 0.0 { d } else { 0.0 };
        }
    });
    out
}

/// Input gradient: `dx[n] = col2im(weightᵀ · dy[n])`, parallel over samples.
fn input_grad(g: &Geometry, dy: &[f32], weight: &[f32]) -> Vec<f32> {
    let (pixels, taps) = (g.pixels(), g.taps());
    let mut dx = vec![0f32; g.batch * g.image()];
    if pixels == 0 || g.image() == 0 {
        return dx;
    }
    let tables = Tables::new(g);
    let weight_t = PackedA::new(taps, g.c_out, &MatRef::transposed(weight, taps));
    dx.par_chunks_mut(g.image()).enumerate().for_each(|(n, dx_n)| {
        with_workspace(|workspace| {
            let dy_n = MatRef::row_major(&dy[n * g.c_out * pixels..(n + 1) * g.c_out * pixels], pixels);
            if g.is_pointwise() {
                gemm_packed(&weight_t, pixels, &dy_n, dx_n, pixels, Start::Zero, &mut workspace.gemm);
            } else {
                let columns = grown(&mut workspace.columns, taps * pixels);
                gemm_packed(&weight_t, pixels, &dy_n, columns, pixels, Start::Zero, &mut workspace.gemm);
                col2im(g, &tables, columns, &mut workspace.padded, dx_n);
            }
        })
    });
    dx
}

/// Splits `0..len` into `parts` ranges whose inner bounds are multiples of `align`.
fn split(len: usize, parts: usize, align: usize) -> Vec<Range<usize>> {
    let mut bounds: Vec<usize> = (0..=parts).map(|i| (len * i / parts).div_ceil(align) * align).collect();
    bounds[parts] = len;
    bounds.iter_mut().for_each(|b| *b = (*b).min(len));
    bounds.dedup();
    bounds.windows(2).map(|w| w[0]..w[1]).collect()
}

/// Weight (and bias) gradient, flat: `dweight [c_out, taps]` then `dbias [c_out]`.
/// `dW_aug = sum over n of dy[n] · [im2col(x[n]); ones]ᵀ`: one chain over `(n, p)` per
/// element. Parallel over blocks of output elements, never over the reduction.
fn weight_grad(g: &Geometry, dy: &[f32], x: &[f32], with_bias: bool) -> Vec<f32> {
    let (pixels, taps) = (g.pixels(), g.taps());
    let columns_total = taps + usize::from(with_bias);
    let mut out = vec![0f32; g.c_out * columns_total];
    if pixels == 0 || g.c_out == 0 {
        return out;
    }
    let tables = Tables::new(g);
    // Narrow layers (few taps) split the output channels instead of the taps.
    let threads = rayon::current_num_threads().max(1);
    let column_parts = (columns_total / 32).clamp(1, threads);
    let row_parts = (threads / column_parts).clamp(1, g.c_out.div_ceil(8));
    let tasks: Vec<(Range<usize>, Range<usize>)> = split(g.c_out, row_parts, 8)
        .into_iter()
        .flat_map(|rows| split(columns_total, column_parts, 16).into_iter().map(move |cols| (rows.clone(), cols)))
        .collect();
    // A block is computed as `dy · colsᵀ` (rows x cols) or, when it has fewer columns
    // than rows, as its transpose `cols · dyᵀ`, so the wider side runs along the SIMD
    // lanes. Either way each element is the same chain: fma(dy, col, acc) over (n, p).
    let blocks: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|(rows, cols)| {
            with_workspace(|workspace| {
                let transposed = cols.len() < rows.len();
                let mut block = vec![0f32; rows.len() * cols.len()];
                for n in 0..g.batch {
                    let image = &x[n * g.image()..(n + 1) * g.image()];
                    let padded = pad_image(g, image, &mut workspace.padded);
                    // The im2col rows of this block's columns: a tap window [cols.start..].
                    let window = Im2col { padded, tables: &tables, ones: with_bias, transposed: !transposed };
                    let window = Shifted { inner: &window, taps_from: cols.start, transposed: !transposed };
                    let dy_n = &dy[(n * g.c_out + rows.start) * pixels..(n * g.c_out + rows.end) * pixels];
                    let scratch = &mut workspace.gemm;
                    if transposed {
                        let b = MatRef::transposed(dy_n, pixels);
                        gemm_acc(cols.len(), rows.len(), pixels, &window, &b, &mut block, rows.len(), scratch);
                    } else {
                        let a = MatRef::row_major(dy_n, pixels);
                        gemm_acc(rows.len(), cols.len(), pixels, &a, &window, &mut block, cols.len(), scratch);
                    }
                }
                block
            })
        })
        .collect();
    for ((rows, cols), block) in tasks.iter().zip(&blocks) {
        let transposed = cols.len() < rows.len();
        for (i, co) in rows.clone().enumerate() {
            for (j, column) in cols.clone().enumerate() {
                let value = if transposed { block[j * rows.len() + i] } else { block[i * cols.len() + j] };
                if column == taps {
                    out[g.c_out * taps + co] = value;
                } else {
                    out[co * taps + column] = value;
                }
            }
        }
    }
    out
}

/// An operand whose tap index starts at `taps_from` (a block of the weight gradient's
/// columns): taps are the rows when not `transposed`, else the columns.
struct Shifted<'a, T> {
    inner: &'a T,
    taps_from: usize,
    transposed: bool,
}

impl<T: Operand> Operand for Shifted<'_, T> {
    fn covers(&self, rows: usize, cols: usize) -> bool {
        if self.transposed {
            self.inner.covers(rows, cols + self.taps_from)
        } else {
            self.inner.covers(rows + self.taps_from, cols)
        }
    }

    fn pack_rows(&self, i0: usize, rows: usize, l0: usize, depth: usize, width: usize, dst: &mut [f32]) {
        if self.transposed {
            self.inner.pack_rows(i0, rows, l0 + self.taps_from, depth, width, dst)
        } else {
            self.inner.pack_rows(i0 + self.taps_from, rows, l0, depth, width, dst)
        }
    }

    fn pack_cols(&self, l0: usize, depth: usize, j0: usize, cols: usize, width: usize, dst: &mut [f32]) {
        if self.transposed {
            self.inner.pack_cols(l0, depth, j0 + self.taps_from, cols, width, dst)
        } else {
            self.inner.pack_cols(l0 + self.taps_from, depth, j0, cols, width, dst)
        }
    }
}

/// The differentiable op: `(x, weight)` or `(x, weight, bias)`.
struct Conv2d {
    params: Conv2dParams,
    /// With `params.pool`: each pooled output's winning window element, written by
    /// the forward pass for the backward pass (one op value per application).
    winners: Mutex<Option<Arc<Vec<u8>>>>,
}

impl Conv2d {
    fn fwd(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(x.1.dims(), w.1.dims(), self.params)?;
        let (x, w) = (f32_slice(x.0, x.1, "conv2d")?, f32_slice(w.0, w.1, "conv2d")?);
        if self.params.pool {
            let (y, winners) = forward_pooled(&g, x, w, bias, self.params.relu);
            *self.winners.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(winners));
            let (ho, wo) = g.pooled();
            return Ok((CpuStorage::F32(y), Shape::from((g.batch, g.c_out, ho, wo))));
        }
        let y = forward(&g, x, w, bias, self.params.relu);
        Ok((CpuStorage::F32(y), Shape::from((g.batch, g.c_out, g.h_out, g.w_out))))
    }

    /// Gradients of `x` (if tracked) and of the weight and bias (if either is).
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        with_bias: bool,
        wants_weight: bool,
    ) -> Result<Grads> {
        let g = Geometry::new(x.dims(), w.dims(), self.params)?;
        let dy = dy.contiguous()?;
        let dy = if self.params.pool {
            let winners = self.winners.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let Some(winners) = winners else { bail!("conv2d backward: the pooled forward left no winners") };
            dy.apply_op2_no_bwd(&y.contiguous()?, &Unpool { geometry: g, winners, relu: self.params.relu })?
        } else if self.params.relu {
            dy.apply_op2_no_bwd(&y.contiguous()?, &ReluMask)?
        } else {
            dy
        };
        let dx = if x.track_op() { Some(dy.apply_op2_no_bwd(w, &InputGrad { geometry: g })?) } else { None };
        if !wants_weight {
            return Ok(Grads { dx, dw: None, db: None });
        }
        let flat = dy.apply_op2_no_bwd(x, &WeightGrad { geometry: g, with_bias })?;
        let dw = flat.narrow(0, 0, g.c_out * g.taps())?.reshape(w.shape())?;
        let db = if with_bias { Some(flat.narrow(0, g.c_out * g.taps(), g.c_out)?) } else { None };
        Ok(Grads { dx, dw: Some(dw), db })
    }
}

struct Grads {
    dx: Option<Tensor>,
    dw: Option<Tensor>,
    db: Option<Tensor>,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "pipe-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grads = self.grads(x, w, y, dy, false, w.track_op())?;
        Ok((grads.dx, grads.dw))
    }
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "pipe-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bias = f32_slice(s3, l3, "conv2d bias")?;
        if l2.dims().first() != Some(&bias.len()) {
            bail!("conv2d: bias has {} elements for weight {:?}", bias.len(), l2.dims())
        }
        self.fwd((s1, l1), (s2, l2), Some(bias))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grads = self.grads(x, w, y, dy, true, w.track_op() || b.track_op())?;
        Ok((grads.dx, grads.dw, grads.db))
    }
}

/// `(dy, weight) -> dx`, no backward of its own.
struct InputGrad {
    geometry: Geometry,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "pipe-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let (dy, w) = (f32_slice(s1, l1, "conv2d backward")?, f32_slice(s2, l2, "conv2d backward")?);
        if dy.len() != g.batch * g.c_out * g.pixels() || w.len() != g.c_out * g.taps() {
            bail!("conv2d backward: gradient {:?} or weight {:?} do not match {g:?}", l1.dims(), l2.dims())
        }
        let dx = input_grad(g, dy, w);
        Ok((CpuStorage::F32(dx), Shape::from((g.batch, g.c_in, g.h, g.w))))
    }
}

/// `(dy, x) -> [dweight (flat), dbias]`, no backward of its own.
struct WeightGrad {
    geometry: Geometry,
    with_bias: bool,
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "pipe-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let (dy, x) = (f32_slice(s1, l1, "conv2d backward")?, f32_slice(s2, l2, "conv2d backward")?);
        if dy.len() != g.batch * g.c_out * g.pixels() || x.len() != g.batch * g.image() {
            bail!("conv2d backward: gradient {:?} or input {:?} do not match {g:?}", l1.dims(), l2.dims())
        }
        let out = weight_grad(g, dy, x, self.with_bias);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// `(dy, y) -> dy * (y > 0)`: the fused ReLU's backward, no backward of its own.
struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "pipe-relu-mask"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (dy, y) = (f32_slice(s1, l1, "relu backward")?, f32_slice(s2, l2, "relu backward")?);
        if dy.len() != y.len() {
            bail!("relu backward: gradient {:?} does not match output {:?}", l1.dims(), l2.dims())
        }
        Ok((CpuStorage::F32(relu_mask(dy, y)), l1.shape().clone()))
    }
}

/// `(dy, y) -> dy_full`: the fused pooling's (and ReLU's) backward, no backward of
/// its own.
struct Unpool {
    geometry: Geometry,
    winners: Arc<Vec<u8>>,
    relu: bool,
}

impl CustomOp2 for Unpool {
    fn name(&self) -> &'static str {
        "pipe-conv2d-unpool"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let (dy, y) = (f32_slice(s1, l1, "conv2d backward")?, f32_slice(s2, l2, "conv2d backward")?);
        let (ho, wo) = g.pooled();
        let len = g.batch * g.c_out * ho * wo;
        if dy.len() != len || y.len() != len || self.winners.len() != len {
            bail!("conv2d backward: pooled gradient {:?} or output {:?} do not match {g:?}", l1.dims(), l2.dims())
        }
        let full = unpool(g, dy, y, &self.winners, self.relu);
        Ok((CpuStorage::F32(full), Shape::from((g.batch, g.c_out, g.h_out, g.w_out))))
    }
}
