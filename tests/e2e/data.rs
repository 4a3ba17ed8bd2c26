//! Data loaders and the `inspect` stage on fixtures written here in real formats
//! (CSV, IDX, CIFAR-10 binary, PNG folders), with planted problems that must be
//! flagged with the right indices, clean fixtures that must raise no alarm, and
//! malformed files that must exit 2 naming the file.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use serde_json::Value;

use crate::support::{Run, TestDir};

/// A tiny deterministic generator for fixture noise.
struct Lcg(u64);

impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

const CENTERS: [[f64; 3]; 3] = [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]];

fn cluster_row(rng: &mut Lcg, class: usize) -> [f64; 3] {
    let c = CENTERS[class];
    [c[0] + rng.unit() - 0.5, c[1] + rng.unit() - 0.5, c[2] + rng.unit() - 0.5]
}

fn csv_pipeline(dir: &TestDir) {
    std::fs::write(dir.path().join("pipe.toml"), "[data]\nsource = \"csv:data.csv\"\n").unwrap();
}

fn inspect(dir: &TestDir) -> Run {
    dir.build(&["inspect"])
}

fn report(run: &Run, dir: &TestDir) -> Value {
    let path = run.stage("inspect")["artifacts"]["report.json"]["path"].as_str().unwrap().to_string();
    let _ = dir;
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn verdict(run: &Run, check: &str) -> Value {
    run.stage("inspect")["verdicts"].as_array().unwrap().iter().find(|v| v["check"] == check).cloned().unwrap()
}

fn sources(list: &Value) -> BTreeSet<u64> {
    list.as_array().unwrap().iter().map(|e| e["source_index"].as_u64().unwrap()).collect()
}

#[test]
fn clean_csv_raises_no_alarm() {
    let dir = TestDir::with_raw("");
    csv_pipeline(&dir);
    let mut rng = Lcg(1);
    let mut text = String::from("f0,f1,f2,label\n");
    for i in 0..180 {
        let class = i % 3;
        let row = cluster_row(&mut rng, class);
        text.push_str(&format!("{:.4},{:.4},{:.4},{}\n", row[0], row[1], row[2], ["a", "b", "c"][class]));
    }
    std::fs::write(dir.path().join("data.csv"), text).unwrap();
    let run = inspect(&dir);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for verdict in run.stage("inspect")["verdicts"].as_array().unwrap() {
        assert_eq!(verdict["status"], "pass", "{verdict}");
    }
    let data = run.stage("data");
    assert_eq!(data["metrics"]["n_train"].as_f64().unwrap() as u64, 108);
    assert_eq!(data["metrics"]["n_classes"], 3.0);
}

#[test]
fn planted_csv_problems_are_flagged_with_their_indices() {
    let dir = TestDir::with_raw("");
    csv_pipeline(&dir);
    // The planted block is about 6% of the training split; label issues are likely
    // errors (confident learning), so the warning threshold sits below that rate.
    let toml = dir.path().join("pipe.toml");
    let text = std::fs::read_to_string(&toml).unwrap() + "\n[checks.inspect]\nmax_suspect_share = 0.03\n";
    std::fs::write(&toml, text).unwrap();
    let mut rng = Lcg(2);
    // Rows: 0..12 class-0 inputs labelled `b` (mislabelled block); then 100 `a`,
    // 100 `b`, 15 `c` (heavy imbalance); then planted copies.
    let mut rows: Vec<([f64; 3], &str)> = Vec::new();
    for _ in 0..12 {
        rows.push((cluster_row(&mut rng, 0), "b"));
    }
    for (class, label, n) in [(0, "a", 100), (1, "b", 100), (2, "c", 15)] {
        for _ in 0..n {
            rows.push((cluster_row(&mut rng, class), label));
        }
    }
    let leaked = rows[50];
    let mut leak_rows = Vec::new();
    for _ in 0..8 {
        leak_rows.push(rows.len());
        rows.push(leaked);
    }
    let conflict_twin = rows.len();
    rows.push((rows[60].0, "c"));
    let nan_row = 70;
    let mut text = String::from("f0,f1,const,f2,label\n");
    for (i, (row, label)) in rows.iter().enumerate() {
        let f2 = if i == nan_row { "nan".to_string() } else { format!("{:.4}", row[2]) };
        text.push_str(&format!("{:.4},{:.4},5.0,{f2},{label}\n", row[0], row[1]));
    }
    std::fs::write(dir.path().join("data.csv"), text).unwrap();
    assert_eq!(leak_rows, (227..235).collect::<Vec<_>>());

    let run = inspect(&dir);
    assert_eq!(run.code, 1, "leakage, conflicts and NaN fail the build: {}", run.stderr);
    let report = report(&run, &dir);

    // Exact copies across splits: one group holding row 50 and its 8 copies.
    let cross = report["duplicates"]["cross_split"].as_array().unwrap();
    let leak_group = cross.iter().map(sources).find(|g| g.contains(&50)).expect("row 50's copies are leakage");
    assert_eq!(leak_group, std::iter::once(50).chain(227..235).collect());
    assert_eq!(verdict(&run, "leakage")["status"], "fail");

    // Identical inputs with another label.
    let conflicts = report["duplicates"]["conflicting_labels"].as_array().unwrap();
    assert!(conflicts.iter().map(sources).any(|g| g == BTreeSet::from([60, conflict_twin as u64])), "{conflicts:?}");
    assert_eq!(verdict(&run, "conflicting_labels")["status"], "fail");

    // The NaN cell.
    assert_eq!(sources(&report["non_finite"]), BTreeSet::from([nan_row as u64]));
    assert_eq!(verdict(&run, "corrupt_values")["status"], "fail");

    // The constant column is feature 2 of the 4 feature columns.
    assert_eq!(report["constant_features"], serde_json::json!([2]));
    assert_eq!(verdict(&run, "constant_features")["status"], "warn");

    // Heavy imbalance.
    assert_eq!(verdict(&run, "class_balance")["status"], "warn");

    // Label noise: every suspect is from the mislabelled block, and most of the
    // block's training examples are caught.
    let suspects: BTreeSet<u64> = report["label_noise"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["example"]["source_index"].as_u64().unwrap())
        .collect();
    // The conflict twin (row 60's inputs labelled `c`) is rightly a suspect too; a
    // clean example next to the block may be, by chance, but not many.
    let planted: BTreeSet<u64> = (0..12).chain([conflict_twin as u64]).collect();
    let caught = suspects.intersection(&planted).count();
    assert!(caught >= 5, "only {caught} planted examples caught: {suspects:?}");
    assert!(suspects.difference(&planted).count() <= 3, "too many false suspects: {suspects:?}");
    assert_eq!(verdict(&run, "label_noise")["status"], "warn");
}

#[test]
fn malformed_csv_exits_2_with_path_line_and_column() {
    let dir = TestDir::with_raw("");
    csv_pipeline(&dir);
    std::fs::write(dir.path().join("data.csv"), "a,b,label\n1,2,x\n3,oops,y\n").unwrap();
    let run = inspect(&dir);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("data.csv: line 3, column 2 (`b`): cannot parse `oops` as a number"), "{}", run.stderr);

    std::fs::write(dir.path().join("data.csv"), "a,b,label\n1,2,x\n3,y\n").unwrap();
    let run = inspect(&dir);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("data.csv: line 3: 2 cells, expected 3 (ragged row)"), "{}", run.stderr);

    std::fs::write(dir.path().join("data.csv"), "a,b,label\n1,,x\n").unwrap();
    let run = inspect(&dir);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("line 2, column 2 (`b`): missing value"), "{}", run.stderr);
}

#[test]
fn touching_an_unchanged_data_file_rehashes_once_and_runs_nothing() {
    let dir = TestDir::with_raw("");
    csv_pipeline(&dir);
    let mut text = String::from("x,label\n");
    for i in 0..60 {
        text.push_str(&format!("{},{}\n", i as f64 + 0.5, i % 2));
    }
    let csv = dir.path().join("data.csv");
    std::fs::write(&csv, text).unwrap();
    assert_eq!(inspect(&dir).done()["ran"], 2);
    let file = std::fs::File::options().append(true).open(&csv).unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
    drop(file);
    let hashing =
        |run: &Run| run.stderr.lines().filter(|l| l.contains("hashing file") && l.contains("data.csv")).count();
    let run = dir.run_with_env(&["build", "--json", "inspect"], &[("PIPE_LOG", "debug")]);
    assert_eq!(run.done()["ran"], 0, "{}", run.stderr);
    assert_eq!(hashing(&run), 1, "{}", run.stderr);
    let run = dir.run_with_env(&["build", "--json", "inspect"], &[("PIPE_LOG", "debug")]);
    assert_eq!(run.done()["ran"], 0);
    assert_eq!(hashing(&run), 0, "{}", run.stderr);
}

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(data);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// 12x12 images: the left (class 0) or right (class 1) half bright, with a brighter
/// 3x3 square in it at a position given by `slot`; every (class, slot) is distinct.
fn square_image(class: usize, slot: usize) -> Vec<u8> {
    let (row, col) = (slot % 10, slot / 10 + if class == 0 { 0 } else { 7 });
    let mut image: Vec<u8> = (0..144).map(|i| if (i % 12 < 6) == (class == 0) { 160 } else { 10 }).collect();
    for r in row..row + 3 {
        for c in col..col + 3 {
            image[r * 12 + c] = 255;
        }
    }
    image
}

fn write_idx(dir: &Path, leak_train_image: Option<usize>) {
    std::fs::create_dir_all(dir).unwrap();
    let (mut train_x, mut train_y, mut test_x, mut test_y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Slots 0..30 per class: 20 go to the training file, 5 to the test file.
    for i in 0..40 {
        let (class, slot) = (i % 2, i / 2 + (i / 2) / 4);
        train_x.extend(square_image(class, slot));
        train_y.push(class as u8);
    }
    for i in 0..10 {
        let (class, slot) = (i % 2, 5 * (i / 2) + 4); // the slots the training file skips
        let image = match leak_train_image {
            Some(train) if i == 3 => train_x[train * 144..(train + 1) * 144].to_vec(),
            _ => square_image(class, slot),
        };
        test_x.extend(image);
        test_y.push(match leak_train_image {
            Some(train) if i == 3 => train_y[train],
            _ => class as u8,
        });
    }
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gzip(&idx_bytes(&[40, 12, 12], &train_x))).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_bytes(&[40], &train_y)).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx_bytes(&[10, 12, 12], &test_x)).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), gzip(&idx_bytes(&[10], &test_y))).unwrap();
}

#[test]
fn idx_keeps_the_declared_test_split_and_flags_a_leaked_image() {
    let dir = TestDir::with_raw("[data]\nsource = \"idx:mnist\"\n");
    write_idx(&dir.path().join("mnist"), Some(6));
    let run = inspect(&dir);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let data = run.stage("data");
    assert_eq!(data["metrics"]["n_test"], 10.0, "t10k is the test split");
    assert_eq!(data["metrics"]["n_train"].as_f64().unwrap() + data["metrics"]["n_val"].as_f64().unwrap(), 40.0);
    let report = report(&run, &dir);
    let cross = report["duplicates"]["cross_split"].as_array().unwrap();
    assert_eq!(cross.len(), 1, "{cross:?}");
    // Source indices: train file 0..40, then t10k 40..50; test image 3 copies train image 6.
    assert_eq!(sources(&cross[0]), BTreeSet::from([6, 43]));
    let test_copy = cross[0].as_array().unwrap().iter().find(|e| e["split"] == "test").unwrap();
    assert_eq!(test_copy["index"], 3);
    for name in ["samples.png", "class_means.png", "pixel_std.png", "histogram.svg"] {
        assert!(run.stage("inspect")["artifacts"][name].is_object(), "{name}");
    }

    // The clean set raises no alarm.
    let clean = TestDir::with_raw("[data]\nsource = \"idx:mnist\"\n");
    write_idx(&clean.path().join("mnist"), None);
    let run = inspect(&clean);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let verdicts = run.stage("inspect")["verdicts"].clone();
    let alarms: Vec<&Value> = verdicts.as_array().unwrap().iter().filter(|v| v["status"] != "pass").collect();
    assert!(alarms.is_empty(), "{alarms:?}");
}

#[test]
fn malformed_idx_exits_2_naming_the_file() {
    let dir = TestDir::with_raw("[data]\nsource = \"idx:mnist\"\n");
    let mnist = dir.path().join("mnist");
    write_idx(&mnist, None);
    std::fs::write(mnist.join("train-labels-idx1-ubyte"), b"\x12\x34\x08\x01").unwrap();
    let run = inspect(&dir);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("train-labels-idx1-ubyte: not an IDX file (bad magic number)"), "{}", run.stderr);

    write_idx(&mnist, None);
    let truncated = &idx_bytes(&[10, 12, 12], &vec![0u8; 1440])[..900];
    std::fs::write(mnist.join("t10k-images-idx3-ubyte"), truncated).unwrap();
    let run = inspect(&dir);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("t10k-images-idx3-ubyte: truncated or padded"), "{}", run.stderr);

    std::fs::remove_file(mnist.join("t10k-images-idx3-ubyte")).unwrap();
    let run = inspect(&dir);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("t10k-images-idx3-ubyte: missing IDX file"), "{}", run.stderr);
}

fn write_cifar(dir: &Path, records_per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Lcg(9);
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for name in names {
        let mut bytes = Vec::new();
        for r in 0..records_per_file {
            let label = (r % 10) as u8;
            bytes.push(label);
            for _ in 0..3072 {
                bytes.push((label as f64 * 20.0 + rng.unit() * 40.0) as u8);
            }
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn cifar10_loads_and_a_truncated_batch_exits_2() {
    let dir = TestDir::with_raw("[data]\nsource = \"cifar10:cifar\"\n");
    let cifar = dir.path().join("cifar");
    write_cifar(&cifar, 10);
    let run = inspect(&dir);
    assert!(run.code <= 1, "{}", run.stderr);
    let data = run.stage("data");
    assert_eq!(data["metrics"]["n_test"], 10.0);
    assert_eq!(data["metrics"]["n_features"], 3072.0);
    assert!(run.stage("inspect")["artifacts"]["samples.png"].is_object());

    let bytes = std::fs::read(cifar.join("data_batch_3.bin")).unwrap();
    std::fs::write(cifar.join("data_batch_3.bin"), &bytes[..bytes.len() - 100]).unwrap();
    let run = inspect(&dir);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("data_batch_3.bin: truncated"), "{}", run.stderr);
}

fn write_png(path: &Path, class: usize, variant: usize) {
    let image = image::GrayImage::from_fn(12, 12, |x, y| {
        let on = if class == 0 { y as usize == 2 + variant % 8 } else { x as usize == 2 + variant % 8 };
        image::Luma([if on { 230 } else { (x + y) as u8 }])
    });
    image.save(path).unwrap();
}

#[test]
fn image_folders_load_and_an_unreadable_png_exits_2_naming_it() {
    let dir = TestDir::with_raw("[data]\nsource = \"images:pictures\"\nimages.size = [12, 12]\n");
    for (class, name) in ["circle", "square"].iter().enumerate() {
        let folder = dir.path().join("pictures").join(name);
        std::fs::create_dir_all(&folder).unwrap();
        for variant in 0..15 {
            write_png(&folder.join(format!("{variant:02}.png")), class, variant);
        }
    }
    let run = inspect(&dir);
    assert!(run.code <= 1, "{}", run.stderr);
    assert_eq!(run.stage("data")["metrics"]["n_classes"], 2.0);
    let samples = run.stage("inspect")["artifacts"]["samples.png"]["path"].as_str().unwrap().to_string();
    assert!(image::open(samples).unwrap().width() > 12);

    let broken = dir.path().join("pictures/square/99.png");
    std::fs::write(&broken, b"this is not a png").unwrap();
    let run = inspect(&dir);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("pictures/square/99.png: unreadable image"), "{}", run.stderr);
}

#[test]
fn batch_preview_is_the_first_training_batch() {
    let dir = TestDir::with_pipeline("[train]\nbatch_size = 16\n");
    let run = dir.build(&["batch_preview"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let preview = run.stage("batch_preview");
    let json: Value = serde_json::from_slice(
        &std::fs::read(preview["artifacts"]["batch_preview.json"]["path"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(json["batch_size"], 16);
    assert_eq!(json["labels"].as_array().unwrap().len(), 16);
    // Standardised inputs: the batch is roughly centred with unit spread.
    assert!(json["mean"].as_f64().unwrap().abs() < 0.5, "{json}");
    let png = preview["artifacts"]["batch_preview.png"]["path"].as_str().unwrap();
    assert!(image::open(png).unwrap().width() > 8 * 8);
    // A different seed shuffles differently: a different first batch.
    let other = dir.build(&["batch_preview", "--set", "train.seed=1"]);
    assert_ne!(
        other.stage("batch_preview")["artifacts"]["batch_preview.json"]["hash"],
        preview["artifacts"]["batch_preview.json"]["hash"]
    );
}
