//! Training throughput of the digits MLP (64-128-128-10, batch 64, Adam), the number
//! the spine issue compares with PyTorch. Prints steps per second; run with
//! `cargo bench -p pipelines --bench train` (RAYON_NUM_THREADS as pipe sets it).

use std::time::Instant;

use candle_core::Device;
use pipelines::data;
use pipelines::model::{Activation, Init, Mlp, MlpSpec};
use pipelines::sources::{Source, SourceOptions};
use pipelines::train::{Batches, OptimSpec, OptimizerKind, SplitTensors, Trainer};

// The same allocator as the `pipe` binary: glibc's malloc trims and regrows the heap
// on every step of a small model (150k brk calls per 10k steps, measured).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    // As `pipe` runs a stage: on a worker of a pool of RAYON_NUM_THREADS (one: inline).
    let pool = rayon::ThreadPoolBuilder::new().num_threads(rayon::current_num_threads()).build().expect("pool");
    pool.install(bench);
}

fn bench() {
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_default();
    let raw = Source::Digits.load(&SourceOptions::default()).expect("digits");
    let prepared =
        data::prepare(&raw, "builtin:digits", &[0.6, 0.2, 0.2], 0, data::Normalize::Standard).expect("prepare");
    let device = Device::Cpu;
    let train = SplitTensors::new(&prepared.train, 64, &device).expect("tensors");
    let spec = MlpSpec { n_in: 64, hidden: vec![128, 128], n_out: 10, activation: Activation::Relu };
    let log_priors = prepared.train_priors().iter().map(|p| p.ln() as f32).collect();
    let model = Mlp::new(&spec, &Init::Recipe { log_priors }, 0, &device).expect("model");
    let optim =
        OptimSpec { kind: OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, lr: 3e-4, weight_decay: 0.0 };
    let mut trainer = Trainer::new(&model, &optim).expect("trainer");
    let mut batches = Batches::new(&train, 64, 0, "bench");
    let mut step = |n: usize| {
        for _ in 0..n {
            let (x, y) = batches.next_batch().expect("batch");
            trainer.step(&x, &y).expect("step");
        }
    };
    step(200); // warm up
               // This machine's speed drifts from run to run: report the median and best of 7 rounds.
    let mut rates: Vec<f64> = (0..7)
        .map(|_| {
            let n = 2000;
            let started = Instant::now();
            step(n);
            n as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    println!(
        "train/mlp-64-128-128-10/batch-64/adam threads={threads}: median {:.0} steps/s, best {:.0} steps/s ({:.1} us/step at the median)",
        rates[3],
        rates[6],
        1e6 / rates[3]
    );
}
