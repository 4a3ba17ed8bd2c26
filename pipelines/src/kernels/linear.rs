//! The dense layer `y = x·Wᵀ + b` (x `[batch, in]`, W `[out, in]`, b `[out]`) on our
//! GEMM, as a candle custom op with its backward, so dense layers are bitwise the same
//! on every x86-64 CPU and thread count, like the convolutions (the module docs of
//! [`super`] give the argument). candle's `matmul` goes through the `gemm` crate, whose
//! k-blocking follows the detected cache sizes once the inner dimension passes 512:
//! the Fashion convnet's head (3,136 inputs) could then differ between two machines
//! sharing a cache.
//!
//! Each output is one FMA chain: `y[i][j]` starts at `b[j]` and runs over `l = 0..in`;
//! `dx = dy·W` and `dW = dyᵀ·x` start at zero and run over `out` and over the batch
//! in order; `db[j]` adds `dy[i][j]` over `i = 0..batch` in order. Threads split the
//! outputs (rows, or column blocks for a short output), never a chain.

use std::cell::RefCell;

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::f32_slice;
use super::gemm::{gemm, MatRef, Scratch, Start};

/// Multiply-adds below which a product runs on the calling thread alone.
const SERIAL_WORK: usize = 1 << 18;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `x·Wᵀ + b`. On CPU with f32 tensors it runs our deterministic GEMM; elsewhere it is
/// candle's matmul (the bias entering as `ones[batch, 1]·b[1, out]`, whose gradient is
/// a matmul too).
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let ours = x.device().is_cpu() && [x.dtype(), weight.dtype(), bias.dtype()].iter().all(|&d| d == DType::F32);
    if !ours || x.rank() != 2 {
        let ones = Tensor::ones((x.dim(0)?, 1), x.dtype(), x.device())?;
        return x.matmul(&weight.t()?)? + ones.matmul(&bias.unsqueeze(0)?)?;
    }
    let (_, n_in) = x.dims2()?;
    let (n_out, w_in) = weight.dims2()?;
    if w_in != n_in || bias.dims() != [n_out] {
        bail!("linear: input {:?}, weight {:?} and bias {:?} do not fit", x.dims(), weight.dims(), bias.dims())
    }
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, Linear)
}

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "pipe-linear"
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
        let (x, w, b) = (f32_slice(s1, l1, "linear")?, f32_slice(s2, l2, "linear")?, f32_slice(s3, l3, "linear")?);
        let (&[batch, n_in], &[n_out, w_in]) = (l1.dims(), l2.dims()) else {
            bail!("linear: 2-d input and weight only")
        };
        if w_in != n_in || b.len() != n_out {
            bail!("linear: input {:?}, weight {:?} and bias {:?} do not fit", l1.dims(), l2.dims(), l3.dims())
        }
        let y = product(batch, n_out, n_in, MatRef::row_major(x, n_in), MatRef::transposed(w, n_in), Some(b));
        Ok((CpuStorage::F32(y), Shape::from((batch, n_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (batch, n_in) = x.dims2()?;
        let n_out = w.dim(0)?;
        let dy = dy.flatten_all()?.to_vec1::<f32>()?;
        let values = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        // `m x n` gradient of `like`, each element one chain over `k` from zero.
        let grad = |(m, n, k): (usize, usize, usize), a: MatRef, b: MatRef, like: &Tensor| {
            Tensor::from_vec(product(m, n, k, a, b, None), (m, n), like.device())
        };
        let dx = match x.track_op() {
            true => {
                let w = values(w)?;
                let (dy, w) = (MatRef::row_major(&dy, n_out), MatRef::row_major(&w, n_in));
                Some(grad((batch, n_in, n_out), dy, w, x)?)
            }
            false => None,
        };
        let dw = match w.track_op() {
            true => {
                let x = values(x)?;
                let (dy, x) = (MatRef::transposed(&dy, n_out), MatRef::row_major(&x, n_in));
                Some(grad((n_out, n_in, batch), dy, x, w)?)
            }
            false => None,
        };
        let db = if b.track_op() {
            let mut db = vec![0f32; n_out];
            for row in dy.chunks_exact(n_out) {
                for (sum, &g) in db.iter_mut().zip(row) {
                    *sum += g;
                }
            }
            Some(Tensor::from_vec(db, n_out, b.device())?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// `C = A·B` (`m x n`, row-major), each element one chain over `l = 0..k` starting
/// from `start[j]` (a bias row) or from zero. Split over threads by rows when `C` is
/// tall enough, else by column blocks; the split never changes a chain.
pub fn product(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, start: Option<&[f32]>) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    let run = |rows: usize, cols: usize, a: MatRef, b: MatRef, c: &mut [f32], first: usize| {
        let mode = match start {
            Some(start) => {
                for row in c.chunks_exact_mut(cols) {
                    row.copy_from_slice(&start[first..first + cols]);
                }
                Start::Accumulate
            }
            None => Start::Zero,
        };
        SCRATCH.with(|scratch| gemm(rows, cols, k, &a, &b, c, cols, mode, &mut scratch.borrow_mut()));
    };
    let threads = rayon::current_num_threads().max(1);
    if threads == 1 || m * n * k < SERIAL_WORK {
        run(m, n, a, b, &mut c, 0);
    } else if m >= 16 * threads {
        let rows_per = m.div_ceil(threads);
        c.par_chunks_mut(rows_per * n).enumerate().for_each(|(part, c)| {
            let rows = c.len() / n;
            let a = MatRef { data: &a.data[part * rows_per * a.row_stride..], ..a };
            run(rows, n, a, b, c, 0);
        });
    } else {
        // Few rows (a weight gradient of a narrow layer): column blocks, each computed
        // into its own buffer, then put in place.
        let cols_per = n.div_ceil(threads).next_multiple_of(16).min(n);
        let blocks: Vec<(usize, Vec<f32>)> = (0..n)
            .step_by(cols_per)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|j0| {
                let cols = cols_per.min(n - j0);
                let mut block = vec![0f32; m * cols];
                let b = MatRef { data: &b.data[j0 * b.col_stride..], ..b };
                run(m, cols, a, b, &mut block, j0);
                (j0, block)
            })
            .collect();
        for (j0, block) in blocks {
            let cols = block.len() / m;
            for (row, values) in c.chunks_exact_mut(n).zip(block.chunks_exact(cols)) {
                row[j0..j0 + cols].copy_from_slice(values);
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::rng::Rng;

    fn var(dims: &[usize], purpose: &str) -> Var {
        let mut rng = Rng::new(5, purpose);
        let n = dims.iter().product();
        Var::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), dims, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// `[y, dx, dw, db]` of the loss `sum(y * r)`, ours or candle's matmul.
    fn run(batch: usize, n_in: usize, n_out: usize, ours: bool) -> [Vec<f32>; 4] {
        let tag = format!("{batch}x{n_in}x{n_out}");
        let (x, w, b) = (var(&[batch, n_in], &tag), var(&[n_out, n_in], &tag), var(&[n_out], &tag));
        let r = var(&[batch, n_out], &format!("{tag}/r"));
        let y = if ours {
            linear(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap()
        } else {
            x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap().broadcast_add(b.as_tensor()).unwrap()
        };
        let grads = (&y * r.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        [values(&y), values(grads.get(&x).unwrap()), values(grads.get(&w).unwrap()), values(grads.get(&b).unwrap())]
    }

    const SHAPES: [(usize, usize, usize); 5] = [(1, 1, 1), (5, 7, 3), (64, 3136, 10), (70, 33, 200), (3, 600, 40)];

    #[test]
    fn linear_matches_candle_in_value_and_gradients() {
        for (batch, n_in, n_out) in SHAPES {
            let (ours, reference) = (run(batch, n_in, n_out, true), run(batch, n_in, n_out, false));
            for (i, name) in ["y", "dx", "dw", "db"].iter().enumerate() {
                let scale = reference[i].iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
                let worst = ours[i].iter().zip(&reference[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst <= 1e-5 * scale, "{batch}x{n_in}x{n_out} {name}: {worst:e} vs scale {scale:e}");
            }
        }
    }

    #[test]
    fn every_output_is_the_defining_chain_for_any_thread_count() {
        for (batch, n_in, n_out) in SHAPES {
            let in_pool = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| run(batch, n_in, n_out, true))
                    .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
            };
            let one = in_pool(1);
            assert_eq!(one, in_pool(2), "{batch}x{n_in}x{n_out}: 1 vs 2 threads");
            assert_eq!(one, in_pool(3), "{batch}x{n_in}x{n_out}: 1 vs 3 threads");
            // y[i][j] = fma chain over l from b[j]; db[j] = dy summed over i in order.
            let tag = format!("{batch}x{n_in}x{n_out}");
            let (x, w, b) = (var(&[batch, n_in], &tag), var(&[n_out, n_in], &tag), var(&[n_out], &tag));
            let (x, w, b) = (values(x.as_tensor()), values(w.as_tensor()), values(b.as_tensor()));
            for i in 0..batch {
                for j in 0..n_out {
                    let chain = (0..n_in).fold(b[j], |acc, l| x[i * n_in + l].mul_add(w[j * n_in + l], acc));
                    assert_eq!(one[0][i * n_out + j], chain.to_bits(), "{tag}: y[{i}][{j}]");
                }
            }
            let r = values(var(&[batch, n_out], &format!("{tag}/r")).as_tensor());
            for j in 0..n_out {
                let sum = (0..batch).fold(0f32, |acc, i| acc + r[i * n_out + j]);
                assert_eq!(one[3][j], sum.to_bits(), "{tag}: db[{j}]");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences_in_f64() {
        let (batch, n_in, n_out) = (4, 6, 3);
        let ours = run(batch, n_in, n_out, true);
        let tag = format!("{batch}x{n_in}x{n_out}");
        let wide = |v: &Var| values(v.as_tensor()).iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        let args = [wide(&var(&[batch, n_in], &tag)), wide(&var(&[n_out, n_in], &tag)), wide(&var(&[n_out], &tag))];
        let r = wide(&var(&[batch, n_out], &format!("{tag}/r")));
        let loss = |a: &[Vec<f64>; 3]| {
            let mut total = 0.0;
            for i in 0..batch {
                for j in 0..n_out {
                    let y = a[2][j] + (0..n_in).map(|l| a[0][i * n_in + l] * a[1][j * n_in + l]).sum::<f64>();
                    total += y * r[i * n_out + j];
                }
            }
            total
        };
        for (which, name) in ["dx", "dw", "db"].iter().enumerate() {
            for (k, &got) in ours[which + 1].iter().enumerate() {
                let (mut plus, mut minus) = (args.clone(), args.clone());
                plus[which][k] += 1e-4;
                minus[which][k] -= 1e-4;
                let numeric = (loss(&plus) - loss(&minus)) / 2e-4;
                assert!(
                    (f64::from(got) - numeric).abs() <= 1e-5 * numeric.abs().max(1.0),
                    "{name}[{k}]: {got} vs {numeric}"
                );
            }
        }
    }
}
