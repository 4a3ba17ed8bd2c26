//! The data audit's quality and speed on generated fixtures (issue 15): label-error
//! recall and precision for flipped blocks at several rates and class pairs,
//! near-duplicate recall for noisy test copies, false findings on clean data, and the
//! time of the whole audit on all of Fashion-MNIST. Prints one line per measurement;
//! with `AUDIT_FIXTURE_DIR` set it also writes each fixture's training split there for
//! `peers/audit_cleanlab.py`. Run: `cargo bench -p pipelines --bench audit`
//! (`AUDIT_FULL_ONLY=1`: only all of Fashion-MNIST; `AUDIT_SMALL_ONLY=1`: all but it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pipelines::data::RawDataset;
use pipelines::inspect::fixtures::{self, recall_precision};
use pipelines::inspect::{inspect, InspectOptions, Inspection};
use pipelines::sources::{Source, SourceOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

thread_local! {
    static SWEEP: std::cell::Cell<(usize, f64, usize)> = const { std::cell::Cell::new((10, 0.2, 64)) };
}

fn options() -> InspectOptions {
    let (knn_k, max_self_confidence, embed_dims) = SWEEP.with(|s| s.get());
    InspectOptions {
        top_k: 16,
        knn_k,
        knn_queries: 1_000_000,
        outlier_z: 6.0,
        seed: 0,
        folds: 5,
        near_duplicate_distance: 0.02,
        max_self_confidence,
        embed_dims,
    }
}

fn run(raw: &RawDataset) -> (Inspection, f64, pipelines::data::Prepared) {
    let data = fixtures::prepare(raw).expect("fixture prepares");
    let started = Instant::now();
    let inspection = inspect(&data, &options()).expect("inspect runs");
    (inspection, started.elapsed().as_secs_f64(), data)
}

/// Label-error recall/precision for one flipped block.
fn label_case(name: &str, base: &RawDataset, from: u32, to: u32, rate: f64, out: Option<&Path>) {
    let mut raw = base.clone();
    let flipped = fixtures::flip_block(&mut raw, from, to, rate, 1);
    let (inspection, secs, data) = run(&raw);
    let in_train: BTreeSet<u32> = data.train.index.iter().copied().filter(|i| flipped.contains(i)).collect();
    let found: BTreeSet<u32> = inspection.labels.issues.iter().map(|i| i.example.source_index).collect();
    let (recall, precision) = recall_precision(&found, &in_train);
    println!(
        "audit/labels {name} {from}>{to} rate {rate:.2}: planted {} in train, flagged {} ({:.2}% of {}), recall {:.1}%, precision {:.1}%, {secs:.2} s",
        in_train.len(),
        found.len(),
        100.0 * found.len() as f64 / data.train.len() as f64,
        data.train.len(),
        100.0 * recall,
        100.0 * precision
    );
    if let Some(dir) = out {
        write_fixture(dir, &format!("{name}-{from}-{to}-{rate:.2}"), &data, &in_train, &found, secs);
    }
}

/// Training split raw values (f32 LE), labels (u32 LE) and the truth, for the peer.
fn write_fixture(
    dir: &Path,
    name: &str,
    data: &pipelines::data::Prepared,
    truth: &BTreeSet<u32>,
    found: &BTreeSet<u32>,
    secs: f64,
) {
    let d = data.n_features();
    let mut x = Vec::with_capacity(data.train.x.len() * 4);
    for row in data.train.x.chunks(d) {
        for ((v, m), s) in row.iter().zip(&data.mean).zip(&data.std) {
            x.extend_from_slice(&(v * s + m).to_le_bytes());
        }
    }
    let y: Vec<u8> = data.train.y.iter().flat_map(|v| v.to_le_bytes()).collect();
    let positions: Vec<usize> = (0..data.train.len()).filter(|&i| truth.contains(&data.train.index[i])).collect();
    let ours: Vec<usize> = (0..data.train.len()).filter(|&i| found.contains(&data.train.index[i])).collect();
    let meta = serde_json::json!({
        "n": data.train.len(), "d": d, "n_classes": data.n_classes(),
        "range": data.meta.value_range, "planted": positions, "ours": ours, "ours_secs": secs,
    });
    let write =
        |ext: &str, bytes: &[u8]| std::fs::write(dir.join(format!("{name}.{ext}")), bytes).expect("fixture written");
    write("x.f32", &x);
    write("y.u32", &y);
    write("json", meta.to_string().as_bytes());
}

/// Near-duplicate recall for noisy copies, and false pairs on the clean set.
fn copy_case(name: &str, base: &RawDataset, n: usize, levels: i64) {
    let mut raw = base.clone();
    let copies = fixtures::plant_copies(&mut raw, n, levels, 2);
    let (inspection, secs, _) = run(&raw);
    let pairs: BTreeSet<(u32, u32)> = inspection
        .near_duplicates
        .iter()
        .map(|p| {
            let (a, b) = (p.example.source_index, p.other.source_index);
            (a.min(b), a.max(b))
        })
        .collect();
    let found = copies.iter().filter(|&&(c, o)| pairs.contains(&(c.min(o), c.max(o)))).count();
    let worst = inspection.near_duplicates.iter().map(|p| p.distance).fold(0.0, f64::max);
    println!(
        "audit/near-duplicates {name} {n} copies +-{levels} grey levels: found {found} ({:.1}%), {} pairs listed in all (max distance {worst:.4}), {secs:.2} s",
        100.0 * found as f64 / n as f64,
        pairs.len()
    );
}

fn clean_case(name: &str, raw: &RawDataset) {
    let (inspection, secs, data) = run(raw);
    let nearest = inspection.near_duplicates.first().map_or(f64::NAN, |p| p.distance);
    println!(
        "audit/clean {name}: {} label issues ({:.2}% of {} training examples; estimated noise {:.2}%; out-of-fold accuracy {:.2}%), {} near-duplicate pairs (closest {nearest:.4}), {secs:.2} s",
        inspection.labels.issues.len(),
        100.0 * inspection.labels.issues.len() as f64 / data.train.len() as f64,
        data.train.len(),
        100.0 * inspection.labels.estimated_noise,
        100.0 * inspection.metrics.get("label_classifier_accuracy").copied().unwrap_or(f64::NAN),
        inspection.near_duplicates.len(),
    );
}

fn main() {
    let out = std::env::var_os("AUDIT_FIXTURE_DIR").map(PathBuf::from);
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir).expect("fixture dir");
    }
    let only_full = std::env::var_os("AUDIT_FULL_ONLY").is_some();
    let digits = Source::Digits.load(&SourceOptions::default()).expect("digits");
    let digits = fixtures::subset(&digits, 10_000, 10_000, 0);
    if !only_full {
        clean_case("digits", &digits);
        for (from, to, rate) in [(1, 7, 0.1), (3, 8, 0.2), (4, 9, 0.3), (0, 6, 0.2)] {
            label_case("digits", &digits, from, to, rate, out.as_deref());
        }
        copy_case("digits", &digits, 25, 3);
    }
    let dir = PathBuf::from(
        std::env::var("FASHION_MNIST_DIR").unwrap_or_else(|_| "/usr/share/datasets/fashion-mnist".to_string()),
    );
    if !dir.exists() {
        println!("audit/fashion-mnist: skipped, {} not found (apt-get install dataset-fashion-mnist)", dir.display());
        return;
    }
    let fashion = Source::Idx(dir).load(&SourceOptions::default()).expect("fashion-mnist loads");
    if std::env::var_os("AUDIT_SWEEP").is_some() {
        let small = fixtures::subset(&fashion, 400, 1000, 0);
        for k in [10, 20] {
            for dims in [64, 196] {
                for conf in [0.1, 0.2, 0.3] {
                    SWEEP.with(|s| s.set((k, conf, dims)));
                    println!("-- k {k} dims {dims} max_self_confidence {conf}");
                    clean_case("fashion-4k", &small);
                    for (from, to, rate) in [(1, 3, 0.2), (7, 5, 0.2), (8, 0, 0.1), (8, 0, 0.3), (2, 4, 0.2)] {
                        label_case("fashion-4k", &small, from, to, rate, None);
                    }
                    if dims == 64 {
                        for (from, to, rate) in [(1, 7, 0.1), (3, 8, 0.2), (4, 9, 0.3), (0, 6, 0.2)] {
                            label_case("digits", &digits, from, to, rate, None);
                        }
                    }
                }
            }
        }
        return;
    }
    if !only_full {
        let small = fixtures::subset(&fashion, 400, 1000, 0);
        clean_case("fashion-4k", &small);
        for (from, to, rate) in [(1, 3, 0.2), (7, 5, 0.2), (8, 0, 0.1), (8, 0, 0.3), (2, 4, 0.2)] {
            label_case("fashion-4k", &small, from, to, rate, out.as_deref());
        }
        copy_case("fashion-4k", &small, 25, 3);
    }
    if std::env::var_os("AUDIT_SMALL_ONLY").is_some() {
        return;
    }
    clean_case("fashion-70k", &fashion);
    let mut flipped = fashion.clone();
    let truth = fixtures::flip_block(&mut flipped, 1, 3, 0.02, 1);
    let (inspection, secs, data) = run(&flipped);
    let in_train: BTreeSet<u32> = data.train.index.iter().copied().filter(|i| truth.contains(i)).collect();
    let found: BTreeSet<u32> = inspection.labels.issues.iter().map(|i| i.example.source_index).collect();
    let (recall, precision) = recall_precision(&found, &in_train);
    if let Some(dir) = &out {
        write_fixture(dir, "fashion-70k-1-3-0.02", &data, &in_train, &found, secs);
    }
    println!(
        "audit/labels fashion-70k 1>3 rate 0.02: planted {}, flagged {}, recall {:.1}%, precision {:.1}%, {secs:.2} s",
        in_train.len(),
        found.len(),
        100.0 * recall,
        100.0 * precision
    );
}
