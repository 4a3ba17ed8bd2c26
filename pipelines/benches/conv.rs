//! Training throughput of two small convnets with candle's CPU conv2d/max_pool2d vs
//! our kernels (`pipelines::kernels`): full Adam steps (lr 3e-4, no weight decay),
//! batch 64. Prints steps/s, GFLOP/s and the machine's SGEMM rate beside them.
//!
//! Run: `RAYON_NUM_THREADS=1 cargo bench -p pipelines --bench conv [-- OPTIONS]`
//! (threads as `pipe` sets them). Options: `--models digits,fashion`,
//! `--backends candle,ours,ours-unfused` (ours is `pipe`'s own `convnet` model, which
//! fuses conv, bias, ReLU and pooling into one op and runs its head on our GEMM;
//! ours-unfused is this file's net on our conv op, pooling with a separate op), `--rounds 5`, `--secs 1.0`, `--no-peak`;
//! `PIPE_KERNELS_ISA=avx2|scalar` caps our kernels' instruction set (same bits).
//! The PyTorch peer for the same models is `peers/bench_torch_conv.py`.

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use pipelines::data;
use pipelines::kernels::{self, Conv2dParams, Isa};
use pipelines::model::Model;
use pipelines::models::{Activation, Convnet, ConvnetSpec, Init};
use pipelines::rng::Rng;
use pipelines::sources::{Source, SourceOptions};
use pipelines::train::{Batches, OptimSpec, OptimizerKind, SplitTensors, Trainer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Candle,
    Ours,
    OursUnfused,
}

/// A conv layer `c_in -> c_out`, 3x3, padding 1, then ReLU and, if `pool`, 2x2 max-pool.
#[derive(Clone, Copy)]
struct Layer {
    c_in: usize,
    c_out: usize,
    pool: bool,
}

#[derive(Clone, Copy)]
struct NetSpec {
    name: &'static str,
    side: usize,
    layers: &'static [Layer],
    classes: usize,
}

/// conv 1->16, relu, conv 16->32, relu, maxpool 2, linear 512->10.
const DIGITS: NetSpec = NetSpec {
    name: "digits-cnn",
    side: 8,
    layers: &[Layer { c_in: 1, c_out: 16, pool: false }, Layer { c_in: 16, c_out: 32, pool: true }],
    classes: 10,
};

/// conv 1->32, relu, maxpool 2, conv 32->64, relu, maxpool 2, linear 3136->10.
const FASHION: NetSpec = NetSpec {
    name: "fashion-convnet",
    side: 28,
    layers: &[Layer { c_in: 1, c_out: 32, pool: true }, Layer { c_in: 32, c_out: 64, pool: true }],
    classes: 10,
};

impl NetSpec {
    /// Side of the feature map after the conv blocks, and the linear layer's width.
    fn head_inputs(&self) -> usize {
        let mut side = self.side;
        for layer in self.layers {
            if layer.pool {
                side /= 2;
            }
        }
        side * side * self.layers.last().map_or(1, |l| l.c_out)
    }

    /// Multiply-adds x 2 of one training step: each conv forward, weight gradient and
    /// (except the first) input gradient; the linear layer's three products.
    fn flops_per_step(&self) -> f64 {
        let mut side = self.side;
        let mut total = 0.0;
        for (i, layer) in self.layers.iter().enumerate() {
            let forward = 2.0 * (BATCH * layer.c_out * side * side * layer.c_in * 9) as f64;
            total += forward * if i == 0 { 2.0 } else { 3.0 };
            if layer.pool {
                side /= 2;
            }
        }
        total + 3.0 * 2.0 * (BATCH * self.head_inputs() * self.classes) as f64
    }
}

struct ConvNet {
    spec: NetSpec,
    backend: Backend,
    convs: Vec<(Var, Var)>,
    head: (Var, Var),
}

impl ConvNet {
    fn new(spec: NetSpec, backend: Backend, device: &Device) -> Result<ConvNet> {
        let normal = |purpose: &str, n: usize, std: f64| -> Vec<f32> {
            let mut rng = Rng::new(0, purpose);
            (0..n).map(|_| (rng.normal() * std) as f32).collect()
        };
        let mut convs = Vec::new();
        for (i, layer) in spec.layers.iter().enumerate() {
            let fan_in = layer.c_in * 9;
            let w = normal(&format!("init/conv{i}.weight"), layer.c_out * fan_in, (2.0 / fan_in as f64).sqrt());
            convs.push((
                Var::from_vec(w, (layer.c_out, layer.c_in, 3, 3), device)?,
                Var::zeros(layer.c_out, candle_core::DType::F32, device)?,
            ));
        }
        let fan_in = spec.head_inputs();
        let w = normal("init/fc.weight", spec.classes * fan_in, 0.01 / (fan_in as f64).sqrt());
        let head = (
            Var::from_vec(w, (spec.classes, fan_in), device)?,
            Var::zeros(spec.classes, candle_core::DType::F32, device)?,
        );
        Ok(ConvNet { spec, backend, convs, head })
    }
}

impl Model for ConvNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let batch = x.dim(0)?;
        let mut h = x.reshape((batch, 1, self.spec.side, self.spec.side))?;
        for ((weight, bias), layer) in self.convs.iter().zip(self.spec.layers) {
            h = match self.backend {
                Backend::Candle => {
                    let h = h
                        .conv2d(weight.as_tensor(), 1, 1, 1, 1)?
                        .broadcast_add(&bias.as_tensor().reshape((1, layer.c_out, 1, 1))?)?
                        .relu()?;
                    if layer.pool {
                        h.max_pool2d(2)?
                    } else {
                        h
                    }
                }
                // conv + bias + ReLU (+ 2x2 max-pool) as one op.
                Backend::Ours => {
                    let params = Conv2dParams { padding: 1, stride: 1, relu: true, pool: layer.pool };
                    kernels::conv2d(&h, weight.as_tensor(), Some(bias.as_tensor()), params)?
                }
                // The same with the pooling as its own op.
                Backend::OursUnfused => {
                    let params = Conv2dParams { padding: 1, stride: 1, relu: true, pool: false };
                    let h = kernels::conv2d(&h, weight.as_tensor(), Some(bias.as_tensor()), params)?;
                    if layer.pool {
                        kernels::max_pool2d(&h)?
                    } else {
                        h
                    }
                }
            };
        }
        let h = h.flatten_from(1)?;
        // As in `model::Mlp`: the bias as a product, so its gradient is a matmul too.
        let ones = Tensor::ones((batch, 1), h.dtype(), h.device())?;
        h.matmul(&self.head.0.as_tensor().t()?)? + ones.matmul(&self.head.1.as_tensor().unsqueeze(0)?)?
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, (w, b)) in self.convs.iter().enumerate() {
            out.push((format!("conv{i}.weight"), w.clone()));
            out.push((format!("conv{i}.bias"), b.clone()));
        }
        out.push(("fc.weight".into(), self.head.0.clone()));
        out.push(("fc.bias".into(), self.head.1.clone()));
        out
    }
}

/// `pipe`'s own `convnet` model (`model.kind = "convnet"`) for `spec`: what a build
/// trains, with its fused conv + ReLU + pool op and its dense head on our GEMM.
fn product_convnet(spec: &NetSpec, device: &Device) -> Result<Convnet> {
    let pool_every = if spec.layers.iter().all(|l| l.pool) { 1 } else { spec.layers.len() };
    let spec = ConvnetSpec {
        channels_in: 1,
        height: spec.side,
        width: spec.side,
        channels: spec.layers.iter().map(|l| l.c_out).collect(),
        pool_every,
        dense: Vec::new(),
        n_out: spec.classes,
        activation: Activation::Relu,
    };
    let log_priors = vec![(1.0 / spec.n_out as f32).ln(); spec.n_out];
    Convnet::new(&spec, &Init::Recipe { log_priors }, 0, device)
}

/// The training data: the embedded digits for the digits CNN; seeded normal noise
/// with random labels at Fashion-MNIST's size (speed does not depend on the values).
fn training_data(spec: &NetSpec, device: &Device) -> std::result::Result<SplitTensors, String> {
    if spec.side == 8 {
        let raw = Source::Digits.load(&SourceOptions::default()).map_err(|e| e.to_string())?;
        let prepared = data::prepare(&raw, "builtin:digits", &[0.6, 0.2, 0.2], 0, data::Normalize::Standard)
            .map_err(|e| e.to_string())?;
        return SplitTensors::new(&prepared.train, 64, device).map_err(|e| e.to_string());
    }
    let (n, features) = (2048, spec.side * spec.side);
    let mut rng = Rng::new(0, "bench/fashion-sized");
    let x: Vec<f32> = (0..n * features).map(|_| rng.normal() as f32).collect();
    let y: Vec<u32> = (0..n).map(|_| rng.below(spec.classes as u64) as u32).collect();
    Ok(SplitTensors {
        x: Tensor::from_vec(x, (n, features), device).map_err(|e| e.to_string())?,
        y: Tensor::from_vec(y, n, device).map_err(|e| e.to_string())?,
        len: n,
    })
}

/// This process's CPU time (user + system, all threads) in seconds, from
/// `/proc/self/stat` (Linux; in USER_HZ = 100 ticks per second). On a machine shared
/// with other work, steps per CPU-second is steadier than steps per wall second.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

struct Rates {
    median: f64,
    best: f64,
    /// Steps per CPU-second over all rounds (all threads' CPU time).
    per_cpu_sec: Option<f64>,
}

/// Median and best steps/s over `rounds` rounds of at least `secs` seconds each.
fn measure(spec: NetSpec, backend: Backend, rounds: usize, secs: f64) -> std::result::Result<Rates, String> {
    let device = Device::Cpu;
    let train = training_data(&spec, &device)?;
    let bench_model;
    let product_model;
    let model: &dyn Model = if backend == Backend::Ours {
        product_model = product_convnet(&spec, &device).map_err(|e| e.to_string())?;
        &product_model
    } else {
        bench_model = ConvNet::new(spec, backend, &device).map_err(|e| e.to_string())?;
        &bench_model
    };
    let optim =
        OptimSpec { kind: OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, lr: 3e-4, weight_decay: 0.0 };
    let mut trainer = Trainer::new(model, &optim).map_err(|e| e.to_string())?;
    let mut batches = Batches::new(&train, BATCH, 0, "bench");
    let mut step = || -> std::result::Result<(), String> {
        let (x, y) = batches.next_batch().map_err(|e| e.to_string())?;
        trainer.step(&x, &y).map_err(|e| e.to_string())?;
        Ok(())
    };
    let warm_up = Instant::now();
    for _ in 0..50 {
        step()?;
        if warm_up.elapsed().as_secs_f64() > secs {
            break;
        }
    }
    let mut rates = Vec::with_capacity(rounds);
    let (cpu_started, mut total_steps) = (cpu_secs(), 0usize);
    for _ in 0..rounds {
        let started = Instant::now();
        let mut steps = 0usize;
        while steps == 0 || started.elapsed().as_secs_f64() < secs {
            step()?;
            steps += 1;
        }
        rates.push(steps as f64 / started.elapsed().as_secs_f64());
        total_steps += steps;
    }
    let per_cpu_sec = match (cpu_started, cpu_secs()) {
        (Some(start), Some(end)) if end > start => Some(total_steps as f64 / (end - start)),
        _ => None,
    };
    rates.sort_by(f64::total_cmp);
    Ok(Rates { median: rates[rates.len() / 2], best: rates[rates.len() - 1], per_cpu_sec })
}

/// GFLOP/s of an `n x n x n` f32 product: candle's matmul (the `gemm` crate, all
/// rayon threads) and our kernel's GEMM (one thread).
fn sgemm_rates(n: usize) -> std::result::Result<(f64, f64), String> {
    let device = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (n, n), &device).map_err(|e| e.to_string())?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &device).map_err(|e| e.to_string())?;
    let flops = 2.0 * (n * n * n) as f64;
    let mut best_candle = 0f64;
    for _ in 0..5 {
        let started = Instant::now();
        let c = a.matmul(&b).map_err(|e| e.to_string())?;
        let _ = c.dims();
        best_candle = best_candle.max(flops / started.elapsed().as_secs_f64() / 1e9);
    }
    let (av, bv) = (a.flatten_all().and_then(|t| t.to_vec1::<f32>()), b.flatten_all().and_then(|t| t.to_vec1::<f32>()));
    let (av, bv) = (av.map_err(|e| e.to_string())?, bv.map_err(|e| e.to_string())?);
    let mut c = vec![0f32; n * n];
    let mut scratch = kernels::gemm::Scratch::default();
    let mut best_ours = 0f64;
    for _ in 0..5 {
        let started = Instant::now();
        let (lhs, rhs) = (kernels::gemm::MatRef::row_major(&av, n), kernels::gemm::MatRef::row_major(&bv, n));
        kernels::gemm::gemm_acc(n, n, n, &lhs, &rhs, &mut c, n, &mut scratch);
        best_ours = best_ours.max(flops / started.elapsed().as_secs_f64() / 1e9);
    }
    Ok((best_candle, best_ours))
}

struct Options {
    models: Vec<NetSpec>,
    backends: Vec<Backend>,
    rounds: usize,
    secs: f64,
    peak: bool,
}

fn options() -> std::result::Result<Options, String> {
    let mut options = Options {
        models: vec![DIGITS, FASHION],
        backends: vec![Backend::Candle, Backend::Ours],
        rounds: 5,
        secs: 1.0,
        peak: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--models" => {
                options.models = value()?
                    .split(',')
                    .map(|m| match m {
                        "digits" => Ok(DIGITS),
                        "fashion" => Ok(FASHION),
                        other => Err(format!("unknown model {other}, expected digits or fashion")),
                    })
                    .collect::<std::result::Result<_, _>>()?
            }
            "--backends" => {
                options.backends = value()?
                    .split(',')
                    .map(|b| match b {
                        "candle" => Ok(Backend::Candle),
                        "ours" => Ok(Backend::Ours),
                        "ours-unfused" => Ok(Backend::OursUnfused),
                        other => Err(format!("unknown backend {other}, expected candle, ours or ours-unfused")),
                    })
                    .collect::<std::result::Result<_, _>>()?
            }
            "--rounds" => options.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--secs" => options.secs = value()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--no-peak" => options.peak = false,
            "--bench" => {}
            other => return Err(format!("unknown option {other}")),
        }
    }
    options.rounds = options.rounds.max(1);
    Ok(options)
}

fn main() -> std::result::Result<(), String> {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let options = options()?;
    match std::env::var("PIPE_KERNELS_ISA").as_deref() {
        Ok("scalar") => Isa::cap(Some(Isa::Scalar)),
        Ok("avx2") => Isa::cap(Some(Isa::Avx2)),
        _ => {}
    }
    let threads = rayon::current_num_threads();
    println!("conv bench: threads={threads} kernels_isa={:?} batch={BATCH}", Isa::detect());
    if options.peak {
        let (candle, ours) = sgemm_rates(1024)?;
        println!("sgemm 1024^3: gemm crate (candle matmul, {threads} threads) {candle:.1} GFLOP/s, ours (1 thread) {ours:.1} GFLOP/s");
    }
    // As `pipe` runs a stage: on a worker of a pool of `threads` (one thread: inline).
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?;
    pool.install(|| run_models(&options, threads))
}

fn run_models(options: &Options, threads: usize) -> std::result::Result<(), String> {
    for spec in &options.models {
        let flops = spec.flops_per_step();
        for &backend in &options.backends {
            let Rates { median, best, per_cpu_sec } = measure(*spec, backend, options.rounds, options.secs)?;
            let per_cpu_sec = per_cpu_sec.map_or("n/a".to_string(), |r| format!("{r:.1}"));
            println!(
                "RESULT model={} backend={:?} threads={threads} median_steps_per_s={median:.1} best_steps_per_s={best:.1} steps_per_cpu_s={per_cpu_sec} mflop_per_step={:.2} gflop_per_s={:.2}",
                spec.name,
                backend,
                flops / 1e6,
                median * flops / 1e9
            );
        }
    }
    Ok(())
}
