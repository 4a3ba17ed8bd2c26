//! Dataset loaders: every supported `data.source` into the canonical form (f32
//! features, u32 labels, class names). A malformed file is an error that names the
//! file and what is wrong; no input can make a loader panic.
//!
//! | source           | files                                                          |
//! |------------------|----------------------------------------------------------------|
//! | `builtin:digits` | UCI optical digits embedded by smartcore                       |
//! | `idx:DIR`        | `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` (MNIST family) |
//! | `cifar10:DIR`    | `data_batch_{1..5}.bin`, `test_batch.bin`, `batches.meta.txt`  |
//! | `csv:FILE`       | numeric feature columns and a label column (`data.csv.*`)      |
//! | `images:DIR`     | `DIR/<class>/<file>.{png,jpg,jpeg}` (`data.images.*`)          |

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::data::RawDataset;

/// How to read a source; the `data.*` knobs other than the source itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceOptions {
    pub csv_label: String,
    pub csv_header: bool,
    pub image_size: (usize, usize),
    pub image_channels: usize,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions { csv_label: "label".into(), csv_header: true, image_size: (28, 28), image_channels: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Digits,
    Idx(PathBuf),
    Cifar10(PathBuf),
    Csv(PathBuf),
    Images(PathBuf),
}

/// A problem with the user's data: a bad source name or a malformed file.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unknown data.source `{0}` (use builtin:digits, idx:DIR, cifar10:DIR, csv:FILE or images:DIR)")]
    Unknown(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

fn file_error(path: &Path, message: impl Into<String>) -> SourceError {
    SourceError::File { path: path.to_path_buf(), message: message.into() }
}

impl Source {
    /// Parses a `data.source` value; relative paths are relative to `base` (the
    /// directory of `pipe.toml`).
    pub fn parse(text: &str, base: &Path) -> Result<Source, SourceError> {
        let path = |rest: &str| if Path::new(rest).is_absolute() { PathBuf::from(rest) } else { base.join(rest) };
        match text.split_once(':') {
            Some(("builtin", "digits")) => Ok(Source::Digits),
            Some(("idx", rest)) if !rest.is_empty() => Ok(Source::Idx(path(rest))),
            Some(("cifar10", rest)) if !rest.is_empty() => Ok(Source::Cifar10(path(rest))),
            Some(("csv", rest)) if !rest.is_empty() => Ok(Source::Csv(path(rest))),
            Some(("images", rest)) if !rest.is_empty() => Ok(Source::Images(path(rest))),
            _ => Err(SourceError::Unknown(text.to_string())),
        }
    }

    /// The files whose contents identify the dataset, in a stable order, each with
    /// a name relative to the source (so moving the data changes no key).
    pub fn files(&self) -> Result<Vec<(String, PathBuf)>, SourceError> {
        match self {
            Source::Digits => Ok(Vec::new()),
            Source::Idx(dir) => {
                let mut files = Vec::new();
                for stem in IDX_FILES {
                    files.push((stem.to_string(), idx_path(dir, stem)?));
                }
                Ok(files)
            }
            Source::Cifar10(dir) => {
                let mut files: Vec<(String, PathBuf)> =
                    CIFAR_FILES.iter().map(|name| (name.to_string(), dir.join(name))).collect();
                if dir.join("batches.meta.txt").exists() {
                    files.push(("batches.meta.txt".into(), dir.join("batches.meta.txt")));
                }
                for (_, path) in &files {
                    if !path.is_file() {
                        return Err(file_error(path, "missing CIFAR-10 batch file"));
                    }
                }
                Ok(files)
            }
            Source::Csv(path) => {
                if !path.is_file() {
                    return Err(file_error(path, "no such CSV file"));
                }
                Ok(vec![("data.csv".into(), path.clone())])
            }
            Source::Images(dir) => image_files(dir)
                .map(|files| files.into_iter().map(|(class, path, name)| (format!("{class}/{name}"), path)).collect()),
        }
    }

    pub fn load(&self, options: &SourceOptions) -> Result<RawDataset, SourceError> {
        match self {
            Source::Digits => Ok(digits()),
            Source::Idx(dir) => load_idx(dir),
            Source::Cifar10(dir) => load_cifar10(dir),
            Source::Csv(path) => load_csv(path, options),
            Source::Images(dir) => load_images(dir, options),
        }
    }
}

/// The UCI optical digits set (1797 8x8 images, values 0..16), as embedded by smartcore.
fn digits() -> RawDataset {
    let dataset = smartcore::dataset::digits::load_dataset();
    RawDataset {
        x: dataset.data,
        y: dataset.target.iter().map(|&label| label as u32).collect(),
        shape: vec![8, 8],
        class_names: (0..10).map(|digit| digit.to_string()).collect(),
        test_start: None,
        value_range: Some((0.0, 16.0)),
    }
}

const IDX_FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

const FASHION_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

fn idx_path(dir: &Path, stem: &str) -> Result<PathBuf, SourceError> {
    for candidate in [dir.join(stem), dir.join(format!("{stem}.gz"))] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(file_error(&dir.join(stem), "missing IDX file (looked for it with and without .gz)"))
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, SourceError> {
    let bytes = std::fs::read(path).map_err(|err| file_error(path, err.to_string()))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(bytes.len() * 2);
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|err| file_error(path, format!("corrupt gzip stream: {err}")))?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// Parses one IDX file of unsigned bytes: returns its dimensions and data.
fn parse_idx(path: &Path, bytes: &[u8], want_dims: usize) -> Result<(Vec<usize>, Vec<u8>), SourceError> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(file_error(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(file_error(
            path,
            format!("IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)", bytes[2]),
        ));
    }
    let n_dims = bytes[3] as usize;
    if n_dims != want_dims {
        return Err(file_error(path, format!("expected {want_dims} IDX dimensions, found {n_dims}")));
    }
    let header = 4 + 4 * n_dims;
    if bytes.len() < header {
        return Err(file_error(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..n_dims)
        .map(|i| u32::from_be_bytes([bytes[4 + 4 * i], bytes[5 + 4 * i], bytes[6 + 4 * i], bytes[7 + 4 * i]]) as usize)
        .collect();
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let body = &bytes[header..];
    match expected {
        Some(n) if n == body.len() => Ok((dims, body.to_vec())),
        Some(n) => {
            Err(file_error(path, format!("truncated or padded: header says {n} values, file holds {}", body.len())))
        }
        None => Err(file_error(path, "IDX dimensions overflow")),
    }
}

fn load_idx(dir: &Path) -> Result<RawDataset, SourceError> {
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut shape = Vec::new();
    let mut test_start = None;
    for (part, (images, labels)) in [("train", (IDX_FILES[0], IDX_FILES[1])), ("t10k", (IDX_FILES[2], IDX_FILES[3]))] {
        let images_path = idx_path(dir, images)?;
        let labels_path = idx_path(dir, labels)?;
        let (image_dims, pixels) = parse_idx(&images_path, &read_maybe_gz(&images_path)?, 3)?;
        let (label_dims, label_bytes) = parse_idx(&labels_path, &read_maybe_gz(&labels_path)?, 1)?;
        if label_dims[0] != image_dims[0] {
            return Err(file_error(
                &labels_path,
                format!("{} labels for {} images in {}", label_dims[0], image_dims[0], images_path.display()),
            ));
        }
        let this_shape = image_dims[1..].to_vec();
        if !shape.is_empty() && shape != this_shape {
            return Err(file_error(&images_path, format!("image shape {this_shape:?} differs from train's {shape:?}")));
        }
        shape = this_shape;
        if part == "t10k" {
            test_start = Some(y.len());
        }
        x.extend(pixels.iter().map(|&p| p as f32));
        y.extend(label_bytes.iter().map(|&l| l as u32));
    }
    let n_classes = y.iter().max().map_or(0, |&m| m as usize + 1).max(1);
    Ok(RawDataset {
        x,
        y,
        shape,
        class_names: class_names(dir, n_classes),
        test_start,
        value_range: Some((0.0, 255.0)),
    })
}

/// `classes.txt` in the directory (one name per line) if present; Fashion-MNIST's
/// names for a directory named like it; otherwise the class numbers.
fn class_names(dir: &Path, n_classes: usize) -> Vec<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("classes.txt")) {
        let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        if names.len() >= n_classes {
            return names;
        }
    }
    let fashion = dir.to_string_lossy().to_ascii_lowercase().contains("fashion");
    (0..n_classes)
        .map(|i| if fashion && i < FASHION_CLASSES.len() { FASHION_CLASSES[i].to_string() } else { i.to_string() })
        .collect()
}

const CIFAR_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];
const CIFAR_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

fn load_cifar10(dir: &Path) -> Result<RawDataset, SourceError> {
    const RECORD: usize = 1 + 3 * 32 * 32;
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut test_start = None;
    for name in CIFAR_FILES {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|err| file_error(&path, err.to_string()))?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(file_error(
                &path,
                format!("truncated: {} bytes is not a whole number of {RECORD}-byte records", bytes.len()),
            ));
        }
        if name == "test_batch.bin" {
            test_start = Some(y.len());
        }
        for (row, record) in bytes.chunks_exact(RECORD).enumerate() {
            if record[0] > 9 {
                return Err(file_error(&path, format!("record {row} has label {}, expected 0..=9", record[0])));
            }
            y.push(record[0] as u32);
            x.extend(record[1..].iter().map(|&p| p as f32));
        }
    }
    let class_names = match std::fs::read_to_string(dir.join("batches.meta.txt")) {
        Ok(text) => {
            let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            if names.len() == 10 {
                names
            } else {
                CIFAR_CLASSES.iter().map(|s| s.to_string()).collect()
            }
        }
        Err(_) => CIFAR_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    Ok(RawDataset { x, y, shape: vec![3, 32, 32], class_names, test_start, value_range: Some((0.0, 255.0)) })
}

fn load_csv(path: &Path, options: &SourceOptions) -> Result<RawDataset, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|err| file_error(path, err.to_string()))?;
    let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
    let split = |line: &str| line.split(',').map(|cell| cell.trim().to_string()).collect::<Vec<_>>();
    let (header, first_data): (Vec<String>, Option<(usize, &str)>) = if options.csv_header {
        match lines.next() {
            Some((_, line)) => (split(line), None),
            None => return Err(file_error(path, "empty CSV file")),
        }
    } else {
        let first = lines.next().ok_or_else(|| file_error(path, "empty CSV file"))?;
        ((0..split(first.1).len()).map(|i| i.to_string()).collect(), Some(first))
    };
    let label_column = match header.iter().position(|name| *name == options.csv_label) {
        Some(column) => column,
        None if options.csv_label == "last" => header.len().saturating_sub(1),
        None => {
            return Err(file_error(
                path,
                format!("no label column `{}` (data.csv.label); columns: {}", options.csv_label, header.join(", ")),
            ))
        }
    };
    let mut x = Vec::new();
    let mut labels = Vec::new();
    for (line_index, line) in first_data.into_iter().chain(lines) {
        let cells = split(line);
        let row = line_index + 1;
        if cells.len() != header.len() {
            return Err(file_error(
                path,
                format!("line {row}: {} cells, expected {} (ragged row)", cells.len(), header.len()),
            ));
        }
        for (column, cell) in cells.iter().enumerate() {
            if column == label_column {
                if cell.is_empty() {
                    return Err(file_error(
                        path,
                        format!("line {row}, column {} (`{}`): missing label", column + 1, header[column]),
                    ));
                }
                labels.push(cell.clone());
                continue;
            }
            let value: f32 = cell.parse().map_err(|_| {
                let what = if cell.is_empty() {
                    "missing value".to_string()
                } else {
                    format!("cannot parse `{cell}` as a number")
                };
                file_error(path, format!("line {row}, column {} (`{}`): {what}", column + 1, header[column]))
            })?;
            x.push(value);
        }
    }
    if labels.is_empty() {
        return Err(file_error(path, "no data rows"));
    }
    // Class names: the distinct labels, in numeric order when they are all numbers.
    let mut names: Vec<String> = labels.clone();
    names.sort();
    names.dedup();
    if names.iter().all(|n| n.parse::<i64>().is_ok()) {
        names.sort_by_key(|n| n.parse::<i64>().unwrap_or_default());
    }
    let y = labels.iter().map(|l| names.iter().position(|n| n == l).unwrap_or_default() as u32).collect();
    Ok(RawDataset { x, y, shape: vec![header.len() - 1], class_names: names, test_start: None, value_range: None })
}

/// `(class, path, file name)` of every image, classes and files sorted.
fn image_files(dir: &Path) -> Result<Vec<(String, PathBuf, String)>, SourceError> {
    let read = |dir: &Path| -> Result<Vec<PathBuf>, SourceError> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|err| file_error(dir, err.to_string()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        Ok(entries)
    };
    let mut files = Vec::new();
    for class_dir in read(dir)?.into_iter().filter(|p| p.is_dir()) {
        let class = class_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for file in read(&class_dir)? {
            let extension = file.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
            if file.is_file() && matches!(extension.as_str(), "png" | "jpg" | "jpeg") {
                let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                files.push((class.clone(), file, name));
            }
        }
    }
    if files.is_empty() {
        return Err(file_error(dir, "no images found (expected DIR/<class>/<file>.png|jpg)"));
    }
    Ok(files)
}

fn load_images(dir: &Path, options: &SourceOptions) -> Result<RawDataset, SourceError> {
    let files = image_files(dir)?;
    let (height, width) = options.image_size;
    let channels = options.image_channels;
    let mut class_names: Vec<String> = files.iter().map(|(class, _, _)| class.clone()).collect();
    class_names.dedup();
    let mut x = Vec::with_capacity(files.len() * height * width * channels);
    let mut y = Vec::with_capacity(files.len());
    for (class, path, _) in &files {
        let image = image::open(path).map_err(|err| file_error(path, format!("unreadable image: {err}")))?;
        let filter = image::imageops::FilterType::Triangle;
        if channels == 1 {
            let gray = image::imageops::resize(&image.to_luma8(), width as u32, height as u32, filter);
            x.extend(gray.as_raw().iter().map(|&p| p as f32));
        } else {
            let rgb = image::imageops::resize(&image.to_rgb8(), width as u32, height as u32, filter);
            // Channels first: [3, H, W].
            for channel in 0..3 {
                x.extend(rgb.as_raw().iter().skip(channel).step_by(3).map(|&p| p as f32));
            }
        }
        y.push(class_names.iter().position(|c| c == class).unwrap_or_default() as u32);
    }
    let shape = if channels == 1 { vec![height, width] } else { vec![3, height, width] };
    Ok(RawDataset { x, y, shape, class_names, test_start: None, value_range: Some((0.0, 255.0)) })
}

/// Reads a second annotation: a CSV with the header `split,index,label`, one row per
/// relabelled example (`index` within its split; `label` a class name or number).
/// Returns `(line, split, index, label id)` per row.
pub fn read_human_labels(path: &Path, class_names: &[String]) -> Result<Vec<(usize, String, usize, u32)>, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|err| file_error(path, err.to_string()))?;
    let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
    match lines.next() {
        Some((_, header)) if header.split(',').map(str::trim).eq(["split", "index", "label"]) => {}
        Some((_, header)) => {
            return Err(file_error(
                path,
                format!("line 1, column 1: header must be `split,index,label`, found `{header}`"),
            ))
        }
        None => return Err(file_error(path, "empty file (expected the header `split,index,label`)")),
    }
    let mut rows = Vec::new();
    for (line_index, line) in lines {
        let line_number = line_index + 1;
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != 3 {
            return Err(file_error(
                path,
                format!("line {line_number}: {} cells, expected 3 (split,index,label)", cells.len()),
            ));
        }
        let at = |column: usize, message: String| {
            file_error(path, format!("line {line_number}, column {column}: {message}"))
        };
        if !matches!(cells[0], "train" | "val" | "test") {
            return Err(at(1, format!("split `{}` is not train, val or test", cells[0])));
        }
        let index: usize = cells[1].parse().map_err(|_| at(2, format!("`{}` is not an example index", cells[1])))?;
        let label = match class_names.iter().position(|name| name == cells[2]) {
            Some(id) => id as u32,
            None => match cells[2].parse::<u32>() {
                Ok(id) if (id as usize) < class_names.len() => id,
                _ => return Err(at(3, format!("`{}` is not a class name or number", cells[2]))),
            },
        };
        rows.push((line_number, cells[0].to_string(), index, label));
    }
    Ok(rows)
}
