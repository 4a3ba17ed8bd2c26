//! A small single-precision GEMM, `C += A·B`, in which every element of `C` is one
//! chain of fused multiply-adds over `k` in increasing order (see the module docs of
//! [`super`] for why that makes it deterministic). Operands are packed into
//! micro-panels with zero padding; k-, m- and n-blocking use fixed constants.

use super::Isa;

/// A read-only matrix view: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `row_stride` elements per row.
    pub fn row_major(data: &'a [f32], row_stride: usize) -> MatRef<'a> {
        MatRef { data, row_stride, col_stride: 1 }
    }

    /// The transpose of a row-major matrix with `row_stride` elements per row.
    pub fn transposed(data: &'a [f32], row_stride: usize) -> MatRef<'a> {
        MatRef { data, row_stride: 1, col_stride: row_stride }
    }

    /// Index of the last element of an `rows x cols` view (for the bounds check).
    fn last_index(&self, rows: usize, cols: usize) -> usize {
        (rows - 1) * self.row_stride + (cols - 1) * self.col_stride
    }
}

/// `dst.copy_from_slice(src)` for short slices, in fixed-size pieces of eight (a
/// variable-length copy becomes a `memcpy` call, which costs more than a panel row).
#[inline(always)]
pub(crate) fn copy_short(src: &[f32], dst: &mut [f32]) {
    let mut chunks = dst.chunks_exact_mut(8).zip(src.chunks_exact(8));
    for (d, s) in &mut chunks {
        let d: &mut [f32; 8] = d.try_into().unwrap_or_else(|_| unreachable!());
        let s: &[f32; 8] = s.try_into().unwrap_or_else(|_| unreachable!());
        *d = *s;
    }
    let done = dst.len() / 8 * 8;
    for (d, s) in dst[done..].iter_mut().zip(&src[done..]) {
        *d = *s;
    }
}

/// A matrix the GEMM can pack into micro-panels: a strided view ([`MatRef`]) or one
/// computed on the fly (the convolution's im2col matrix, never materialised).
pub trait Operand {
    /// Whether a `rows x cols` matrix can be read (all indices in bounds).
    fn covers(&self, rows: usize, cols: usize) -> bool;
    /// `dst[l * width + i] = self[i0 + i][l0 + l]` for `i < rows`, `l < depth` (an
    /// `A` panel: rows side by side).
    fn pack_rows(&self, i0: usize, rows: usize, l0: usize, depth: usize, width: usize, dst: &mut [f32]);
    /// `dst[l * width + j] = self[l0 + l][j0 + j]` for `l < depth`, `j < cols` (a `B`
    /// panel: columns side by side).
    fn pack_cols(&self, l0: usize, depth: usize, j0: usize, cols: usize, width: usize, dst: &mut [f32]);
}

impl Operand for MatRef<'_> {
    fn covers(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || self.data.len() > self.last_index(rows, cols)
    }

    fn pack_rows(&self, i0: usize, rows: usize, l0: usize, depth: usize, width: usize, dst: &mut [f32]) {
        for i in 0..rows {
            let row = (i0 + i) * self.row_stride + l0 * self.col_stride;
            if self.col_stride == 1 {
                for (l, &value) in self.data[row..row + depth].iter().enumerate() {
                    dst[l * width + i] = value;
                }
            } else {
                for l in 0..depth {
                    dst[l * width + i] = self.data[row + l * self.col_stride];
                }
            }
        }
    }

    fn pack_cols(&self, l0: usize, depth: usize, j0: usize, cols: usize, width: usize, dst: &mut [f32]) {
        let first = l0 * self.row_stride + j0 * self.col_stride;
        if self.col_stride == 1 {
            for l in 0..depth {
                let src = first + l * self.row_stride;
                copy_short(&self.data[src..src + cols], &mut dst[l * width..l * width + cols]);
            }
        } else {
            for j in 0..cols {
                let column = first + j * self.col_stride;
                for l in 0..depth {
                    dst[l * width + j] = self.data[column + l * self.row_stride];
                }
            }
        }
    }
}

/// Depth of one k-block. A fixed constant: the blocking does not change results (a
/// block continues the chain from the value stored in `C`), only the speed.
const KC: usize = 256;
/// Rows of `A` packed at once (a multiple of every micro-kernel's `MR`).
const MC: usize = 96;
/// Columns of `B` packed at once (a multiple of every micro-kernel's `NR`).
const NC: usize = 1024;

/// Reusable packing buffers (one per thread).
#[derive(Default)]
pub struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    edge: Vec<f32>,
}

/// Where each chain starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Start {
    /// From the value in `C`: `C += A·B`.
    Accumulate,
    /// From zero, without reading `C`: `C = A·B` (the same bits as zeroing `C` first).
    Zero,
}

/// `C[i][j] += sum_l A[i][l] * B[l][j]` for an `m x n` row-major `C` with `ldc`
/// elements per row; each element is one fused multiply-add chain over `l = 0..k`.
///
/// Panics if a view is too short for the shape (a bug in the caller, not input).
#[allow(clippy::too_many_arguments)]
pub fn gemm_acc(
    m: usize,
    n: usize,
    k: usize,
    a: &impl Operand,
    b: &impl Operand,
    c: &mut [f32],
    ldc: usize,
    scratch: &mut Scratch,
) {
    gemm(m, n, k, a, b, c, ldc, Start::Accumulate, scratch)
}

/// [`gemm_acc`] with a choice of where the chains start.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &impl Operand,
    b: &impl Operand,
    c: &mut [f32],
    ldc: usize,
    start: Start,
    scratch: &mut Scratch,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && c.len() > (m - 1) * ldc + n - 1, "gemm: C too short");
    if k == 0 {
        if start == Start::Zero {
            c.chunks_mut(ldc).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    assert!(a.covers(m, k), "gemm: A too short");
    assert!(b.covers(k, n), "gemm: B too short");
    let shape = Shape { m, n, k, ldc, start };
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => blocked::<x86::Avx512, _, _>(shape, Lhs::Raw(a), Rhs::Pack(b), c, scratch),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => blocked::<x86::Avx2, _, _>(shape, Lhs::Raw(a), Rhs::Pack(b), c, scratch),
        _ => blocked::<Portable, _, _>(shape, Lhs::Raw(a), Rhs::Pack(b), c, scratch),
    }
}

/// A left operand packed once into the micro-panels of one instruction set, for
/// reuse across many products (the weights, across the samples of a batch).
pub struct PackedA {
    isa: Isa,
    m: usize,
    k: usize,
    /// k-block by k-block; in each, `ceil(m / MR)` panels of `kc x MR`.
    panels: Vec<f32>,
}

impl PackedA {
    /// Packs the `m x k` matrix `a` for the instruction set in use now.
    pub fn new(m: usize, k: usize, a: &impl Operand) -> PackedA {
        assert!(a.covers(m, k), "gemm: A too short");
        let isa = Isa::detect();
        let mr = mr_of(isa);
        let m_padded = m.div_ceil(mr) * mr;
        let mut panels = vec![0f32; m_padded * k];
        let mut block = Vec::new();
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            if m > 0 {
                pack_a(a, 0, m, pc, kc, mr, &mut block);
                panels[pc * m_padded..pc * m_padded + m_padded * kc].copy_from_slice(&block[..m_padded * kc]);
            }
        }
        PackedA { isa, m, k, panels }
    }
}

/// The micro-kernel's row count on `isa`.
fn mr_of(isa: Isa) -> usize {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => <x86::Avx512 as MicroKernel>::MR,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => <x86::Avx2 as MicroKernel>::MR,
        _ => Portable::MR,
    }
}

/// [`gemm`] with a left operand packed by [`PackedA::new`] (same bits as packing it now).
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed(
    a: &PackedA,
    n: usize,
    b: &impl Operand,
    c: &mut [f32],
    ldc: usize,
    start: Start,
    scratch: &mut Scratch,
) {
    if a.m > 0 && n > 0 && a.k > 0 {
        assert!(b.covers(a.k, n), "gemm: B too short");
    }
    packed_times(a, n, Rhs::Pack(b), c, ldc, start, scratch)
}

/// `C = A·B` or `C += A·B` for a packed `A` and either kind of right operand (the
/// caller checked `B`'s bounds): the shared body of [`gemm_packed`] and
/// [`gemm_packed_rows`].
fn packed_times<B: Operand>(
    a: &PackedA,
    n: usize,
    b: Rhs<'_, B>,
    c: &mut [f32],
    ldc: usize,
    start: Start,
    scratch: &mut Scratch,
) {
    let (m, k) = (a.m, a.k);
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && c.len() > (m - 1) * ldc + n - 1, "gemm: C too short");
    if k == 0 {
        if start == Start::Zero {
            c.chunks_mut(ldc).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    let shape = Shape { m, n, k, ldc, start };
    let lhs: Lhs<'_, MatRef> = Lhs::Packed(&a.panels);
    match a.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => blocked::<x86::Avx512, _, _>(shape, lhs, b, c, scratch),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => blocked::<x86::Avx2, _, _>(shape, lhs, b, c, scratch),
        _ => blocked::<Portable, _, _>(shape, lhs, b, c, scratch),
    }
}

/// A right operand read in place, without packing: row `l` is the `n` floats from
/// `base[offsets[l]]` on. With a stride-1 convolution over a padded image, the im2col
/// matrix over whole padded rows is such a matrix (`offsets` are the taps' offsets).
pub struct Rows<'a> {
    pub base: &'a [f32],
    pub offsets: &'a [usize],
}

/// [`gemm_packed`] with a [`Rows`] right operand: the same chains (so the same bits
/// as packing the same matrix), without copying `B` into panels. `base` must extend
/// at least [`ROWS_SLACK`] floats past the last element of the last row, since
/// micro-kernels read whole panels.
///
/// Panics if `offsets` does not have `a`'s depth or `base` is too short.
pub fn gemm_packed_rows(
    a: &PackedA,
    n: usize,
    b: &Rows<'_>,
    c: &mut [f32],
    ldc: usize,
    start: Start,
    scratch: &mut Scratch,
) {
    if a.m > 0 && n > 0 {
        assert_eq!(b.offsets.len(), a.k, "gemm: B rows");
        let last = b.offsets.iter().copied().max().unwrap_or(0);
        assert!(b.base.len() >= last + n + ROWS_SLACK, "gemm: B rows too short");
    }
    packed_times::<MatRef>(a, n, Rhs::Rows(b), c, ldc, start, scratch)
}

/// Floats a [`Rows`] operand's `base` must hold past `offset + n` of its last row: a
/// micro-kernel reads its panel's whole width (at most 32 columns).
pub const ROWS_SLACK: usize = 32;

/// The left operand of [`blocked`]: packed block by block as needed, or all at once.
enum Lhs<'a, A> {
    Raw(&'a A),
    Packed(&'a [f32]),
}

/// The right operand of [`blocked`]: packed into panels block by block, or read in place.
enum Rhs<'a, B> {
    Pack(&'a B),
    Rows(&'a Rows<'a>),
}

#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    n: usize,
    k: usize,
    ldc: usize,
    start: Start,
}

/// A register-tiled inner kernel: `C[0..MR][0..NR] += Apanel · Bpanel` over `kc`
/// steps, `Apanel[l * MR + i]`, `Bpanel[l * NR + j]`.
trait MicroKernel {
    const MR: usize;
    const NR: usize;
    /// # Safety
    /// `a` holds `kc * MR` floats, `b` holds `kc * NR`, and `c` points at an
    /// `MR x NR` tile with row stride `ldc`, all valid; the CPU has the kernel's
    /// instruction set. With `load` false the chains start from zero and `c` is only
    /// written.
    unsafe fn run(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool);
    /// [`MicroKernel::run`] with `B`'s row `l` read in place at `b + offsets[l]`.
    ///
    /// # Safety
    /// As `run`, with `offsets` holding `kc` entries and `NR` floats readable from
    /// each `b + offsets[l]`.
    unsafe fn run_rows(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offsets: *const usize,
        c: *mut f32,
        ldc: usize,
        load: bool,
    );
}

fn blocked<K: MicroKernel, A: Operand, B: Operand>(
    shape: Shape,
    a: Lhs<'_, A>,
    b: Rhs<'_, B>,
    c: &mut [f32],
    scratch: &mut Scratch,
) {
    let Shape { m, n, k, ldc, start } = shape;
    let Scratch { a: a_buffer, b: b_buffer, edge } = scratch;
    edge.resize(K::MR * K::NR, 0.0);
    let m_padded = m.div_ceil(K::MR) * K::MR;
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            // The first k-block starts the chains (from C or from zero); later blocks
            // always continue them from C.
            let load = pc > 0 || start == Start::Accumulate;
            if let Rhs::Pack(b) = b {
                pack_b(b, pc, kc, jc, nc, K::NR, b_buffer);
            }
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                let a_block: &[f32] = match &a {
                    Lhs::Raw(a) => {
                        pack_a(*a, ic, mc, pc, kc, K::MR, a_buffer);
                        a_buffer
                    }
                    // Same layout: k-block at pc * m_padded, panels of MR rows in it.
                    Lhs::Packed(panels) => &panels[pc * m_padded + ic * kc..],
                };
                for jr in (0..nc).step_by(K::NR) {
                    let nr = K::NR.min(nc - jr);
                    for ir in (0..mc).step_by(K::MR) {
                        let mr = K::MR.min(mc - ir);
                        let a_panel = &a_block[(ir / K::MR) * kc * K::MR..][..kc * K::MR];
                        let origin = (ic + ir) * ldc + jc + jr;
                        // One MR x NR tile of C at `tile` (row stride `ldc`).
                        let run = |tile: *mut f32, ldc: usize| match b {
                            // SAFETY: the panels have the sizes the kernel needs (sliced
                            // here), `tile` is inside `c` (the caller asserted rows
                            // ic+ir.., columns jc+jr.. are within m x n) or is `edge`,
                            // and `blocked::<K>` only runs when K's ISA is present.
                            Rhs::Pack(_) => unsafe {
                                let b_panel = &b_buffer[(jr / K::NR) * kc * K::NR..][..kc * K::NR];
                                K::run(kc, a_panel.as_ptr(), b_panel.as_ptr(), tile, ldc, load)
                            },
                            // SAFETY: as above; every row read, offsets[l] + jc + jr + NR,
                            // lies in `base` (asserted by the caller with the slack).
                            Rhs::Rows(rows) => unsafe {
                                let (base, offsets) = (rows.base[jc + jr..].as_ptr(), rows.offsets[pc..].as_ptr());
                                K::run_rows(kc, a_panel.as_ptr(), base, offsets, tile, ldc, load)
                            },
                        };
                        if mr == K::MR && nr == K::NR {
                            // SAFETY: origin is the tile's first element, inside `c`.
                            run(unsafe { c.as_mut_ptr().add(origin) }, ldc);
                        } else {
                            if load {
                                for i in 0..K::MR {
                                    for j in 0..K::NR {
                                        edge[i * K::NR + j] =
                                            if i < mr && j < nr { c[origin + i * ldc + j] } else { 0.0 };
                                    }
                                }
                            }
                            run(edge.as_mut_ptr(), K::NR);
                            for i in 0..mr {
                                c[origin + i * ldc..][..nr].copy_from_slice(&edge[i * K::NR..][..nr]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Packs `A[i0..i0+mc][l0..l0+kc]` into panels of `mr` rows: `panel[l * mr + i]`,
/// rows past `mc` zero.
fn pack_a(a: &impl Operand, i0: usize, mc: usize, l0: usize, kc: usize, mr: usize, out: &mut Vec<f32>) {
    let panels = mc.div_ceil(mr);
    if out.len() < panels * kc * mr {
        out.resize(panels * kc * mr, 0.0);
    }
    for panel in 0..panels {
        let dst = &mut out[panel * kc * mr..][..kc * mr];
        let rows = mr.min(mc - panel * mr);
        if rows < mr {
            for l in 0..kc {
                dst[l * mr + rows..(l + 1) * mr].fill(0.0);
            }
        }
        a.pack_rows(i0 + panel * mr, rows, l0, kc, mr, dst);
    }
}

/// Packs `B[l0..l0+kc][j0..j0+nc]` into panels of `nr` columns: `panel[l * nr + j]`,
/// columns past `nc` zero.
fn pack_b(b: &impl Operand, l0: usize, kc: usize, j0: usize, nc: usize, nr: usize, out: &mut Vec<f32>) {
    let panels = nc.div_ceil(nr);
    if out.len() < panels * kc * nr {
        out.resize(panels * kc * nr, 0.0);
    }
    for panel in 0..panels {
        let dst = &mut out[panel * kc * nr..][..kc * nr];
        let cols = nr.min(nc - panel * nr);
        if cols < nr {
            for l in 0..kc {
                dst[l * nr + cols..(l + 1) * nr].fill(0.0);
            }
        }
        b.pack_cols(l0, kc, j0 + panel * nr, cols, nr, dst);
    }
}

/// The fallback kernel: the same chains with [`f32::mul_add`] (correctly rounded,
/// like the hardware FMA).
struct Portable;

impl MicroKernel for Portable {
    const MR: usize = 4;
    const NR: usize = 8;

    unsafe fn run(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
        let mut acc = [[0f32; 8]; 4];
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, value) in row.iter_mut().enumerate() {
                    // SAFETY: within the MR x NR tile the caller vouches for.
                    *value = unsafe { *c.add(i * ldc + j) };
                }
            }
        }
        for l in 0..kc {
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: l < kc, i < MR, j < NR: inside the panels.
                let a_il = unsafe { *a.add(l * 4 + i) };
                for (j, value) in row.iter_mut().enumerate() {
                    *value = a_il.mul_add(unsafe { *b.add(l * 8 + j) }, *value);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, value) in row.iter().enumerate() {
                // SAFETY: as above.
                unsafe { *c.add(i * ldc + j) = *value };
            }
        }
    }

    unsafe fn run_rows(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offsets: *const usize,
        c: *mut f32,
        ldc: usize,
        load: bool,
    ) {
        // Pack the rows into a panel, then the packed kernel: the same chains.
        let mut panel = [0f32; KC * 8];
        for (l, dst) in panel.chunks_exact_mut(8).take(kc).enumerate() {
            // SAFETY: the caller vouches for NR = 8 floats at each row start.
            unsafe { std::ptr::copy_nonoverlapping(b.add(*offsets.add(l)), dst.as_mut_ptr(), 8) };
        }
        // SAFETY: `panel` holds kc * NR floats; the rest as the caller vouches.
        unsafe { Portable::run(kc, a, panel.as_ptr(), c, ldc, load) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86;
