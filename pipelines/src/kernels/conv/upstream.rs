//! The gradient arriving at the convolution's output, as the backward passes read it:
//! one sample's rows at a time, at full resolution. With the fused ReLU and pooling,
//! candle hands the backward the gradient of the *pooled* (and rectified) output;
//! routing it back to full resolution used to be an op of its own, which zeroed,
//! wrote and re-read a `batch x c_out x h_out x w_out` buffer (6.4 MB for the
//! Fashion-MNIST convnet's first layer) on one thread. Here each sample's rows are
//! expanded into a per-thread buffer that stays in cache, right where the GEMMs read
//! them: the same values, so the same bits.

use super::*;

/// How the backward passes get `dy` at full resolution.
#[derive(Clone, Copy)]
pub(super) enum Upstream<'a> {
    /// `dy` itself (no fused activation).
    Plain(&'a [f32]),
    /// `dy` where the ReLU output `y` is positive, else 0.
    Relu { dy: &'a [f32], y: &'a [f32] },
    /// The pooled gradient routed to each window's winner (0 elsewhere), masked by
    /// ReLU on the pooled output `y` when `relu`.
    Pooled { dy: &'a [f32], y: &'a [f32], winners: &'a [u8], relu: bool },
}

impl<'a> Upstream<'a> {
    /// Checks that `dy`, `y` (and the winners) have the sizes `g` implies: full
    /// resolution, or pooled for [`Upstream::Pooled`].
    pub(super) fn check(&self, g: &Geometry) -> Result<()> {
        let full = g.batch * g.c_out * g.pixels();
        let (ho, wo) = g.pooled();
        let pooled = g.batch * g.c_out * ho * wo;
        let ok = match *self {
            Upstream::Plain(dy) => dy.len() == full,
            Upstream::Relu { dy, y } => dy.len() == full && y.len() == full,
            Upstream::Pooled { dy, y, winners, .. } => {
                dy.len() == pooled && y.len() == pooled && winners.len() == pooled
            }
        };
        if !ok {
            bail!("conv2d backward: the output gradient does not match {g:?}")
        }
        Ok(())
    }

    /// Sample `n`'s full-resolution `dy` for output channels `rows` (`rows.len() x
    /// pixels`, row-major): borrowed when it exists as such, else written into `buffer`.
    pub(super) fn rows<'b>(&self, g: &Geometry, n: usize, rows: Range<usize>, buffer: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        let pixels = g.pixels();
        let planes = n * g.c_out + rows.start..n * g.c_out + rows.end;
        match *self {
            Upstream::Plain(dy) => &dy[planes.start * pixels..planes.end * pixels],
            Upstream::Relu { dy, y } => {
                let out = grown(buffer, rows.len() * pixels);
                let range = planes.start * pixels..planes.end * pixels;
                for ((o, &d), &v) in out.iter_mut().zip(&dy[range.clone()]).zip(&y[range]) {
                    *o = if v > 0.0 { d } else { 0.0 };
                }
                out
            }
            Upstream::Pooled { dy, y, winners, relu } => {
                let out = grown(buffer, rows.len() * pixels);
                let (ho, wo) = g.pooled();
                if g.h_out % 2 == 1 || g.w_out % 2 == 1 {
                    // The dropped last row or column gets no gradient.
                    out.fill(0.0);
                }
                let pooled = ho * wo;
                for (plane, out) in planes.zip(out.chunks_exact_mut(pixels)) {
                    let range = plane * pooled..(plane + 1) * pooled;
                    unpool_plane(g, &dy[range.clone()], &y[range.clone()], &winners[range], relu, out);
                }
                out
            }
        }
    }
}

/// One plane's full-resolution gradient: each window's `dy` to its winner (0 where
/// the pooled ReLU output is not positive), 0 at the window's other three positions.
fn unpool_plane(g: &Geometry, dy: &[f32], y: &[f32], winners: &[u8], relu: bool, out: &mut [f32]) {
    let wo = g.w_out / 2;
    let rows = dy.chunks_exact(wo).zip(y.chunks_exact(wo)).zip(winners.chunks_exact(wo));
    for (oy, ((dy_row, y_row), code_row)) in rows.enumerate() {
        let (upper, lower) = out[2 * oy * g.w_out..].split_at_mut(g.w_out);
        let (top, bottom) = (&mut upper[..2 * wo], &mut lower[..2 * wo]);
        let windows = top.chunks_exact_mut(2).zip(bottom.chunks_exact_mut(2));
        for ((t, b), ((&d, &y), &code)) in windows.zip(dy_row.iter().zip(y_row).zip(code_row)) {
            // Selects: all four positions written, the winner gets the gradient.
            let d = if !relu || y > 0.0 { d } else { 0.0 };
            t[0] = if code == 0 { d } else { 0.0 };
            t[1] = if code == 1 { d } else { 0.0 };
            b[0] = if code == 2 { d } else { 0.0 };
            b[1] = if code == 3 { d } else { 0.0 };
        }
    }
}
