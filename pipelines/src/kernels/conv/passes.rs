//! The forward and backward passes on plain slices.

use super::*;

/// Forward, fused with 2x2 max-pooling: each sample's activation goes through a
/// per-thread buffer; returns the pooled output and each window's winner.
pub(super) fn forward_pooled(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> (Vec<f32>, Vec<u8>) {
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
            let image = &x[n * g.image()..(n + 1) * g.image()];
            let mut full = std::mem::take(&mut workspace.activation);
            // The full-resolution activation: over whole padded rows where it can be.
            let (plane_len, row_len) = match wide_rows(g) {
                Some(wp) => {
                    let Workspace { padded, gemm, .. } = workspace;
                    forward_sample_wide(g, &tables, &weight, image, bias, relu, &mut full, padded, gemm);
                    (g.h_out * wp, wp)
                }
                None => {
                    full.resize(g.c_out * g.pixels(), 0.0);
                    forward_sample(g, &tables, &weight, image, bias, relu, &mut full, workspace);
                    (g.pixels(), g.w_out)
                }
            };
            let planes = full.chunks_exact(plane_len).zip(y_n.chunks_exact_mut(ho * wo));
            for ((plane, y_plane), codes) in planes.zip(winners_n.chunks_exact_mut(ho * wo)) {
                crate::kernels::pool::pool_plane_recording(plane, row_len, y_plane, codes, wo);
            }
            workspace.activation = full;
        })
    });
    (y, winners)
}

/// The padded row length when the forward reads the im2col matrix in place: a
/// stride-1, not pointwise convolution whose dropped columns (`wp - w_out` of each
/// computed row of `wp`) are at most 1/8 of the row. Then row `(ci, ky, kx)` of the im2col matrix over whole padded rows
/// (`h_out x wp` pixels, the last `wp - w_out` of each output row computed and dropped)
/// is the padded image from `ci * hp * wp + ky * wp + kx` on. On narrow images (8x8
/// digits: 10 columns for 8) the dropped columns cost more than packing saves.
fn wide_rows(g: &Geometry) -> Option<usize> {
    let wp = g.w + 2 * g.padding;
    (g.stride == 1 && !g.is_pointwise() && wp * 7 <= g.w_out * 8).then_some(wp)
}

/// One sample's forward over whole padded rows into `out` (`c_out x h_out x wp`):
/// each used output is the same chain as in [`forward_sample`] (bias, then the taps in
/// order), without packing the im2col matrix.
#[allow(clippy::too_many_arguments)]
fn forward_sample_wide(
    g: &Geometry,
    tables: &Tables,
    weight: &PackedA,
    image: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    out: &mut Vec<f32>,
    padded: &mut Vec<f32>,
    scratch: &mut Scratch,
) {
    let wp = g.w + 2 * g.padding;
    let wide = g.h_out * wp;
    out.resize(g.c_out * wide, 0.0);
    pad_image_into(g, image, padded);
    // Panels read up to the kernel width past the last row (see `ROWS_SLACK`).
    padded.resize(tables.padded_len + g.kw + ROWS_SLACK, 0.0);
    let start = match bias {
        Some(bias) => {
            for (row, &b) in out.chunks_exact_mut(wide).zip(bias) {
                row.fill(b);
            }
            Start::Accumulate
        }
        None => Start::Zero,
    };
    let rows = Rows { base: padded, offsets: &tables.tap_offset };
    gemm_packed_rows(weight, wide, &rows, out, wide, start, scratch);
    if relu {
        out.iter_mut().for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v });
    }
}

/// One sample's `y_n = bias + weight · im2col(image)` (then ReLU if `relu`).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_sample(
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
pub(super) fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
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
            let Some(wp) = wide_rows(g) else {
                forward_sample(g, &tables, &weight, image, bias, relu, y_n, workspace);
                return;
            };
            let Workspace { padded, activation, gemm, .. } = workspace;
            forward_sample_wide(g, &tables, &weight, image, bias, relu, activation, padded, gemm);
            // Keep the first w_out of each padded-width output row.
            let wide_planes = activation.chunks_exact(g.h_out * wp);
            for (plane, y_plane) in wide_planes.zip(y_n.chunks_exact_mut(pixels)) {
                for (row, y_row) in plane.chunks_exact(wp).zip(y_plane.chunks_exact_mut(g.w_out)) {
                    y_row.copy_from_slice(&row[..g.w_out]);
                }
            }
        })
    });
    y
}

/// Input gradient: `dx[n] = col2im(weightᵀ · dy[n])`, parallel over samples.
pub(super) fn input_grad(g: &Geometry, dy: &Upstream<'_>, weight: &[f32]) -> Vec<f32> {
    let (pixels, taps) = (g.pixels(), g.taps());
    let mut dx = vec![0f32; g.batch * g.image()];
    if pixels == 0 || g.image() == 0 {
        return dx;
    }
    let tables = Tables::new(g);
    let weight_t = PackedA::new(taps, g.c_out, &MatRef::transposed(weight, taps));
    dx.par_chunks_mut(g.image()).enumerate().for_each(|(n, dx_n)| {
        with_workspace(|workspace| {
            let Workspace { gemm, columns, padded, upstream, .. } = workspace;
            let dy_n = MatRef::row_major(dy.rows(g, n, 0..g.c_out, upstream), pixels);
            if g.is_pointwise() {
                gemm_packed(&weight_t, pixels, &dy_n, dx_n, pixels, Start::Zero, gemm);
            } else {
                let columns = grown(columns, taps * pixels);
                gemm_packed(&weight_t, pixels, &dy_n, columns, pixels, Start::Zero, gemm);
                col2im(g, &tables, columns, padded, dx_n);
            }
        })
    });
    dx
}

/// Splits `0..len` into `parts` ranges whose inner bounds are multiples of `align`.
pub(super) fn split(len: usize, parts: usize, align: usize) -> Vec<Range<usize>> {
    let mut bounds: Vec<usize> = (0..=parts).map(|i| (len * i / parts).div_ceil(align) * align).collect();
    bounds[parts] = len;
    bounds.iter_mut().for_each(|b| *b = (*b).min(len));
    bounds.dedup();
    bounds.windows(2).map(|w| w[0]..w[1]).collect()
}

/// Weight (and bias) gradient, flat: `dweight [c_out, taps]` then `dbias [c_out]`.
/// `dW_aug = sum over n of dy[n] · [im2col(x[n]); ones]ᵀ`: one chain over `(n, p)` per
/// element. Parallel over blocks of output elements, never over the reduction.
pub(super) fn weight_grad(g: &Geometry, dy: &Upstream<'_>, x: &[f32], with_bias: bool) -> Vec<f32> {
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
                let Workspace { gemm: scratch, padded, upstream, .. } = workspace;
                let transposed = cols.len() < rows.len();
                let mut block = vec![0f32; rows.len() * cols.len()];
                for n in 0..g.batch {
                    let image = &x[n * g.image()..(n + 1) * g.image()];
                    let padded = pad_image(g, image, padded);
                    // The im2col rows of this block's columns: a tap window [cols.start..].
                    let window = Im2col { padded, tables: &tables, ones: with_bias, transposed: !transposed };
                    let window = Shifted { inner: &window, taps_from: cols.start, transposed: !transposed };
                    let dy_n = dy.rows(g, n, rows.clone(), upstream);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The forward over whole padded rows gives the bits of the packed im2col forward
    /// (the same chains), pooled or not, with and without bias.
    #[test]
    fn wide_forward_is_the_packed_forward_bit_for_bit() {
        let mut rng = crate::rng::Rng::new(0, "conv/wide");
        let mut normals = |n: usize| (0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
        for (c_in, side, c_out, padding) in [(1, 28, 32, 1), (32, 14, 64, 1), (3, 17, 8, 1), (2, 18, 5, 0)] {
            let params = Conv2dParams { padding, stride: 1, relu: true, pool: false };
            let g = Geometry::new(&[3, c_in, side, side], &[c_out, c_in, 3, 3], params).unwrap();
            assert!(wide_rows(&g).is_some(), "{g:?} takes the wide path");
            let (x, w, b) = (normals(3 * g.image()), normals(c_out * g.taps()), normals(c_out));
            let tables = Tables::new(&g);
            let packed = PackedA::new(g.c_out, g.taps(), &MatRef::row_major(&w, g.taps()));
            for bias in [Some(b.as_slice()), None] {
                let wide = forward(&g, &x, &w, bias, true);
                let mut reference = vec![0f32; wide.len()];
                let per_sample = g.c_out * g.pixels();
                for (n, y_n) in reference.chunks_exact_mut(per_sample).enumerate() {
                    let image = &x[n * g.image()..(n + 1) * g.image()];
                    let mut workspace = Workspace::default();
                    forward_sample(&g, &tables, &packed, image, bias, true, y_n, &mut workspace);
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&wide), bits(&reference), "{g:?} bias {}", bias.is_some());
            }
        }
    }
}
