//! Tests of the kernels: against candle's reference ops and autograd (1e-5 relative),
//! against central finite differences of an f64 reference, and bitwise across thread
//! counts and instruction sets.

use candle_core::{Device, Tensor, Var};

use super::gemm::{gemm, gemm_acc, gemm_packed, gemm_packed_rows, MatRef, PackedA, Rows, Scratch, Start, ROWS_SLACK};
use super::{conv2d, linear, max_pool2d, Conv2dParams, Isa};
use crate::rng::Rng;

/// `(batch, c_in, h, w, c_out, k, padding, stride)`.
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

/// Shapes where candle's own backward is right (it gets the input gradient's shape
/// wrong for stride 2 when `(h + 2 * padding - k)` is odd, e.g. 10x11 -> 10x12).
const CASES: [Case; 10] = [
    (2, 1, 8, 8, 16, 3, 1, 1),
    (3, 16, 8, 8, 32, 3, 1, 1),
    (2, 3, 9, 7, 5, 3, 0, 1),
    (2, 4, 10, 12, 6, 3, 1, 2),
    (1, 2, 7, 9, 3, 5, 2, 2),
    (2, 6, 5, 5, 9, 1, 0, 1),
    (2, 3, 6, 6, 4, 2, 0, 2),
    (2, 5, 14, 14, 40, 3, 1, 1),
    // Stride 1 on wide enough rows: the forward reads the im2col rows in place (odd
    // output for the pool; no padding).
    (2, 3, 17, 17, 8, 3, 1, 1),
    (2, 2, 18, 18, 4, 3, 0, 1),
];

fn normals(n: usize, purpose: &str) -> Vec<f32> {
    let mut rng = Rng::new(9, purpose);
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn tensor(dims: &[usize], purpose: &str) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(normals(n, purpose), dims, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `max |ours - reference| <= tol * max |reference|` (relative to the tensor's scale:
/// an element-wise relative error is meaningless where sums cancel to near zero).
fn assert_close(what: &str, ours: &[f32], reference: &[f32], tol: f64) {
    assert_eq!(ours.len(), reference.len(), "{what}: lengths");
    let scale = reference.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs())).max(1e-30);
    let worst = ours.iter().zip(reference).map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs()).fold(0f64, f64::max);
    assert!(worst <= tol * scale, "{what}: max difference {worst:e} vs scale {scale:e}");
}

struct Inputs {
    x: Var,
    w: Var,
    b: Var,
    /// Weights of the scalar loss `sum(y * r)`.
    r: Tensor,
    params: Conv2dParams,
}

fn inputs(case: Case, tag: &str) -> Inputs {
    let (batch, c_in, h, w, c_out, k, padding, stride) = case;
    let params = Conv2dParams { padding, stride, relu: false, pool: false };
    let x = Var::from_tensor(&tensor(&[batch, c_in, h, w], &format!("{tag}/x"))).unwrap();
    let wt = Var::from_tensor(&tensor(&[c_out, c_in, k, k], &format!("{tag}/w"))).unwrap();
    let b = Var::from_tensor(&tensor(&[c_out], &format!("{tag}/b"))).unwrap();
    let h_out = (h + 2 * padding - k) / stride + 1;
    let w_out = (w + 2 * padding - k) / stride + 1;
    let r = tensor(&[batch, c_out, h_out, w_out], &format!("{tag}/r"));
    Inputs { x, w: wt, b, r, params }
}

/// Output and the gradients of `sum(y * r)` to x, w, b.
fn run(inputs: &Inputs, ours: bool) -> [Vec<f32>; 4] {
    let Inputs { x, w, b, r, params } = inputs;
    let y = if ours {
        conv2d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), *params).unwrap()
    } else {
        let y = x.as_tensor().conv2d(w.as_tensor(), params.padding, params.stride, 1, 1).unwrap();
        let y = y.broadcast_add(&b.as_tensor().reshape((1, (), 1, 1)).unwrap()).unwrap();
        let y = if params.relu { y.relu().unwrap() } else { y };
        if params.pool {
            // Not candle's max_pool2d backward (see the pooling test): reshape + max.
            let (n, c, h, w) = y.dims4().unwrap();
            let even = y.narrow(2, 0, h / 2 * 2).unwrap().narrow(3, 0, w / 2 * 2).unwrap();
            even.reshape((n, c, h / 2, 2, w / 2, 2)).unwrap().max(5).unwrap().max(3).unwrap()
        } else {
            y
        }
    };
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let grad =
        |v: &Var| values(grads.get(v).unwrap_or_else(|| panic!("no gradient for {:?} (ours: {ours})", v.dims())));
    [values(&y), grad(x), grad(w), grad(b)]
}

#[test]
fn conv2d_matches_candle_in_value_and_gradients() {
    for (i, case) in CASES.into_iter().enumerate() {
        for (relu, pool) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut inputs = inputs(case, &format!("candle/{i}"));
            inputs.params.relu = relu;
            inputs.params.pool = pool;
            if pool {
                let d = inputs.r.dims4().unwrap();
                inputs.r = tensor(&[d.0, d.1, d.2 / 2, d.3 / 2], &format!("candle/{i}/pooled-r"));
            }
            let ours = run(&inputs, true);
            let reference = run(&inputs, false);
            for (name, (a, b)) in ["y", "dx", "dw", "db"].iter().zip(ours.iter().zip(&reference)) {
                assert_close(&format!("case {case:?} relu {relu} pool {pool} {name}"), a, b, 1e-5);
            }
        }
    }
}

#[test]
fn conv2d_without_bias_and_untracked_input() {
    let inputs = inputs(CASES[1], "nobias");
    let x = inputs.x.as_tensor().detach();
    let y = conv2d(&x, inputs.w.as_tensor(), None, inputs.params).unwrap();
    let reference = x.conv2d(inputs.w.as_tensor(), 1, 1, 1, 1).unwrap();
    assert_close("y", &values(&y), &values(&reference), 1e-5);
    let grads = (&y * &inputs.r).unwrap().sum_all().unwrap().backward().unwrap();
    let reference_grads = (&reference * &inputs.r).unwrap().sum_all().unwrap().backward().unwrap();
    let (ours, theirs) = (grads.get(&inputs.w).unwrap(), reference_grads.get(&inputs.w).unwrap());
    assert_close("dw", &values(ours), &values(theirs), 1e-5);
    assert!(grads.get(&x).is_none(), "an untracked input gets no gradient");
}

/// The f64 reference convolution, straight from the definition.
fn conv_f64(case: Case, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let (batch, c_in, h, wd, c_out, k, pad, stride) = case;
    let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (wd + 2 * pad - k) / stride + 1);
    let mut y = vec![0f64; batch * c_out * ho * wo];
    for n in 0..batch {
        for co in 0..c_out {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut sum = b[co];
                    for ci in 0..c_in {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (
                                    (oy * stride + ky) as isize - pad as isize,
                                    (ox * stride + kx) as isize - pad as isize,
                                );
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    sum += x[((n * c_in + ci) * h + iy as usize) * wd + ix as usize]
                                        * w[((co * c_in + ci) * k + ky) * k + kx];
                                }
                            }
                        }
                    }
                    y[((n * c_out + co) * ho + oy) * wo + ox] = sum;
                }
            }
        }
    }
    y
}

fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

/// Central differences of `loss(args)` in each coordinate of `args[which]`.
fn finite_differences(args: &[Vec<f64>; 3], which: usize, loss: &dyn Fn(&[Vec<f64>; 3]) -> f64, step: f64) -> Vec<f32> {
    (0..args[which].len())
        .map(|i| {
            let mut plus = args.clone();
            plus[which][i] += step;
            let mut minus = args.clone();
            minus[which][i] -= step;
            ((loss(&plus) - loss(&minus)) / (2.0 * step)) as f32
        })
        .collect()
}

#[test]
fn conv2d_gradients_match_finite_differences() {
    // The last case is one candle's backward cannot do (odd width, stride 2).
    for (i, case) in [CASES[2], CASES[3], CASES[4], CASES[6], (2, 4, 10, 11, 6, 3, 1, 2)].into_iter().enumerate() {
        let inputs = inputs(case, &format!("fd/{i}"));
        let ours = run(&inputs, true);
        let args = [values(inputs.x.as_tensor()), values(inputs.w.as_tensor()), values(inputs.b.as_tensor())]
            .map(|v| widen(&v));
        let r = widen(&values(&inputs.r));
        let loss =
            |a: &[Vec<f64>; 3]| conv_f64(case, &a[0], &a[1], &a[2]).iter().zip(&r).map(|(y, r)| y * r).sum::<f64>();
        for (which, name) in ["dx", "dw", "db"].iter().enumerate() {
            let numeric = finite_differences(&args, which, &loss, 1e-3);
            assert_close(&format!("case {case:?} {name}"), &ours[which + 1], &numeric, 1e-5);
        }
    }
}

fn pool_inputs(dims: &[usize], tag: &str) -> (Var, Tensor) {
    let x = Var::from_tensor(&tensor(dims, &format!("{tag}/x"))).unwrap();
    let (n, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
    (x, tensor(&[n, c, h / 2, w / 2], &format!("{tag}/r")))
}

#[test]
fn max_pool_matches_candle_and_finite_differences() {
    for (i, dims) in [[2usize, 3, 8, 8], [1, 2, 7, 9], [3, 4, 28, 28]].iter().enumerate() {
        let (x, r) = pool_inputs(dims, &format!("pool/{i}"));
        let ours = max_pool2d(x.as_tensor()).unwrap();
        let reference = x.as_tensor().max_pool2d(2).unwrap();
        assert_eq!(values(&ours), values(&reference), "forward {dims:?}");
        // candle's max_pool2d backward scales every gradient by 1/4 (it multiplies by
        // the share of window elements that are maximal instead of dividing by their
        // count), so the autograd reference is a reshape and two `max` reductions.
        let (n, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
        let even = x.as_tensor().narrow(2, 0, h / 2 * 2).unwrap().narrow(3, 0, w / 2 * 2).unwrap();
        let windows = even.reshape((n, c, h / 2, 2, w / 2, 2)).unwrap();
        let reference_grad_path = windows.max(5).unwrap().max(3).unwrap();
        assert_eq!(values(&reference_grad_path), values(&reference), "reshape-max reference {dims:?}");
        let grad = |y: &Tensor| values((y * &r).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap());
        let (ours_dx, reference_dx) = (grad(&ours), grad(&reference_grad_path));
        assert_eq!(ours_dx, reference_dx, "backward {dims:?}");
        // f64 finite differences (random normals: no ties within the step).
        let rw = widen(&values(&r));
        let loss = |a: &[Vec<f64>; 3]| {
            let mut total = 0.0;
            for (plane, src) in a[0].chunks_exact(h * w).enumerate() {
                for oy in 0..h / 2 {
                    for ox in 0..w / 2 {
                        let at = |dy: usize, dx: usize| src[(2 * oy + dy) * w + 2 * ox + dx];
                        let max = at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                        total += max * rw[(plane * (h / 2) + oy) * (w / 2) + ox];
                    }
                }
            }
            total
        };
        let args = [widen(&values(x.as_tensor())), Vec::new(), Vec::new()];
        let numeric = finite_differences(&args, 0, &loss, 1e-6);
        assert_close(&format!("pool fd {dims:?}"), &ours_dx, &numeric, 1e-5);
    }
}

#[test]
fn max_pool_gradient_goes_to_the_first_of_tied_maxima() {
    let x = Var::from_vec(vec![1f32, 3.0, 3.0, 3.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
    let grads = max_pool2d(x.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(values(grads.get(&x).unwrap()), [0.0, 1.0, 0.0, 0.0]);
    // A NaN is the maximum (it propagates), and the first NaN takes the gradient.
    let x = Var::from_vec(vec![1f32, f32::NAN, f32::NAN, 2.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
    let y = max_pool2d(x.as_tensor()).unwrap();
    assert!(values(&y)[0].is_nan());
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(values(grads.get(&x).unwrap()), [0.0, 1.0, 0.0, 0.0]);
}

/// A small digits-CNN-like graph: conv-relu-conv(stride 2)-relu-pool, its output and
/// the gradients of every parameter, as bits.
fn network_bits(batch: usize, size: usize) -> Vec<Vec<u32>> {
    let x = tensor(&[batch, 2, size, size], "net/x");
    let w1 = Var::from_tensor(&tensor(&[16, 2, 3, 3], "net/w1")).unwrap();
    let b1 = Var::from_tensor(&tensor(&[16], "net/b1")).unwrap();
    let w2 = Var::from_tensor(&tensor(&[20, 16, 3, 3], "net/w2")).unwrap();
    let b2 = Var::from_tensor(&tensor(&[20], "net/b2")).unwrap();
    let h = conv2d(
        &x,
        w1.as_tensor(),
        Some(b1.as_tensor()),
        Conv2dParams { padding: 1, stride: 1, relu: true, pool: false },
    )
    .unwrap();
    let h = conv2d(
        &h,
        w2.as_tensor(),
        Some(b2.as_tensor()),
        Conv2dParams { padding: 1, stride: 2, relu: true, pool: false },
    )
    .unwrap();
    let y = max_pool2d(&h).unwrap();
    let w3 = Var::from_tensor(&tensor(&[8, 20, 3, 3], "net/w3")).unwrap();
    let y = conv2d(&y, w3.as_tensor(), None, Conv2dParams { padding: 1, stride: 1, relu: true, pool: true }).unwrap();
    // A dense head over the flattened maps (k = 8 x 7 x 7 = 392 on 28x28 inputs).
    let y = y.flatten_from(1).unwrap();
    let w4 = Var::from_tensor(&tensor(&[10, y.dim(1).unwrap()], "net/w4")).unwrap();
    let b4 = Var::from_tensor(&tensor(&[10], "net/b4")).unwrap();
    let y = linear(&y, w4.as_tensor(), b4.as_tensor()).unwrap();
    let r = tensor(y.dims(), "net/r");
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let bits = |t: &Tensor| values(t).iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let mut out = vec![bits(&y)];
    out.extend([&w1, &b1, &w2, &b2, &w3, &w4, &b4].iter().map(|v| bits(grads.get(v).unwrap())));
    out
}

#[test]
fn bitwise_identical_for_one_two_and_three_threads() {
    let in_pool = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| network_bits(9, 16))
    };
    let one = in_pool(1);
    assert_eq!(one, in_pool(2));
    assert_eq!(one, in_pool(3));
}

/// `C += A·B` with the defining chain of fused multiply-adds, one element at a time.
fn naive_chain(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = c[i * n + j];
            for l in 0..k {
                acc = a[i * k + l].mul_add(b[l * n + j], acc);
            }
            c[i * n + j] = acc;
        }
    }
}

/// The one test that changes the process-wide ISA cap (others may run meanwhile; they
/// get the same bits whichever path they take, which is the point).
#[test]
fn every_instruction_set_gives_the_same_bits_as_the_defining_chain() {
    let shapes = [(1, 1, 1), (7, 13, 5), (32, 145, 700), (33, 70, 9), (97, 1030, 300)];
    let mut results = Vec::new();
    for cap in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
        Isa::cap(Some(cap));
        for &(m, n, k) in &shapes {
            let a = normals(m * k, "gemm/a");
            let b = normals(k * n, "gemm/b");
            let start = normals(m * n, "gemm/c");
            let mut expected = start.clone();
            naive_chain(m, n, k, &a, &b, &mut expected);
            let mut c = start.clone();
            let (av, bv) = (MatRef::row_major(&a, k), MatRef::row_major(&b, n));
            gemm_acc(m, n, k, &av, &bv, &mut c, n, &mut Scratch::default());
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&c), bits(&expected), "gemm {m}x{n}x{k} on {cap:?} ({:?} detected)", Isa::detect());
            // Starting from zero without reading C is starting from a zeroed C.
            let mut from_zero = vec![0f32; m * n];
            naive_chain(m, n, k, &a, &b, &mut from_zero);
            let mut c = start;
            gemm(m, n, k, &av, &bv, &mut c, n, Start::Zero, &mut Scratch::default());
            assert_eq!(bits(&c), bits(&from_zero), "gemm (zero start) {m}x{n}x{k} on {cap:?}");
            let mut c = vec![0f32; m * n];
            gemm_packed(&PackedA::new(m, k, &av), n, &bv, &mut c, n, Start::Zero, &mut Scratch::default());
            assert_eq!(bits(&c), bits(&from_zero), "gemm (packed A) {m}x{n}x{k} on {cap:?}");
            // B read in place: row l of b at offsets[l] in a longer buffer, rows out of order
            // (11 is prime to every k here, so the rows are a permutation).
            let offsets: Vec<usize> = (0..k).map(|l| ((l * 11) % k) * (n + 3) + 1).collect();
            let mut base = normals(k * (n + 3) + n + ROWS_SLACK + 1, "gemm/rows");
            for (l, &offset) in offsets.iter().enumerate() {
                base[offset..offset + n].copy_from_slice(&b[l * n..(l + 1) * n]);
            }
            let mut c = normals(m * n, "gemm/c");
            let rows = Rows { base: &base, offsets: &offsets };
            let packed = PackedA::new(m, k, &av);
            gemm_packed_rows(&packed, n, &rows, &mut c, n, Start::Accumulate, &mut Scratch::default());
            assert_eq!(bits(&c), bits(&expected), "gemm (rows in place) {m}x{n}x{k} on {cap:?}");
        }
        // batch 8 of 28x28: the weight gradient's k (3,136 after stride 2) spans many k-blocks.
        results.push(network_bits(8, 28));
    }
    Isa::cap(None);
    assert_eq!(results[0], results[1], "scalar vs AVX2");
    assert_eq!(results[0], results[2], "scalar vs AVX-512");
}
