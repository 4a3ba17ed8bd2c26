//! Data-loading throughput: Fashion-MNIST's IDX files (Debian's
//! `dataset-fashion-mnist`, 70,000 x 784) into a candle tensor. Prints seconds;
//! run with `cargo bench -p pipelines --bench load` (skips when the files are absent).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use pipelines::sources::{Source, SourceOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let dir = PathBuf::from(
        std::env::var("FASHION_MNIST_DIR").unwrap_or_else(|_| "/usr/share/datasets/fashion-mnist".to_string()),
    );
    if !dir.exists() {
        println!("load/fashion-mnist: skipped, {} not found (apt-get install dataset-fashion-mnist)", dir.display());
        return;
    }
    let mut secs = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let raw = Source::Idx(dir.clone()).load(&SourceOptions::default()).expect("fashion-mnist loads");
        let tensor = Tensor::from_slice(&raw.x, (raw.len(), raw.n_features()), &Device::Cpu).expect("tensor");
        let labels = Tensor::from_slice(&raw.y, raw.len(), &Device::Cpu).expect("tensor");
        secs.push(started.elapsed().as_secs_f64());
        assert_eq!(tensor.dims(), [70_000, 784]);
        assert_eq!(labels.dims(), [70_000]);
    }
    secs.sort_by(f64::total_cmp);
    println!("load/fashion-mnist idx (gz) -> tensors 70000x784: median {:.3} s, best {:.3} s", secs[1], secs[0]);
}
