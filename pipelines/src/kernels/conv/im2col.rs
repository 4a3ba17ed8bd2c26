//! The im2col operand (packed from a padded image, never materialised) and col2im.

use super::*;

/// Copies sample `image` into `padded` (`c_in x hp x wp`, zero border); returns the
/// image itself when there is no padding.
pub(super) fn pad_image<'a>(g: &Geometry, image: &'a [f32], padded: &'a mut Vec<f32>) -> &'a [f32] {
    if g.padding == 0 {
        return image;
    }
    pad_image_into(g, image, padded);
    padded
}

/// Copies sample `image` into `padded` (`c_in x hp x wp`, zero border), always
/// (even without padding), so that the caller may extend it.
pub(super) fn pad_image_into(g: &Geometry, image: &[f32], padded: &mut Vec<f32>) {
    let (hp, wp) = (g.h + 2 * g.padding, g.w + 2 * g.padding);
    padded.clear();
    padded.resize(g.c_in * hp * wp, 0.0);
    for (plane, src) in padded.chunks_exact_mut(hp * wp).zip(image.chunks_exact(g.h * g.w)) {
        for (y, row) in src.chunks_exact(g.w).enumerate() {
            let at = (y + g.padding) * wp + g.padding;
            plane[at..at + g.w].copy_from_slice(row);
        }
    }
}

/// One sample's im2col matrix (`taps x pixels`, or its transpose), read on the fly
/// from the padded image while packing: never materialised. With `ones`, tap row
/// `taps` is all ones (the bias column of the weight gradient).
pub(super) struct Im2col<'a> {
    pub(super) padded: &'a [f32],
    pub(super) tables: &'a Tables,
    pub(super) ones: bool,
    pub(super) transposed: bool,
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
pub(super) fn add_run(src: &[f32], dst: &mut [f32]) {
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
pub(super) fn col2im(g: &Geometry, tables: &Tables, columns: &[f32], padded: &mut Vec<f32>, dx: &mut [f32]) {
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

/// An operand whose tap index starts at `taps_from` (a block of the weight gradient's
/// columns): taps are the rows when not `transposed`, else the columns.
pub(super) struct Shifted<'a, T> {
    pub(super) inner: &'a T,
    pub(super) taps_from: usize,
    pub(super) transposed: bool,
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
