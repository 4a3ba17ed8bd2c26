//! The data audit end to end (issue 15): digits written as real IDX files with a
//! flipped block of labels and noisy copies of test images in the training file; `pipe
//! build inspect` must name the planted examples in `report.json`, draw them, and stay
//! quiet on the clean files.

use std::collections::BTreeSet;
use std::path::Path;

use pipelines::data::RawDataset;
use pipelines::inspect::{fixtures, inspect, InspectOptions};
use pipelines::sources::{Source, SourceOptions};
use serde_json::Value;

use crate::support::{Run, TestDir};

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    bytes
}

/// Digits scaled to 0..=240 grey levels (one digit level is 15 grey levels).
fn digits_as_bytes() -> RawDataset {
    let mut raw = fixtures::subset(&Source::Digits.load(&SourceOptions::default()).unwrap(), 10_000, 10_000, 0);
    raw.x.iter_mut().for_each(|v| *v *= 15.0);
    raw.value_range = Some((0.0, 255.0));
    raw
}

/// Writes `raw` (grey levels 0..=255, images of `raw.shape`) as the four IDX files.
fn write_idx(dir: &Path, raw: &RawDataset) {
    std::fs::create_dir_all(dir).unwrap();
    let test_start = raw.test_start.unwrap();
    let d = raw.n_features();
    let (h, w) = (raw.shape[0] as u32, raw.shape[1] as u32);
    let bytes = |range: std::ops::Range<usize>| -> Vec<u8> { raw.x[range].iter().map(|&v| v.round() as u8).collect() };
    let labels = |range: std::ops::Range<usize>| -> Vec<u8> { raw.y[range].iter().map(|&v| v as u8).collect() };
    let n_test = raw.len() - test_start;
    let write = |name: &str, b: Vec<u8>| std::fs::write(dir.join(name), b).unwrap();
    write("train-images-idx3-ubyte", idx_bytes(&[test_start as u32, h, w], &bytes(0..test_start * d)));
    write("train-labels-idx1-ubyte", idx_bytes(&[test_start as u32], &labels(0..test_start)));
    write("t10k-images-idx3-ubyte", idx_bytes(&[n_test as u32, h, w], &bytes(test_start * d..raw.len() * d)));
    write("t10k-labels-idx1-ubyte", idx_bytes(&[n_test as u32], &labels(test_start..raw.len())));
}

fn pipeline(raw: &RawDataset) -> (TestDir, Run, Value) {
    let dir = TestDir::with_raw("[data]\nsource = \"idx:digits\"\n");
    write_idx(&dir.path().join("digits"), raw);
    let run = dir.build(&["inspect"]);
    let path = run.stage("inspect")["artifacts"]["report.json"]["path"].as_str().unwrap().to_string();
    let report = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    (dir, run, report)
}

fn verdict(run: &Run, check: &str) -> Value {
    run.stage("inspect")["verdicts"].as_array().unwrap().iter().find(|v| v["check"] == check).cloned().unwrap()
}

#[test]
fn planted_label_errors_and_noisy_copies_are_found_and_drawn() {
    let mut raw = digits_as_bytes();
    let flipped = fixtures::flip_block(&mut raw, 1, 7, 0.1, 1);
    let copies = fixtures::plant_copies(&mut raw, 12, 3, 2);
    let (_dir, run, report) = pipeline(&raw);
    assert_eq!(run.code, 0, "{}", run.stderr);

    // Label issues: ranked by self-confidence, each with its suggested label and voters.
    let issues = report["label_noise"].as_array().unwrap();
    let found: BTreeSet<u64> = issues.iter().map(|i| i["example"]["source_index"].as_u64().unwrap()).collect();
    // A quarter of the flipped block lands in val, which the audit does not judge.
    let planted: BTreeSet<u64> = flipped.iter().map(|&i| i as u64).collect();
    let caught = found.intersection(&planted).count();
    assert!(caught * 10 >= planted.len() * 6, "caught {caught} of {} planted: {found:?}", planted.len());
    assert!(caught * 2 >= found.len(), "precision below 50%: {found:?}");
    let confidences: Vec<f64> = issues.iter().map(|i| i["self_confidence"].as_f64().unwrap()).collect();
    assert!(confidences.windows(2).all(|w| w[0] <= w[1]), "{confidences:?}");
    let first = &issues[0];
    assert_eq!(first["neighbours"].as_array().unwrap().len(), 10);
    assert_ne!(first["suggested_label"], first["example"]["label"]);
    let joint = &report["label_issues"]["confident_joint"];
    assert!(joint[7][1].as_u64().unwrap() > 0, "{joint}");

    // Every noisy copy is a cross-split near-duplicate of its test original.
    let pairs: BTreeSet<(u64, u64)> = report["near_duplicates"]["cross_split"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let (a, b) = (p["example"]["source_index"].as_u64().unwrap(), p["other"]["source_index"].as_u64().unwrap());
            (a.min(b), a.max(b))
        })
        .collect();
    for (copy, original) in &copies {
        assert!(
            pairs.contains(&((*copy as u64).min(*original as u64), (*copy as u64).max(*original as u64))),
            "{copy}~{original}: {pairs:?}"
        );
    }
    let artifacts = &run.stage("inspect")["artifacts"];
    for name in ["suspects.png", "near_duplicates.png", "confident_joint.svg"] {
        assert!(artifacts.get(name).is_some(), "{name} missing: {artifacts}");
    }
}

#[test]
fn clean_idx_digits_raise_no_warning() {
    let (_dir, run, report) = pipeline(&digits_as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    for check in ["label_noise", "near_duplicates", "leakage"] {
        assert_eq!(verdict(&run, check)["status"], "pass", "{check}");
    }
    assert_eq!(report["near_duplicates"]["cross_split"].as_array().unwrap().len(), 0);
    assert_eq!(report["near_duplicates"]["within_split"].as_array().unwrap().len(), 0);
}

/// `pipe build label_issues` on digits with 10% of the ones labelled seven: the
/// examples the trained model's penultimate layer contradicts most are the planted
/// flips, drawn in label_issues.png; the stage never reads the test split.
fn label_issues_run(raw: &RawDataset, model: &str, steps: usize) -> (TestDir, Run, Value) {
    let dir = TestDir::with_raw(&format!(
        "[data]\nsource = \"idx:digits\"\n[model]\nkind = \"{model}\"\n[train]\nsteps = {steps}\n[checks.overfit]\nmin_drop = 0.0\nmin_train_acc = 0.0\n"
    ));
    write_idx(&dir.path().join("digits"), raw);
    let run = dir.build(&["label_issues"]);
    let path = run.stage("label_issues")["artifacts"]["label_issues.json"]["path"].as_str().unwrap().to_string();
    let report = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    (dir, run, report)
}

#[test]
fn the_trained_model_ranks_planted_flips_first() {
    let mut raw = digits_as_bytes();
    let flipped = fixtures::flip_block(&mut raw, 1, 7, 0.1, 1);
    // The `data` stage splits the IDX files as the fixture's own split does.
    let data = fixtures::prepare(&raw).unwrap();
    let planted: BTreeSet<u64> = data.train.index.iter().filter(|i| flipped.contains(i)).map(|&i| i as u64).collect();
    let (_dir, run, report) = label_issues_run(&raw, "mlp", 300);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let ranked: Vec<u64> =
        report["issues"].as_array().unwrap().iter().map(|i| i["example"]["source_index"].as_u64().unwrap()).collect();
    let caught = ranked.iter().filter(|i| planted.contains(i)).count();
    let top = ranked.iter().take(planted.len()).filter(|i| planted.contains(i)).count();
    // Measured (label_issues v7): 12 planted in ~1,080 training examples; 17 flagged,
    // all 12 planted among them, 10 in the first 12 (v4: 18 flagged, 10 of them planted).
    assert!(caught * 10 >= planted.len() * 9, "caught {caught} of {}: {ranked:?}", planted.len());
    assert!(caught * 2 >= ranked.len(), "precision below 50%: {ranked:?}");
    assert!(top * 3 >= planted.len() * 2, "the first {} issues hold {top} planted: {ranked:?}", planted.len());
    let first = &report["issues"][0];
    assert_eq!(first["neighbours"].as_array().unwrap().len(), 10);
    assert_ne!(first["suggested_label"], first["example"]["label"]);
    assert!(first["model_confidence_in_label"].as_f64().unwrap() <= 1.0);
    assert!(report["confident_joint"][7][1].as_u64().unwrap() > 0, "{}", report["confident_joint"]);
    let stage = run.stage("label_issues");
    for name in ["label_issues.png", "confident_joint.svg"] {
        assert!(stage["artifacts"].get(name).is_some(), "{name} missing: {}", stage["artifacts"]);
    }
    let verdict = stage["verdicts"].as_array().unwrap().iter().find(|v| v["check"] == "label_issues").unwrap();
    assert_eq!(verdict["status"], "pass", "{verdict}");
    // `label_issues` is its own target: the overfit target does not run it.
    assert!(run.lines().iter().all(|l| l["stage"] != "evaluate"), "label_issues needs no test score");
}

/// `label_issues` with the measurement's convnet on digits with 30% of the fours
/// labelled nine (a block `inspect` finds 19 of 34 of, among 26 flags): the classifier
/// fitted out of fold on the trained model's embedding finds most of it with few false
/// flags. Measured: 24 of the 34 planted among 25 flags (label_issues v4, neighbour
/// votes in the same embedding: 5 among 7); about 15 s on one busy core.
#[test]
fn the_convnets_embedding_finds_most_of_a_large_flipped_block() {
    let mut raw = digits_as_bytes();
    let flipped = fixtures::flip_block(&mut raw, 4, 9, 0.3, 1);
    let dir = TestDir::with_raw(&format!("[data]\nsource = \"idx:digits\"\n{MEASURED_CONVNET}"));
    write_idx(&dir.path().join("digits"), &raw);
    let run = dir.build(&["--threads", "1", "label_issues"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let stage = run.stage("label_issues");
    let path = stage["artifacts"]["label_issues.json"]["path"].as_str().unwrap().to_string();
    let report: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let flagged: BTreeSet<u32> =
        report["flagged_source_indices"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(flagged.len() as u64, report["n_issues"].as_u64().unwrap());
    let (planted, recall, precision) = scored(&flagged, &raw, &flipped);
    assert_eq!(planted, 34);
    assert!(recall >= 0.6, "recall {recall:.3} ({} flagged)", flagged.len());
    assert!(precision >= 0.85, "precision {precision:.3} ({} flagged)", flagged.len());
    assert!(report["confident_joint"][9][4].as_u64().unwrap() > 0, "{}", report["confident_joint"]);
    let accuracy = report["classifier"]["out_of_fold_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.5 && accuracy < 1.0, "{accuracy}");
    let verdict = stage["verdicts"].as_array().unwrap().iter().find(|v| v["check"] == "label_issues").unwrap();
    assert_eq!(verdict["status"], "pass", "{verdict}");
}

/// The convnet of the quality measurement: small enough for a few hundred steps a
/// minute on one core, trained to fit its (noisy) training split.
const MEASURED_CONVNET: &str = "[model]\nkind = \"convnet\"\nchannels = [16, 32]\npool_every = 1\ndense = [64]\n[train]\nsteps = 600\nlr = 1e-3\neval_every = 200\n[checks.overfit]\nmin_drop = 0.0\nmin_train_acc = 0.0\n";

/// Recall and precision of `flagged` (source indices) against the planted flips that
/// landed in the training split.
fn scored(flagged: &BTreeSet<u32>, raw: &RawDataset, flipped: &BTreeSet<u32>) -> (usize, f64, f64) {
    let data = fixtures::prepare(raw).unwrap();
    let planted: BTreeSet<u32> = data.train.index.iter().copied().filter(|i| flipped.contains(i)).collect();
    let (recall, precision) = fixtures::recall_precision(flagged, &planted);
    (planted.len(), recall, precision)
}

/// The audit's quality with the model's eyes, beside `inspect`'s, on the planted
/// fixtures of `benches/audit.rs`: each fixture written as IDX files, `pipe build
/// inspect label_issues` with a small convnet (`MEASURED_CONVNET`), one line per
/// fixture. A measurement, not a test: minutes on one core. Run:
/// `cargo test --release --test e2e label_issues_quality -- --ignored --nocapture`;
/// with `PIPE_AUDIT_DIR` set the projects are kept there (a second run reuses the
/// trained models and reruns only what changed).
#[test]
#[ignore = "a measurement of several minutes"]
fn label_issues_quality() {
    let keep = std::env::var_os("PIPE_AUDIT_DIR").map(std::path::PathBuf::from);
    let digits = digits_as_bytes();
    let fashion_dir = std::env::var("FASHION_MNIST_DIR").unwrap_or_else(|_| "/usr/share/datasets/fashion-mnist".into());
    let fashion =
        Source::Idx(fashion_dir.into()).load(&SourceOptions::default()).map(|raw| fixtures::subset(&raw, 400, 1000, 0));
    let mut cases: Vec<(String, &'static str, RawDataset, BTreeSet<u32>)> = Vec::new();
    let only = std::env::var("PIPE_AUDIT_ONLY").unwrap_or_default();
    let mut add = |name: &str, source: &'static str, base: &RawDataset, flip: Option<(u32, u32, f64)>| {
        if !only.is_empty() && !only.split(',').any(|o| name.contains(o)) {
            return;
        }
        let mut raw = base.clone();
        let flipped =
            flip.map_or_else(BTreeSet::new, |(from, to, rate)| fixtures::flip_block(&mut raw, from, to, rate, 1));
        cases.push((name.to_string(), source, raw, flipped));
    };
    add("digits-clean", "digits", &digits, None);
    add("digits-4>9-0.3", "digits", &digits, Some((4, 9, 0.3)));
    add("digits-1>7-0.1", "digits", &digits, Some((1, 7, 0.1)));
    match &fashion {
        Ok(fashion) => {
            add("fashion-clean", "fashion", fashion, None);
            add("fashion-2>4-0.2", "fashion", fashion, Some((2, 4, 0.2)));
            add("fashion-1>3-0.2", "fashion", fashion, Some((1, 3, 0.2)));
            add("fashion-7>5-0.2", "fashion", fashion, Some((7, 5, 0.2)));
        }
        Err(error) => println!("label_issues_quality: Fashion-MNIST skipped ({error})"),
    }
    for (name, source, raw, flipped) in &cases {
        let temp;
        let dir = match &keep {
            Some(root) => root.join(name),
            None => {
                temp = TestDir::with_raw("");
                temp.path().to_path_buf()
            }
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pipe.toml"), format!("[data]\nsource = \"idx:{source}\"\n{MEASURED_CONVNET}"))
            .unwrap();
        write_idx(&dir.join(source), raw);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_pipe"))
            .args([
                "-C",
                dir.to_str().unwrap(),
                "build",
                "--json",
                "--threads",
                "1",
                "--jobs",
                "1",
                "inspect",
                "label_issues",
            ])
            .env_remove("PIPE_CACHE_DIR")
            .output()
            .unwrap();
        let run = Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        let read = |stage: &str, file: &str| -> Value {
            let path = run.stage(stage)["artifacts"][file]["path"].as_str().unwrap().to_string();
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
        };
        let label_issues = read("label_issues", "label_issues.json");
        let flagged: BTreeSet<u32> = label_issues["flagged_source_indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let n_train = label_issues["n_audited"].as_u64().unwrap();
        if let Some(variants) = label_issues["variants"].as_object() {
            for (variant, v) in variants {
                let f: BTreeSet<u32> =
                    v["flagged"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
                let (_, r, p) = scored(&f, raw, flipped);
                println!(
                    "variant {name} {variant}: flags {} ({:.2}%), recall {:.1}%, precision {:.1}%, oof accuracy {:.3}",
                    f.len(),
                    100.0 * f.len() as f64 / n_train.max(1) as f64,
                    100.0 * r,
                    100.0 * p,
                    v["accuracy"].as_f64().unwrap()
                );
            }
        }
        let (planted, recall, precision) = scored(&flagged, raw, flipped);
        // `inspect` in process on the same fixture, with the stage's defaults (its report
        // lists at most 100 issues).
        let options = InspectOptions {
            top_k: 16,
            knn_k: 10,
            knn_queries: 1_000_000,
            outlier_z: 6.0,
            seed: 0,
            folds: 5,
            near_duplicate_distance: 0.02,
            max_self_confidence: 0.2,
            embed_dims: pipelines::inspect::EMBED_DIMS,
        };
        let inspection = inspect(&fixtures::prepare(raw).unwrap(), &options).unwrap();
        let ours: BTreeSet<u32> = inspection.labels.issues.iter().map(|i| i.example.source_index).collect();
        let (_, inspect_recall, inspect_precision) = scored(&ours, raw, flipped);
        let inspect_reported = read("inspect", "report.json")["label_issues"]["n_issues"].as_u64().unwrap();
        assert_eq!(inspect_reported, ours.len() as u64, "{name}: inspect in process and in pipe differ");
        let overfit = run.stage("overfit");
        println!(
            "label_issues {name}: planted {planted} of {n_train}; label_issues flags {} ({:.2}%), recall {:.1}%, precision {:.1}%, model agreement {:.3} (overfit train acc {}, val acc {}); inspect flags {} ({:.2}%), recall {:.1}%, precision {:.1}%",
            flagged.len(),
            100.0 * flagged.len() as f64 / n_train.max(1) as f64,
            100.0 * recall,
            100.0 * precision,
            label_issues["model_agreement"].as_f64().unwrap_or(f64::NAN),
            overfit["metrics"]["train_acc"],
            overfit["metrics"]["val_acc"],
            ours.len(),
            100.0 * ours.len() as f64 / n_train.max(1) as f64,
            100.0 * inspect_recall,
            100.0 * inspect_precision,
        );
    }
}
