//! 2x2 max-pooling with stride 2 (NCHW, f32) as a candle custom op, forward and
//! backward. The gradient goes to the first maximum of each window in row-major
//! order (PyTorch's choice; candle's own op splits it among tied maxima).

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
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

/// Whether `value` replaces `max` as a window's maximum in row-major order: it is
/// larger, or the first NaN. Selects, not branches: on activations the comparisons
/// are unpredictable.
#[inline(always)]
#[allow(clippy::eq_op, clippy::neg_cmp_op_on_partial_ord)]
fn wins(value: f32, max: f32) -> bool {
    // = value > max, or value is NaN while max is not; `&` on two comparisons (no
    // short-circuit) so that the loop vectorises.
    !(value <= max) & (max == max)
}

/// The maximum of the window `[a, b; c, d]` under [`wins`].
#[inline(always)]
fn window_max(a: f32, b: f32, c: f32, d: f32) -> f32 {
    let mut max = a;
    for value in [b, c, d] {
        max = if wins(value, max) { value } else { max };
    }
    max
}

/// One plane's pooling: `y[oy][ox]` from rows `2 oy` and `2 oy + 1`.
fn pool_plane(plane: &[f32], w: usize, y_plane: &mut [f32], wo: usize) {
    for (oy, out) in y_plane.chunks_exact_mut(wo).enumerate() {
        let top = &plane[2 * oy * w..][..2 * wo];
        let bottom = &plane[(2 * oy + 1) * w..][..2 * wo];
        for ((o, t), b) in out.iter_mut().zip(top.chunks_exact(2)).zip(bottom.chunks_exact(2)) {
            *o = window_max(t[0], t[1], b[0], b[1]);
        }
    }
}

/// The gradient `g` of window `[a, b; c, d]` with maximum `max`, sent to the first
/// element equal to `max` (the first NaN if `max` is NaN).
#[inline(always)]
#[allow(clippy::eq_op)]
fn route(a: f32, b: f32, c: f32, d: f32, max: f32, g: f32) -> [f32; 4] {
    let _ = d;
    let hit = |v: f32| (v == max) | ((v != v) & (max != max));
    let e0 = hit(a);
    let e1 = hit(b) & !e0;
    let e2 = hit(c) & !(e0 | e1);
    let e3 = !(e0 | e1 | e2);
    [if e0 { g } else { 0.0 }, if e1 { g } else { 0.0 }, if e2 { g } else { 0.0 }, if e3 { g } else { 0.0 }]
}

/// [`pool_plane`] that also records which element of each window was the maximum
/// (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right), for a fused backward.
pub(crate) fn pool_plane_recording(plane: &[f32], w: usize, y_plane: &mut [f32], codes: &mut [u8], wo: usize) {
    #[cfg(target_arch = "x86_64")]
    if super::Isa::detect() == super::Isa::Avx512 {
        assert!(y_plane.len() == codes.len() && y_plane.len().is_multiple_of(wo.max(1)), "pool: output sizes");
        assert!(2 * wo <= w && plane.len() >= (2 * (y_plane.len() / wo.max(1))) * w, "pool: plane too short");
        // SAFETY: AVX-512F is present; the asserts keep every row read and written in
        // bounds (rows 2 oy and 2 oy + 1 of `plane` hold 2 wo floats each).
        unsafe { x86::pool_plane_recording_avx512(plane, w, y_plane, codes, wo) };
        return;
    }
    pool_plane_recording_portable(plane, w, y_plane, codes, wo)
}

/// [`pool_plane_recording`] in portable Rust (the same selections as the AVX-512 path).
fn pool_plane_recording_portable(plane: &[f32], w: usize, y_plane: &mut [f32], codes: &mut [u8], wo: usize) {
    for (oy, (out, code_row)) in y_plane.chunks_exact_mut(wo).zip(codes.chunks_exact_mut(wo)).enumerate() {
        let top = &plane[2 * oy * w..][..2 * wo];
        let bottom = &plane[(2 * oy + 1) * w..][..2 * wo];
        // Four windows at a time in fixed-size arrays, so that the comparisons and
        // selects run side by side; then the rest one by one.
        let quads = wo / 4;
        for q in 0..quads {
            let t: &[f32; 8] = top[8 * q..8 * q + 8].try_into().unwrap_or_else(|_| unreachable!());
            let b: &[f32; 8] = bottom[8 * q..8 * q + 8].try_into().unwrap_or_else(|_| unreachable!());
            let mut max = [0f32; 4];
            let mut code = [0u32; 4];
            for i in 0..4 {
                (max[i], code[i]) = window_max_code(t[2 * i], t[2 * i + 1], b[2 * i], b[2 * i + 1]);
            }
            out[4 * q..4 * q + 4].copy_from_slice(&max);
            for (c, &value) in code_row[4 * q..4 * q + 4].iter_mut().zip(&code) {
                *c = value as u8;
            }
        }
        for ox in 4 * quads..wo {
            let (max, code) = window_max_code(top[2 * ox], top[2 * ox + 1], bottom[2 * ox], bottom[2 * ox + 1]);
            (out[ox], code_row[ox]) = (max, code as u8);
        }
    }
}

/// [`window_max`] and the position (0 to 3) of the element it picked.
#[inline(always)]
fn window_max_code(a: f32, b: f32, c: f32, d: f32) -> (f32, u32) {
    let (mut max, mut code) = (a, 0u32);
    for (value, position) in [(b, 1u32), (c, 2), (d, 3)] {
        let better = wins(value, max);
        max = if better { value } else { max };
        code = if better { position } else { code };
    }
    (max, code)
}

/// One plane's gradient: each window's `dy` to its first element equal to the
/// forward maximum `y` (the one [`window_max`] picked: it only moves on to a later
/// element that is strictly larger, or on the first NaN).
fn unpool_plane(plane: &[f32], w: usize, y_plane: &[f32], dy_plane: &[f32], dx_plane: &mut [f32], wo: usize) {
    for (oy, (y_row, dy_row)) in y_plane.chunks_exact(wo).zip(dy_plane.chunks_exact(wo)).enumerate() {
        let (upper, lower) = dx_plane[2 * oy * w..].split_at_mut(w);
        let (dx_top, dx_bottom) = (&mut upper[..2 * wo], &mut lower[..2 * wo]);
        let top = &plane[2 * oy * w..][..2 * wo];
        let bottom = &plane[(2 * oy + 1) * w..][..2 * wo];
        // Four windows at a time in fixed-size arrays (the rows are too short, 7 to 14
        // windows, for the loop vectoriser's unrolled loop), then the rest one by one.
        let quads = wo / 4;
        for q in 0..quads {
            let t: &[f32; 8] = top[8 * q..8 * q + 8].try_into().unwrap_or_else(|_| unreachable!());
            let b: &[f32; 8] = bottom[8 * q..8 * q + 8].try_into().unwrap_or_else(|_| unreachable!());
            let m: &[f32; 4] = y_row[4 * q..4 * q + 4].try_into().unwrap_or_else(|_| unreachable!());
            let g: &[f32; 4] = dy_row[4 * q..4 * q + 4].try_into().unwrap_or_else(|_| unreachable!());
            let mut out_top = [0f32; 8];
            let mut out_bottom = [0f32; 8];
            for i in 0..4 {
                let d = route(t[2 * i], t[2 * i + 1], b[2 * i], b[2 * i + 1], m[i], g[i]);
                (out_top[2 * i], out_top[2 * i + 1], out_bottom[2 * i], out_bottom[2 * i + 1]) =
                    (d[0], d[1], d[2], d[3]);
            }
            dx_top[8 * q..8 * q + 8].copy_from_slice(&out_top);
            dx_bottom[8 * q..8 * q + 8].copy_from_slice(&out_bottom);
        }
        for ox in 4 * quads..wo {
            let d = route(top[2 * ox], top[2 * ox + 1], bottom[2 * ox], bottom[2 * ox + 1], y_row[ox], dy_row[ox]);
            (dx_top[2 * ox], dx_top[2 * ox + 1], dx_bottom[2 * ox], dx_bottom[2 * ox + 1]) = (d[0], d[1], d[2], d[3]);
        }
    }
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
                    pool_plane(plane, w, y_plane, wo);
                }
            });
        }
        let &[n, c, ..] = layout.dims() else { bail!("max_pool2d: 4-d input only") };
        Ok((CpuStorage::F32(y), Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(&y.contiguous()?, &dy.contiguous()?, &MaxPool2x2Grad)?))
    }
}

/// `(x, y, dy) -> dx`: each window's gradient to its first maximum.
struct MaxPool2x2Grad;

impl CustomOp3 for MaxPool2x2Grad {
    fn name(&self) -> &'static str {
        "pipe-max-pool-2x2-grad"
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
        let (planes, h, w) = dims(l1)?;
        let (x, y, dy) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (ho, wo) = (h / 2, w / 2);
        if y.len() != planes * ho * wo || dy.len() != y.len() {
            bail!(
                "max_pool2d backward: output {:?} or gradient {:?} do not match input {:?}",
                l2.dims(),
                l3.dims(),
                l1.dims()
            )
        }
        let mut dx = vec![0f32; planes * h * w];
        if ho * wo > 0 {
            let per_task = planes_per_task(h, w);
            dx.par_chunks_mut(per_task * h * w).enumerate().for_each(|(task, dx_chunk)| {
                for (i, dx_plane) in dx_chunk.chunks_exact_mut(h * w).enumerate() {
                    let index = task * per_task + i;
                    let plane = &x[index * h * w..][..h * w];
                    let (y_plane, dy_plane) = (&y[index * ho * wo..][..ho * wo], &dy[index * ho * wo..][..ho * wo]);
                    unpool_plane(plane, w, y_plane, dy_plane, dx_plane, wo);
                }
            });
        }
        Ok((CpuStorage::F32(dx), Shape::from(l1.dims())))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::pool_plane_recording`] sixteen windows at a time: the even and odd
    /// floats of two rows are the window's four elements, and [`super::wins`] becomes
    /// two compare masks (`!(value <= max)` is `NLE_UQ`, `max == max` is `ORD_Q`), so
    /// each window picks the same element as the portable loop.
    ///
    /// # Safety
    /// AVX-512F is present; `plane` holds rows `0..2 * y_plane.len() / wo` of `w`
    /// floats, `2 * wo <= w`, and `codes` is as long as `y_plane`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pool_plane_recording_avx512(
        plane: &[f32],
        w: usize,
        y_plane: &mut [f32],
        codes: &mut [u8],
        wo: usize,
    ) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let rows = y_plane.len() / wo.max(1);
        for oy in 0..rows {
            let mut ox = 0;
            while ox < wo {
                let n = (wo - ox).min(16);
                // Lanes of the 2n input floats: the first 16 and the rest.
                let lanes = 2 * n;
                let low: __mmask16 = if lanes >= 16 { 0xffff } else { (1u16 << lanes) - 1 };
                let high: __mmask16 = if lanes > 16 { ((1u32 << (lanes - 16)) - 1) as __mmask16 } else { 0 };
                let out: __mmask16 = ((1u32 << n) - 1) as __mmask16;
                // SAFETY (block): masked loads and stores touch only lanes inside the
                // rows and outputs the caller vouches for; masked-off lanes never fault.
                unsafe {
                    let top = plane.as_ptr().add(2 * oy * w + 2 * ox);
                    let bottom = plane.as_ptr().add((2 * oy + 1) * w + 2 * ox);
                    let (t0, t1) = (_mm512_maskz_loadu_ps(low, top), _mm512_maskz_loadu_ps(high, top.add(16)));
                    let (b0, b1) = (_mm512_maskz_loadu_ps(low, bottom), _mm512_maskz_loadu_ps(high, bottom.add(16)));
                    let candidates = [
                        (_mm512_permutex2var_ps(t0, odd, t1), 1),
                        (_mm512_permutex2var_ps(b0, even, b1), 2),
                        (_mm512_permutex2var_ps(b0, odd, b1), 3),
                    ];
                    let mut max = _mm512_permutex2var_ps(t0, even, t1);
                    let mut code = _mm512_setzero_si512();
                    for (value, position) in candidates {
                        let wins =
                            _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(value, max) & _mm512_cmp_ps_mask::<_CMP_ORD_Q>(max, max);
                        max = _mm512_mask_blend_ps(wins, max, value);
                        code = _mm512_mask_blend_epi32(wins, code, _mm512_set1_epi32(position));
                    }
                    _mm512_mask_storeu_ps(y_plane.as_mut_ptr().add(oy * wo + ox), out, max);
                    _mm512_mask_cvtepi32_storeu_epi8(codes.as_mut_ptr().add(oy * wo + ox).cast(), out, code);
                }
                ox += n;
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    /// The AVX-512 pooling picks the same maximum and winner as the portable loop,
    /// NaNs, ties and signed zeros included, for row widths around the 16 lanes.
    #[test]
    fn avx512_pooling_matches_the_portable_loop() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let specials = [f32::NAN, 0.0, -0.0, 1.0, 1.0, -1.0, f32::INFINITY, f32::NEG_INFINITY];
        let mut rng = crate::rng::Rng::new(0, "pool/avx512");
        for wo in [1, 2, 7, 8, 14, 15, 16, 17, 31, 33] {
            for w in [2 * wo, 2 * wo + 1] {
                let rows = 3;
                let plane: Vec<f32> = (0..2 * rows * w)
                    .map(|_| match rng.below(4) {
                        0 => specials[rng.below(specials.len() as u64) as usize],
                        _ => (rng.below(5) as f32) - 2.0,
                    })
                    .collect();
                let (mut y_fast, mut codes_fast) = (vec![0f32; rows * wo], vec![9u8; rows * wo]);
                let (mut y_slow, mut codes_slow) = (vec![0f32; rows * wo], vec![9u8; rows * wo]);
                // SAFETY: AVX-512F checked above; the sizes are the ones the function needs.
                unsafe { super::x86::pool_plane_recording_avx512(&plane, w, &mut y_fast, &mut codes_fast, wo) };
                super::pool_plane_recording_portable(&plane, w, &mut y_slow, &mut codes_slow, wo);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y_fast), bits(&y_slow), "maxima, wo {wo} w {w}");
                assert_eq!(codes_fast, codes_slow, "winners, wo {wo} w {w}");
            }
        }
    }
}
