//! The x86-64 micro-kernels: AVX2 + FMA (6 x 16) and AVX-512F (8 x 32). Each comes in
//! two variants generated from one body: `B` rows from a packed panel (`b + l * NR`)
//! or read in place (`b + offsets[l]`, see [`super::Rows`]); the chains are the same.

use std::arch::x86_64::*;

use super::MicroKernel;

/// One kernel's body: `MR` rows of two `LANES`-wide registers, `B` row `l` at
/// `$row(l)`. Defines `$name(kc, a, b, $extra.., c, ldc, load)`.
macro_rules! kernel {
    (
        $(#[$attr:meta])* fn $name:ident($($extra:ident: $extra_ty:ty),*)
        [$features:literal, mr: $mr:literal, lanes: $lanes:literal, $zero:ident, $load_ps:ident, $store_ps:ident,
         $set1:expr, $fma:ident]
        row($b:ident, $l:ident) = $row:expr
    ) => {
        $(#[$attr])*
        #[target_feature(enable = $features)]
        unsafe fn $name(
            kc: usize,
            a: *const f32,
            $b: *const f32,
            $($extra: $extra_ty,)*
            c: *mut f32,
            ldc: usize,
            load: bool,
        ) {
            // SAFETY (whole body): pointer offsets stay inside the A panel (l < kc),
            // the B rows and the MR x NR tile of `c`, as the caller guarantees.
            unsafe {
                let mut acc = [[$zero(); 2]; $mr];
                if load {
                    for (i, row) in acc.iter_mut().enumerate() {
                        row[0] = $load_ps(c.add(i * ldc));
                        row[1] = $load_ps(c.add(i * ldc + $lanes));
                    }
                }
                for $l in 0..kc {
                    let b_row: *const f32 = $row;
                    let b0 = $load_ps(b_row);
                    let b1 = $load_ps(b_row.add($lanes));
                    for (i, row) in acc.iter_mut().enumerate() {
                        let a_il = $set1(a.add($l * $mr + i));
                        row[0] = $fma(a_il, b0, row[0]);
                        row[1] = $fma(a_il, b1, row[1]);
                    }
                }
                for (i, row) in acc.iter().enumerate() {
                    $store_ps(c.add(i * ldc), row[0]);
                    $store_ps(c.add(i * ldc + $lanes), row[1]);
                }
            }
        }
    };
}

kernel! {
    /// AVX2 on a packed `B` panel.
    fn avx2_6x16()
    ["avx2,fma", mr: 6, lanes: 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps,
     |p: *const f32| _mm256_broadcast_ss(&*p), _mm256_fmadd_ps]
    row(b, l) = b.add(l * 16)
}

kernel! {
    /// AVX2 with `B` rows in place.
    fn avx2_6x16_rows(offsets: *const usize)
    ["avx2,fma", mr: 6, lanes: 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps,
     |p: *const f32| _mm256_broadcast_ss(&*p), _mm256_fmadd_ps]
    row(b, l) = b.add(*offsets.add(l))
}

kernel! {
    /// AVX-512 on a packed `B` panel (an 8 x 32 tile: 16 accumulators).
    fn avx512_8x32()
    ["avx512f", mr: 8, lanes: 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps,
     |p: *const f32| _mm512_set1_ps(*p), _mm512_fmadd_ps]
    row(b, l) = b.add(l * 32)
}

kernel! {
    /// AVX-512 with `B` rows in place.
    fn avx512_8x32_rows(offsets: *const usize)
    ["avx512f", mr: 8, lanes: 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps,
     |p: *const f32| _mm512_set1_ps(*p), _mm512_fmadd_ps]
    row(b, l) = b.add(*offsets.add(l))
}

/// Implements [`MicroKernel`] for `$kernel` with the two generated functions.
macro_rules! micro_kernel {
    ($(#[$attr:meta])* $kernel:ident, $mr:literal x $nr:literal, $packed:ident, $rows:ident) => {
        $(#[$attr])*
        pub struct $kernel;

        impl MicroKernel for $kernel {
            const MR: usize = $mr;
            const NR: usize = $nr;

            unsafe fn run(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
                // SAFETY: the caller checked the instruction set at run time and
                // vouches for the pointers.
                unsafe { $packed(kc, a, b, c, ldc, load) }
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
                // SAFETY: as `run`, with the rows the caller vouches for.
                unsafe { $rows(kc, a, b, offsets, c, ldc, load) }
            }
        }
    };
}

micro_kernel!(
    /// 6 x 16 tile, two 8-lane registers per row: 12 accumulators.
    Avx2, 6 x 16, avx2_6x16, avx2_6x16_rows
);
micro_kernel!(
    /// 8 x 32 tile, two 16-lane registers per row: 16 accumulators.
    Avx512, 8 x 32, avx512_8x32, avx512_8x32_rows
);
