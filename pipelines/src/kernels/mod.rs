//! Deterministic CPU kernels for convolutional nets: conv2d (forward, backward to
//! input, weight and bias), 2x2 max-pooling and the dense layer ([`linear`]), as
//! candle custom ops.
//!
//! candle's own CPU `conv2d` trains the digits CNN at about a quarter of PyTorch's
//! speed; these kernels are a small GEMM of our own ([`gemm`]) over an im2col matrix
//! that is never materialised (the GEMM packs its panels straight from a zero-padded
//! copy of each image), run over the batch with rayon, and plug into candle's
//! autograd through [`candle_core::CustomOp1`]/[`candle_core::CustomOp2`]/
//! [`candle_core::CustomOp3`] (`cpu_fwd` + `bwd`). On other devices and dtypes the
//! public functions fall back to candle's ops.
//!
//! API: [`conv2d`]`(x, weight, Some(bias), Conv2dParams { padding, stride, relu, pool })`
//! and [`max_pool2d`]`(x)`. `relu` and `pool` fuse the ReLU and a 2x2 max-pool into
//! the convolution (one autograd node instead of three: candle's own ReLU backward is
//! four tensor passes, and every node costs a zero-filled gradient buffer and an
//! add). Pooling sends a window's gradient to its first maximum in row-major order
//! (PyTorch's choice; a NaN counts as the maximum); ReLU's gradient at 0 is 0.
//! candle's `max_pool2d` backward scales every gradient by 1/4, and its conv2d input
//! gradient has the wrong shape for stride 2 when `h + 2 * padding - k` is odd; the
//! tests check against f64 finite differences where candle cannot be the reference.
//!
//! # Determinism
//!
//! Results are bitwise identical for any rayon thread count and on any x86-64 CPU,
//! whichever instruction set is picked at run time (AVX-512, AVX2+FMA, or the scalar
//! fallback), because the order of the floating-point operations that produce each
//! output element is fixed by the problem shape alone:
//!
//! 1. **One fused chain per GEMM element.** [`gemm::gemm_acc`] computes `C += A·B`
//!    so that every `C[i][j]` is `c = fma(a[i][l], b[l][j], c)` for `l = 0, 1, ..., k-1`
//!    in that order, starting from the value already in `C` (or from `+0.0`, which
//!    gives the same bits as a zeroed `C`). SIMD lanes run over
//!    *different* output elements (the `j` of a micro-tile), never over `l`, so the
//!    vector width (8 or 16 lanes) and the micro-tile shape change how many chains run
//!    side by side, not the arithmetic of any chain. There is no horizontal reduction.
//!    The scalar fallback uses [`f32::mul_add`], which is the same correctly rounded
//!    fused operation as the `vfmadd` instructions.
//! 2. **k-blocking continues the chain.** The GEMM splits `k` into blocks (a fixed
//!    constant, not derived from cache sizes), but a block starts from the partial
//!    value left in `C` by the previous block, and a register holding `c` is bit for
//!    bit the value stored to and reloaded from memory; so the blocking is invisible in
//!    the result. (The `gemm` crate instead adds each k-block's partial sum into the
//!    destination, with a block size derived from the detected L1/L2 sizes, and picks a
//!    horizontally-reducing kernel when both operands are contiguous along k; its
//!    results can therefore differ between a Zen 3 and a Zen 4. For `k <= 512` it uses
//!    one block, but the weight gradient's `k` is `batch x height x width`.)
//! 3. **Threads own whole outputs.** The forward pass and the input gradient are
//!    parallel over batch samples, each of which writes its own output slice. The
//!    weight gradient reduces over the batch: it is parallel over blocks of *output*
//!    elements (columns, or rows for narrow layers), and each block runs the whole
//!    chain over all samples in order `n = 0..batch` itself; the split decides only
//!    who computes an element, never how. (A block narrower than it is tall is
//!    computed transposed, `fma(col, dy, c)` instead of `fma(dy, col, c)`: the same
//!    bits, as the product inside an FMA is exact and commutative.)
//! 4. **Fixed orders elsewhere.** The bias enters the forward chain as its start
//!    value; the bias gradient is the weight-gradient GEMM against a row of ones (so it
//!    is a chain over `(n, p)` too); col2im adds the kernel taps of each input pixel in
//!    tap order within one thread; max-pooling has no arithmetic at all.
//!
//! Denormals are not flushed (Rust never sets FTZ/DAZ), on every path alike. The tests
//! check all of this bitwise: each instruction set against the defining FMA chain
//! (`every_instruction_set_gives_the_same_bits_as_the_defining_chain`, which covers
//! AVX-512 vs AVX2, i.e. a Zen 4 vs a Zen 3, on a CPU that has both) and a small
//! network's outputs and gradients with 1, 2 and 3 threads.

pub mod conv;
pub mod gemm;
pub mod linear;
pub mod pool;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU8, Ordering};

pub use conv::{conv2d, Conv2dParams};
pub use linear::linear;
pub use pool::max_pool2d;

/// The instruction set a GEMM micro-kernel runs on. All three give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust with [`f32::mul_add`].
    Scalar,
    /// AVX2 and FMA, 8 lanes.
    Avx2,
    /// AVX-512F, 16 lanes.
    Avx512,
}

/// Cap on the instruction set, for tests that compare the paths (`u8::MAX`: none).
static ISA_CAP: AtomicU8 = AtomicU8::new(u8::MAX);

impl Isa {
    /// The best instruction set this CPU offers, within the cap set by [`Isa::cap`].
    pub fn detect() -> Isa {
        let best = Isa::best_available();
        let cap = match ISA_CAP.load(Ordering::Relaxed) {
            0 => Isa::Scalar,
            1 => Isa::Avx2,
            _ => Isa::Avx512,
        };
        best.min(cap)
    }

    #[cfg(target_arch = "x86_64")]
    fn best_available() -> Isa {
        if std::arch::is_x86_feature_detected!("avx512f") {
            Isa::Avx512
        } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn best_available() -> Isa {
        Isa::Scalar
    }

    /// Caps the instruction set used from now on, process-wide (`None` lifts the cap).
    /// Only for comparing the paths: results are the same bits whatever the cap.
    pub fn cap(cap: Option<Isa>) {
        let value = match cap {
            Some(Isa::Scalar) => 0,
            Some(Isa::Avx2) => 1,
            Some(Isa::Avx512) | None => u8::MAX,
        };
        ISA_CAP.store(value, Ordering::Relaxed);
    }
}
