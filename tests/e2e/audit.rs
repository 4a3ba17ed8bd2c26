//! The data audit end to end (issue 15): digits written as real IDX files with a
//! flipped block of labels and noisy copies of test images in the training file; `pipe
//! build inspect` must name the planted examples in `report.json`, draw them, and stay
//! quiet on the clean files.

use std::collections::BTreeSet;
use std::path::Path;

use pipelines::data::RawDataset;
use pipelines::inspect::fixtures;
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

fn write_idx(dir: &Path, raw: &RawDataset) {
    std::fs::create_dir_all(dir).unwrap();
    let test_start = raw.test_start.unwrap();
    let d = raw.n_features();
    let bytes = |range: std::ops::Range<usize>| -> Vec<u8> { raw.x[range].iter().map(|&v| v.round() as u8).collect() };
    let labels = |range: std::ops::Range<usize>| -> Vec<u8> { raw.y[range].iter().map(|&v| v as u8).collect() };
    let n_test = raw.len() - test_start;
    let write = |name: &str, b: Vec<u8>| std::fs::write(dir.join(name), b).unwrap();
    write("train-images-idx3-ubyte", idx_bytes(&[test_start as u32, 8, 8], &bytes(0..test_start * d)));
    write("train-labels-idx1-ubyte", idx_bytes(&[test_start as u32], &labels(0..test_start)));
    write("t10k-images-idx3-ubyte", idx_bytes(&[n_test as u32, 8, 8], &bytes(test_start * d..raw.len() * d)));
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
    // Measured: 12 planted in ~1,080 training examples; 18 flagged, 10 of them planted.
    assert!(caught * 4 >= planted.len() * 3, "caught {caught} of {}: {ranked:?}", planted.len());
    assert!(top * 2 >= planted.len(), "the first {} issues hold {top} planted: {ranked:?}", planted.len());
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
