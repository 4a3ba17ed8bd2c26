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

/// Upper bounds on what a loader reads, per file.
pub struct Limits {
    /// Bytes of one IDX file, decompressed (1 GiB: 20 times Fashion-MNIST's training images).
    pub idx_bytes: u64,
    /// Bytes of one CIFAR-10 batch file (1 GiB).
    pub cifar_bytes: u64,
    /// Bytes of a CSV dataset (512 MiB).
    pub csv_bytes: u64,
    /// Distinct labels of a CSV dataset.
    pub csv_classes: usize,
    /// Bytes of one image file (64 MiB) and pixels of one decoded image (64 Mpx).
    pub image_bytes: u64,
    pub image_pixels: u64,
    /// Bytes of `classes.txt` or `batches.meta.txt` (1 MiB).
    pub names_bytes: u64,
    /// Bytes of a human-labels CSV (64 MiB).
    pub human_labels_bytes: u64,
    /// Values of a whole image-folder dataset after resizing (2^30: 4 GiB of f32).
    pub dataset_values: u64,
}

pub const LIMITS: Limits = Limits {
    idx_bytes: 1 << 30,
    cifar_bytes: 1 << 30,
    csv_bytes: 512 << 20,
    csv_classes: 10_000,
    image_bytes: 64 << 20,
    image_pixels: 64 << 20,
    names_bytes: 1 << 20,
    human_labels_bytes: 64 << 20,
    dataset_values: 1 << 30,
};

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
    #[error(transparent)]
    Input(#[from] cache::InputError),
    #[error("data.images.channels = {0}: images are read as 1 (grayscale) or 3 (RGB) channels")]
    Channels(usize),
    #[error("internal error: the loader read `{0}`, which its source does not list (so it would not be in the key)")]
    Unlisted(String),
}

fn file_error(path: &Path, message: impl Into<String>) -> SourceError {
    SourceError::File { path: path.to_path_buf(), message: message.into() }
}

/// One file a loader reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// Its name relative to the source (what the key records, so moving the data
    /// directory changes no key).
    pub name: String,
    pub path: PathBuf,
    /// The source loads without it (`classes.txt`): its absence is part of the key.
    pub optional: bool,
}

impl DataFile {
    fn required(name: impl Into<String>, path: PathBuf) -> DataFile {
        DataFile { name: name.into(), path, optional: false }
    }

    fn optional(name: impl Into<String>, path: PathBuf) -> DataFile {
        DataFile { name: name.into(), path, optional: true }
    }
}

/// The only way a loader reads its files: by name, from the list the fingerprint hashes.
pub struct Reader {
    files: Vec<DataFile>,
}

impl Reader {
    fn file(&self, name: &str) -> Result<&DataFile, SourceError> {
        self.files.iter().find(|file| file.name == name).ok_or_else(|| SourceError::Unlisted(name.to_string()))
    }

    /// The path of a listed file (for messages and format sniffing).
    fn path(&self, name: &str) -> Result<&Path, SourceError> {
        Ok(&self.file(name)?.path)
    }

    /// Opens a listed regular file; `None` for an optional file that does not exist.
    fn open(&self, name: &str) -> Result<Option<(std::fs::File, u64, &Path)>, SourceError> {
        let file = self.file(name)?;
        match cache::open_input(&file.path) {
            Ok((handle, size)) => Ok(Some((handle, size, &file.path))),
            Err(err) if file.optional && err.is_not_found() => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Reads a listed file whole, at most `limit` bytes; `None` for an absent optional file.
    fn read(&self, name: &str, limit: u64, what: &'static str) -> Result<Option<Vec<u8>>, SourceError> {
        let file = self.file(name)?;
        match cache::read_input(&file.path, limit, what) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if file.optional && err.is_not_found() => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// A listed text file whose non-empty lines are names (`classes.txt`).
    fn names(&self, name: &str) -> Result<Option<Vec<String>>, SourceError> {
        let Some(bytes) = self.read(name, LIMITS.names_bytes, "a class names file")? else { return Ok(None) };
        let path = self.path(name)?;
        let text = String::from_utf8(bytes).map_err(|_| file_error(path, "not UTF-8 text"))?;
        Ok(Some(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()))
    }
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

    /// Every file the loader of this source reads, in a stable order: what the
    /// dataset fingerprint hashes, and all that [`Source::load`] may open.
    pub fn files(&self) -> Result<Vec<DataFile>, SourceError> {
        match self {
            Source::Digits => Ok(Vec::new()),
            Source::Idx(dir) => {
                let mut files = Vec::new();
                for stem in IDX_FILES {
                    files.push(DataFile::required(stem, idx_path(dir, stem)?));
                }
                files.push(DataFile::optional("classes.txt", dir.join("classes.txt")));
                Ok(files)
            }
            Source::Cifar10(dir) => {
                let mut files: Vec<DataFile> =
                    CIFAR_FILES.iter().map(|name| DataFile::required(*name, dir.join(name))).collect();
                for file in &files {
                    if !file.path.exists() {
                        return Err(file_error(&file.path, "missing CIFAR-10 batch file"));
                    }
                }
                files.push(DataFile::optional("batches.meta.txt", dir.join("batches.meta.txt")));
                Ok(files)
            }
            Source::Csv(path) => {
                if !path.exists() {
                    return Err(file_error(path, "no such CSV file"));
                }
                Ok(vec![DataFile::required("data.csv", path.clone())])
            }
            Source::Images(dir) => image_files(dir).map(|files| {
                files
                    .into_iter()
                    .map(|(class, path, name)| DataFile::required(format!("{class}/{name}"), path))
                    .collect()
            }),
        }
    }

    /// What else than file contents decides what the loader produces (hashed into
    /// the fingerprint beside the files): Fashion-MNIST's class names are chosen by
    /// the directory's name.
    pub fn identity_extras(&self) -> Vec<String> {
        match self {
            Source::Idx(dir) => vec![format!("fashion_names={}", is_fashion(dir))],
            _ => Vec::new(),
        }
    }

    pub fn load(&self, options: &SourceOptions) -> Result<RawDataset, SourceError> {
        if !matches!(options.image_channels, 1 | 3) && matches!(self, Source::Images(_)) {
            return Err(SourceError::Channels(options.image_channels));
        }
        let reader = Reader { files: self.files()? };
        match self {
            Source::Digits => Ok(digits()),
            Source::Idx(dir) => load_idx(&reader, dir),
            Source::Cifar10(_) => load_cifar10(&reader),
            Source::Csv(_) => load_csv(&reader, options),
            Source::Images(_) => load_images(&reader, options),
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
        // `exists`, not `is_file`: a FIFO named like the file is refused when read.
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(file_error(&dir.join(stem), "missing IDX file (looked for it with and without .gz)"))
}

fn is_fashion(dir: &Path) -> bool {
    dir.to_string_lossy().to_ascii_lowercase().contains("fashion")
}

/// Deflate cannot expand data by more than about 1032:1; a gzip stream claiming more
/// is truncated or lying, and is refused before it is decompressed.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// The dimensions an IDX header declares, and the header's length, from its first
/// bytes (`prefix` holds at least the 4 magic bytes and the dimensions, or is short).
fn idx_header(path: &Path, prefix: &[u8], want_dims: usize) -> Result<(Vec<usize>, usize), SourceError> {
    if prefix.len() < 4 || prefix[0] != 0 || prefix[1] != 0 {
        return Err(file_error(path, "not an IDX file (bad magic number)"));
    }
    if prefix[2] != 0x08 {
        return Err(file_error(
            path,
            format!("IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)", prefix[2]),
        ));
    }
    let n_dims = prefix[3] as usize;
    if n_dims != want_dims {
        return Err(file_error(path, format!("expected {want_dims} IDX dimensions, found {n_dims}")));
    }
    let header = 4 + 4 * n_dims;
    if prefix.len() < header {
        return Err(file_error(path, "truncated IDX header"));
    }
    let dims = (0..n_dims)
        .map(|i| {
            u32::from_be_bytes([prefix[4 + 4 * i], prefix[5 + 4 * i], prefix[6 + 4 * i], prefix[7 + 4 * i]]) as usize
        })
        .collect();
    Ok((dims, header))
}

/// The body size an IDX header declares, within [`Limits::idx_bytes`].
fn idx_body_len(path: &Path, dims: &[usize], header: usize) -> Result<usize, SourceError> {
    let values = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match values {
        Some(n) if (n as u64).saturating_add(header as u64) <= LIMITS.idx_bytes => Ok(n),
        _ => Err(file_error(
            path,
            format!(
                "IDX header declares dimensions {dims:?}: more than the {} bytes an IDX file may hold",
                LIMITS.idx_bytes
            ),
        )),
    }
}

/// Reads one listed IDX file of unsigned bytes (raw or gzip): its dimensions and
/// values. Never reads (or decompresses) more than the header declares.
fn read_idx(reader: &Reader, name: &str, want_dims: usize) -> Result<(Vec<usize>, Vec<u8>), SourceError> {
    let Some((file, size, path)) = reader.open(name)? else { return Err(SourceError::Unlisted(name.into())) };
    let mut file = std::io::BufReader::new(file);
    let io = |err: std::io::Error| file_error(path, err.to_string());
    let mut magic = [0u8; 2];
    let n_magic = read_up_to(&mut file, &mut magic).map_err(io)?;
    let gzip = n_magic == 2 && magic == [0x1f, 0x8b];
    if !gzip {
        let mut prefix = magic[..n_magic].to_vec();
        (&mut file).take(4 + 4 * 3 - n_magic as u64).read_to_end(&mut prefix).map_err(io)?;
        let (dims, header) = idx_header(path, &prefix, want_dims)?;
        let n = idx_body_len(path, &dims, header)?;
        let body_len = size.saturating_sub(header as u64);
        if body_len != n as u64 {
            return Err(file_error(
                path,
                format!("truncated or padded: header says {n} values, file holds {body_len}"),
            ));
        }
        let mut body = prefix.split_off(header.min(prefix.len()));
        body.reserve_exact(n - body.len().min(n));
        (&mut file).take((n - body.len().min(n)) as u64 + 1).read_to_end(&mut body).map_err(io)?;
        if body.len() != n {
            return Err(file_error(
                path,
                format!("truncated or padded: header says {n} values, file holds {}", body.len()),
            ));
        }
        return Ok((dims, body));
    }
    // gzip: the trailer's ISIZE is the decompressed size modulo 2^32.
    if size < 18 {
        return Err(file_error(path, "corrupt gzip stream: shorter than a gzip header and trailer"));
    }
    let trailer_size = {
        use std::io::{Seek, SeekFrom};
        let inner = file.get_mut();
        inner.seek(SeekFrom::End(-4)).map_err(io)?;
        let mut isize = [0u8; 4];
        inner.read_exact(&mut isize).map_err(io)?;
        inner.seek(SeekFrom::Start(0)).map_err(io)?;
        u32::from_le_bytes(isize)
    };
    let mut decoder = flate2::read::GzDecoder::new(std::io::BufReader::new(file.into_inner()));
    let mut prefix = Vec::new();
    let gz = |err: std::io::Error| file_error(path, format!("corrupt gzip stream: {err}"));
    (&mut decoder).take(4 + 4 * want_dims as u64).read_to_end(&mut prefix).map_err(gz)?;
    let (dims, header) = idx_header(path, &prefix, want_dims)?;
    let n = idx_body_len(path, &dims, header)?;
    let total = (header + n) as u64;
    if total as u32 != trailer_size {
        return Err(file_error(
            path,
            format!(
                "the IDX header declares {total} bytes but the gzip trailer says the stream holds {trailer_size} (mod 2^32): \
                 truncated, padded or not one gzip member"
            ),
        ));
    }
    if total > size.saturating_mul(MAX_DEFLATE_RATIO) {
        return Err(file_error(
            path,
            format!("the IDX header declares {total} bytes, more than {size} bytes of gzip can hold: truncated"),
        ));
    }
    let mut body = Vec::with_capacity(n);
    (&mut decoder).take(n as u64 + 1).read_to_end(&mut body).map_err(gz)?;
    if body.len() != n {
        return Err(file_error(
            path,
            format!("truncated or padded: header says {n} values, the gzip stream holds {}", body.len().min(n + 1)),
        ));
    }
    Ok((dims, body))
}

/// Reads into `buf` until it is full or the input ends; returns how much was read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

fn load_idx(reader: &Reader, dir: &Path) -> Result<RawDataset, SourceError> {
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut shape = Vec::new();
    let mut test_start = None;
    for (part, (images, labels)) in [("train", (IDX_FILES[0], IDX_FILES[1])), ("t10k", (IDX_FILES[2], IDX_FILES[3]))] {
        let (image_dims, pixels) = read_idx(reader, images, 3)?;
        let images_path = reader.path(images)?;
        if image_dims[1] == 0 || image_dims[2] == 0 {
            return Err(file_error(
                images_path,
                format!("images of {}x{} pixels: an image needs at least one", image_dims[1], image_dims[2]),
            ));
        }
        let (label_dims, label_bytes) = read_idx(reader, labels, 1)?;
        let labels_path = reader.path(labels)?;
        if label_dims[0] != image_dims[0] {
            return Err(file_error(
                labels_path,
                format!("{} labels for {} images in {}", label_dims[0], image_dims[0], images_path.display()),
            ));
        }
        let this_shape = image_dims[1..].to_vec();
        if !shape.is_empty() && shape != this_shape {
            return Err(file_error(images_path, format!("image shape {this_shape:?} differs from train's {shape:?}")));
        }
        shape = this_shape;
        if part == "t10k" {
            test_start = Some(y.len());
        }
        x.reserve_exact(pixels.len());
        x.extend(pixels.iter().map(|&p| p as f32));
        y.extend(label_bytes.iter().map(|&l| l as u32));
    }
    if test_start == Some(0) {
        return Err(file_error(reader.path(IDX_FILES[0])?, "no training images"));
    }
    let n_classes = y.iter().max().map_or(0, |&m| m as usize + 1).max(1);
    Ok(RawDataset {
        x,
        y,
        shape,
        class_names: class_names(reader, dir, n_classes)?,
        test_start,
        value_range: Some((0.0, 255.0)),
    })
}

/// `classes.txt` in the directory (one name per line) if present; Fashion-MNIST's
/// names for a directory named like it; otherwise the class numbers.
fn class_names(reader: &Reader, dir: &Path, n_classes: usize) -> Result<Vec<String>, SourceError> {
    if let Some(names) = reader.names("classes.txt")? {
        if names.len() >= n_classes {
            return Ok(names);
        }
    }
    let fashion = is_fashion(dir);
    Ok((0..n_classes)
        .map(|i| if fashion && i < FASHION_CLASSES.len() { FASHION_CLASSES[i].to_string() } else { i.to_string() })
        .collect())
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

fn load_cifar10(reader: &Reader) -> Result<RawDataset, SourceError> {
    const RECORD: usize = 1 + 3 * 32 * 32;
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut test_start = None;
    for name in CIFAR_FILES {
        let path = reader.path(name)?;
        let bytes = reader.read(name, LIMITS.cifar_bytes, "a CIFAR-10 batch file")?.unwrap_or_default();
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(file_error(
                path,
                format!("truncated: {} bytes is not a whole number of {RECORD}-byte records", bytes.len()),
            ));
        }
        if name == "test_batch.bin" {
            test_start = Some(y.len());
        }
        x.reserve_exact(bytes.len() / RECORD * (RECORD - 1));
        for (row, record) in bytes.chunks_exact(RECORD).enumerate() {
            if record[0] > 9 {
                return Err(file_error(path, format!("record {row} has label {}, expected 0..=9", record[0])));
            }
            y.push(record[0] as u32);
            x.extend(record[1..].iter().map(|&p| p as f32));
        }
    }
    let class_names = match reader.names("batches.meta.txt")? {
        Some(names) if names.len() == 10 => names,
        _ => CIFAR_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    Ok(RawDataset { x, y, shape: vec![3, 32, 32], class_names, test_start, value_range: Some((0.0, 255.0)) })
}

fn load_csv(reader: &Reader, options: &SourceOptions) -> Result<RawDataset, SourceError> {
    let path = reader.path("data.csv")?;
    let bytes = reader.read("data.csv", LIMITS.csv_bytes, "a CSV dataset")?.unwrap_or_default();
    let text = String::from_utf8(bytes).map_err(|err| {
        let offset = err.utf8_error().valid_up_to();
        let line = err.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
        file_error(path, format!("line {line}: not UTF-8 text"))
    })?;
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
    if header.len() < 2 {
        return Err(file_error(
            path,
            format!("no feature columns: the only column is the label `{}`", header[label_column]),
        ));
    }
    let mut x = Vec::new();
    // Labels as ids in order of first appearance; renumbered below.
    let mut ids: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut first_seen: Vec<String> = Vec::new();
    let mut raw_labels: Vec<u32> = Vec::new();
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
                let id = match ids.get(cell) {
                    Some(id) => *id,
                    None => {
                        if first_seen.len() >= LIMITS.csv_classes {
                            return Err(file_error(
                                path,
                                format!(
                                    "line {row}, column {} (`{}`): more than {} distinct labels (is data.csv.label the label column?)",
                                    column + 1,
                                    header[column],
                                    LIMITS.csv_classes
                                ),
                            ));
                        }
                        let id = first_seen.len() as u32;
                        ids.insert(cell.clone(), id);
                        first_seen.push(cell.clone());
                        id
                    }
                };
                raw_labels.push(id);
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
    if raw_labels.is_empty() {
        return Err(file_error(path, "no data rows"));
    }
    // Class names: the distinct labels, in numeric order when they are all numbers.
    let mut names: Vec<String> = first_seen.clone();
    names.sort();
    if names.iter().all(|n| n.parse::<i64>().is_ok()) {
        names.sort_by_key(|n| n.parse::<i64>().unwrap_or_default());
    }
    let renumber: Vec<u32> =
        first_seen.iter().map(|l| names.iter().position(|n| n == l).unwrap_or_default() as u32).collect();
    let y = raw_labels.iter().map(|&id| renumber[id as usize]).collect();
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
            // Anything named like an image is listed (and so in the key); a FIFO or a
            // directory named `x.png` is refused when it is read, not skipped silently.
            if matches!(extension.as_str(), "png" | "jpg" | "jpeg") {
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

/// Decodes one listed image file, within [`Limits::image_bytes`] and [`Limits::image_pixels`].
fn read_image(reader: &Reader, name: &str) -> Result<image::DynamicImage, SourceError> {
    let path = reader.path(name)?;
    let bytes = reader.read(name, LIMITS.image_bytes, "an image file")?.unwrap_or_default();
    let unreadable = |err: &dyn std::fmt::Display| file_error(path, format!("unreadable image: {err}"));
    let mut decoder =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| unreadable(&e))?;
    let mut limits = image::Limits::default();
    let side = 1u32 << 15;
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(LIMITS.image_pixels * 4);
    // The decoder checks the declared size against the limits before allocating.
    decoder.limits(limits);
    decoder.decode().map_err(|e| unreadable(&e))
}

fn load_images(reader: &Reader, options: &SourceOptions) -> Result<RawDataset, SourceError> {
    let (height, width) = options.image_size;
    let channels = options.image_channels;
    let files: Vec<(String, String)> = reader
        .files
        .iter()
        .map(|file| {
            let class = file.name.split_once('/').map_or("", |(class, _)| class).to_string();
            (class, file.name.clone())
        })
        .collect();
    let mut class_names: Vec<String> = files.iter().map(|(class, _)| class.clone()).collect();
    class_names.dedup();
    let values = (files.len() as u64).saturating_mul((height * width * channels) as u64);
    if values > LIMITS.dataset_values {
        let dir = reader.files.first().and_then(|file| file.path.parent()?.parent()).unwrap_or(Path::new("."));
        return Err(file_error(
            dir,
            format!(
                "{} images of {height}x{width}x{channels} are {values} values, more than a dataset may hold ({}): \
                 lower data.images.size",
                files.len(),
                LIMITS.dataset_values
            ),
        ));
    }
    let mut x = Vec::with_capacity(values as usize);
    let mut y = Vec::with_capacity(files.len());
    for (class, name) in &files {
        let image = read_image(reader, name)?;
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
    let text = cache::read_input_text(path, LIMITS.human_labels_bytes, "a human labels file")?;
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

/// A counting allocator for the property tests' memory bound: the most bytes a closure
/// had allocated at once on its thread.
#[cfg(test)]
pub(crate) mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(delta: isize) {
        // `try_with`: a thread's locals may already be gone while it exits.
        let _ = LIVE.try_with(|live| {
            let now = live.get() + delta;
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    // SAFETY: every call is forwarded to `System` unchanged; the bookkeeping touches only
    // const-initialised thread-locals without destructors (no allocation, no reentry).
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let ptr = unsafe { System.alloc(layout) };
            if !ptr.is_null() {
                add(layout.size() as isize);
            }
            ptr
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let ptr = unsafe { System.alloc_zeroed(layout) };
            if !ptr.is_null() {
                add(layout.size() as isize);
            }
            ptr
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            add(-(layout.size() as isize));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let new = unsafe { System.realloc(ptr, layout, new_size) };
            if !new.is_null() {
                add(new_size as isize - layout.size() as isize);
            }
            new
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Runs `f`; returns its result and the most bytes it held allocated at once.
    pub fn peak_bytes<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let base = LIVE.with(Cell::get);
        PEAK.with(|peak| peak.set(base));
        let out = f();
        let peak = PEAK.with(Cell::get) - base;
        (out, peak.max(0) as usize)
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Small valid datasets of every format, written to a directory.
    use std::io::Write as _;
    use std::path::{Path, PathBuf};

    pub fn temp_dir(name: &str) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Thousands of small files are written and removed: on tmpfs when there is one
        // (a disk mounted with `discard` makes each removal slow).
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let dir = base.join(format!("pipe-sources-{name}-{}-{n}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// splitmix64: a tiny seeded generator for test inputs.
    pub struct Gen(pub u64);

    impl Gen {
        pub fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        pub fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }

        /// One random change: flipped bytes, a cut, garbage appended, a range
        /// overwritten, a 32-bit field set to an extreme, or all-random bytes.
        pub fn mutate(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
            match self.below(7) {
                0 => {
                    for _ in 0..1 + self.below(4) {
                        if !bytes.is_empty() {
                            let at = self.below(bytes.len());
                            bytes[at] ^= 1 << self.below(8);
                        }
                    }
                }
                1 => bytes.truncate(self.below(bytes.len() + 1)),
                2 => {
                    let n = 1 + self.below(64);
                    let extra = self.bytes(n);
                    bytes.extend(extra);
                }
                3 => {
                    if !bytes.is_empty() {
                        let at = self.below(bytes.len());
                        let n = self.below(16).min(bytes.len() - at);
                        let noise = self.bytes(n);
                        bytes[at..at + n].copy_from_slice(&noise);
                    }
                }
                4 => {
                    if bytes.len() >= 4 {
                        let at = self.below(bytes.len() - 3);
                        let value: u32 = [0, 1, u32::MAX, 0x7fff_ffff, 0x0100_0000][self.below(5)];
                        bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
                    }
                }
                5 => {
                    let n = self.below(48);
                    bytes = self.bytes(n);
                }
                _ => {
                    // Header fields of IDX files live in the first 16 bytes.
                    if bytes.len() >= 16 {
                        let at = 4 + 4 * self.below(3);
                        let value = [0u32, 1, 3, 60000, u32::MAX][self.below(5)];
                        bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
                    }
                }
            }
            bytes
        }
    }

    pub fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            bytes.extend(d.to_be_bytes());
        }
        bytes.extend(data);
        bytes
    }

    pub fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// The four IDX files (`n` 4x4 images per part, 3 classes), the train images gzipped.
    pub fn idx_files(n: u32) -> Vec<(&'static str, Vec<u8>)> {
        let images: Vec<u8> = (0..n * 16).map(|i| (i * 37 % 256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
        vec![
            ("train-images-idx3-ubyte.gz", gzip(&idx_bytes(&[n, 4, 4], &images))),
            ("train-labels-idx1-ubyte", idx_bytes(&[n], &labels)),
            ("t10k-images-idx3-ubyte", idx_bytes(&[n, 4, 4], &images)),
            ("t10k-labels-idx1-ubyte", idx_bytes(&[n], &labels)),
        ]
    }

    pub fn write_all(dir: &Path, files: &[(&str, Vec<u8>)]) {
        for (name, bytes) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }

    pub const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

    pub fn cifar_files(records: usize) -> Vec<(&'static str, Vec<u8>)> {
        super::CIFAR_FILES
            .iter()
            .map(|name| {
                let mut bytes = Vec::new();
                for r in 0..records {
                    bytes.push((r % 10) as u8);
                    bytes.extend((0..CIFAR_RECORD - 1).map(|i| (i * 7 + r) as u8));
                }
                (*name, bytes)
            })
            .collect()
    }

    pub fn csv_text(rows: usize) -> String {
        let mut text = String::from("a,b,label\n");
        for r in 0..rows {
            text.push_str(&format!("{},{}.5,{}\n", r, r * 2, ["x", "y", "z"][r % 3]));
        }
        text
    }

    pub fn png_bytes(seed: u8, width: u32, height: u32) -> Vec<u8> {
        let image = image::GrayImage::from_fn(width, height, |x, y| image::Luma([(x * 13 + y * 7) as u8 ^ seed]));
        let mut bytes = Vec::new();
        image::DynamicImage::ImageLuma8(image)
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes
    }

    /// `pictures/<class>/<n>.png`, two classes of three images.
    pub fn image_fixture() -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for class in ["cat", "dog"] {
            for i in 0..3u8 {
                files.push((format!("{class}/{i}.png"), png_bytes(i * 40 + class.len() as u8, 6, 5)));
            }
        }
        files
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::data::prepare;

    /// Loads and, when that works, prepares: neither may panic.
    fn exercise(source: &Source, options: &SourceOptions) -> Result<(), String> {
        let raw = source.load(options).map_err(|e| e.to_string())?;
        prepare(&raw, "fuzz", &[0.6, 0.2, 0.2], 0, "standard").map(|_| ()).map_err(|e| e.to_string())
    }

    /// The memory bound of one property-test case: every input is a few KB, so a
    /// loader that allocates by what a header claims would show here.
    const CASE_BYTES: usize = 64 << 20;

    /// [`exercise`], returning whether it loaded and recording its peak allocation.
    fn bounded(peak: &mut usize, run: impl FnOnce() -> bool) -> bool {
        let (ok, bytes) = super::counting::peak_bytes(run);
        *peak = (*peak).max(bytes);
        ok
    }

    #[test]
    fn every_fixture_loads() {
        let dir = temp_dir("fixtures");
        write_all(&dir.join("idx"), &idx_files(6));
        write_all(&dir.join("cifar"), &cifar_files(2));
        std::fs::write(dir.join("data.csv"), csv_text(12)).unwrap();
        for (name, bytes) in image_fixture() {
            write_all(&dir.join("pictures"), &[(name.as_str(), bytes)]);
        }
        let options = SourceOptions { image_size: (5, 6), ..SourceOptions::default() };
        for source in ["idx:idx", "cifar10:cifar", "csv:data.csv", "images:pictures"] {
            let source = Source::parse(source, &dir).unwrap();
            let raw = source.load(&options).unwrap_or_else(|e| panic!("{source:?}: {e}"));
            assert!(raw.len() >= 6, "{source:?}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn degenerate_inputs_are_errors_not_panics() {
        let dir = temp_dir("degenerate");
        // A CSV with only the label column.
        std::fs::write(dir.join("labels.csv"), "label\na\nb\na\n").unwrap();
        let err = exercise(&Source::Csv(dir.join("labels.csv")), &SourceOptions::default()).unwrap_err();
        assert!(err.contains("no feature columns"), "{err}");
        // IDX images of width 0.
        let idx = dir.join("idx");
        let mut files = idx_files(4);
        files[0] = ("train-images-idx3-ubyte.gz", gzip(&idx_bytes(&[4, 4, 0], &[])));
        write_all(&idx, &files);
        let err = exercise(&Source::Idx(idx.clone()), &SourceOptions::default()).unwrap_err();
        assert!(err.contains("images of 4x0 pixels"), "{err}");
        // No training images at all.
        let mut files = idx_files(4);
        files[0] = ("train-images-idx3-ubyte.gz", gzip(&idx_bytes(&[0, 4, 4], &[])));
        files[1] = ("train-labels-idx1-ubyte", idx_bytes(&[0], &[]));
        write_all(&idx, &files);
        let err = exercise(&Source::Idx(idx.clone()), &SourceOptions::default()).unwrap_err();
        assert!(err.contains("no training images"), "{err}");
        // Two channels are not a format.
        let options = SourceOptions { image_channels: 2, ..SourceOptions::default() };
        let err = exercise(&Source::Images(dir.clone()), &options).unwrap_err();
        assert!(err.contains("1 (grayscale) or 3 (RGB)"), "{err}");
        // A split with no validation examples is an error, not a NaN later.
        std::fs::write(dir.join("two.csv"), "a,label\n1,x\n2,y\n").unwrap();
        let raw = Source::Csv(dir.join("two.csv")).load(&SourceOptions::default()).unwrap();
        let err = prepare(&raw, "csv", &[0.6, 0.2, 0.2], 0, "standard").unwrap_err().to_string();
        assert!(err.contains("no validation examples"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn gzip_bomb_is_refused_before_it_is_decompressed() {
        let dir = temp_dir("bomb");
        let mut files = idx_files(4);
        // 256 MiB of zeros behind a header that declares 4 images of 4x4: about 250 KB of gzip.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &idx_bytes(&[4, 4, 4], &[])).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            std::io::Write::write_all(&mut encoder, &zeros).unwrap();
        }
        files[0] = ("train-images-idx3-ubyte.gz", encoder.finish().unwrap());
        write_all(&dir, &files);
        let started = std::time::Instant::now();
        let err = Source::Idx(dir.clone()).load(&SourceOptions::default()).unwrap_err().to_string();
        assert!(err.contains("gzip trailer"), "{err}");
        assert!(started.elapsed().as_secs_f64() < 1.0, "refused before decompressing: {:?}", started.elapsed());

        // A header (and a forged trailer) declaring 900 MB that a few KB of gzip cannot hold.
        let mut big = gzip(&idx_bytes(&[1, 30000, 30000], &[0; 1000]));
        let claimed: u32 = 4 + 12 + 900_000_000;
        let len = big.len();
        big[len - 4..].copy_from_slice(&claimed.to_le_bytes());
        let mut files = idx_files(4);
        files[0] = ("train-images-idx3-ubyte.gz", big);
        write_all(&dir, &files);
        let err = Source::Idx(dir.clone()).load(&SourceOptions::default()).unwrap_err().to_string();
        assert!(err.contains("bytes of gzip can hold"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Property test: mutated and random IDX files (raw and gzip), CIFAR batches, CSV
    /// files, PNG folders and human-label files never panic, and each case is bounded
    /// (the limits keep every allocation to what the file can hold).
    #[test]
    fn loaders_survive_arbitrary_and_mutated_input() {
        let dir = temp_dir("fuzz");
        let mut gen = Gen(0x5eed);
        let started = std::time::Instant::now();
        let mut cases = 0;
        let mut loaded = 0;
        let mut peak = 0;
        // IDX, raw and gzip: mutate one of the four files (or its compressed form).
        let idx = dir.join("idx");
        for _ in 0..1500 {
            std::fs::remove_dir_all(&idx).ok();
            let mut files = idx_files(1 + gen.below(5) as u32);
            let which = gen.below(4);
            files[which].1 = if gen.below(2) == 0 || !files[which].0.ends_with(".gz") {
                gen.mutate(files[which].1.clone())
            } else {
                let raw = idx_bytes(&[3, 4, 4], &[1; 48]);
                gzip(&gen.mutate(raw))
            };
            if gen.below(4) == 0 {
                files.push(("classes.txt", gen.mutate(b"zero\none\ntwo\n".to_vec())));
            }
            write_all(&idx, &files);
            cases += 1;
            loaded += usize::from(bounded(&mut peak, || {
                exercise(&Source::Idx(idx.clone()), &SourceOptions::default()).is_ok()
            }));
        }
        // CIFAR-10 batches.
        let cifar = dir.join("cifar");
        let valid = cifar_files(1);
        write_all(&cifar, &valid);
        for _ in 0..300 {
            let which = gen.below(valid.len());
            let mutated = gen.mutate(valid[which].1.clone());
            write_all(&cifar, &[(valid[which].0, mutated)]);
            if gen.below(3) == 0 {
                write_all(&cifar, &[("batches.meta.txt", gen.bytes(40))]);
            }
            cases += 1;
            loaded += usize::from(bounded(&mut peak, || {
                exercise(&Source::Cifar10(cifar.clone()), &SourceOptions::default()).is_ok()
            }));
            write_all(&cifar, &[(valid[which].0, valid[which].1.clone())]);
        }
        // CSV with random options.
        let csv = dir.join("data.csv");
        for _ in 0..2000 {
            let text = csv_text(gen.below(20)).into_bytes();
            let bytes = if gen.below(3) == 0 {
                let tokens: [&[u8]; 9] = [b",", b"\n", b"\"", b"nan", b"-inf", b"1e999", b"", b"\xff", b"label"];
                let mut bytes = text;
                for _ in 0..1 + gen.below(4) {
                    let at = gen.below(bytes.len() + 1);
                    let token = tokens[gen.below(tokens.len())];
                    bytes.splice(at..at, token.iter().copied());
                }
                bytes
            } else {
                gen.mutate(text)
            };
            std::fs::write(&csv, bytes).unwrap();
            let options = SourceOptions {
                csv_label: ["label", "last", "0", "a"][gen.below(4)].into(),
                csv_header: gen.below(4) != 0,
                ..SourceOptions::default()
            };
            cases += 1;
            loaded += usize::from(bounded(&mut peak, || exercise(&Source::Csv(csv.clone()), &options).is_ok()));
        }
        // PNG folders.
        let pictures = dir.join("pictures");
        let valid = image_fixture();
        for _ in 0..300 {
            std::fs::remove_dir_all(&pictures).ok();
            for (name, bytes) in &valid {
                write_all(&pictures, &[(name.as_str(), bytes.clone())]);
            }
            let which = gen.below(valid.len());
            let mutated = gen.mutate(valid[which].1.clone());
            write_all(&pictures, &[(valid[which].0.as_str(), mutated)]);
            let options = SourceOptions {
                image_size: (1 + gen.below(8), 1 + gen.below(8)),
                image_channels: [1, 3][gen.below(2)],
                ..SourceOptions::default()
            };
            cases += 1;
            loaded += usize::from(bounded(&mut peak, || exercise(&Source::Images(pictures.clone()), &options).is_ok()));
        }
        // Human labels.
        let human = dir.join("human.csv");
        let classes: Vec<String> = ["x", "y", "z"].iter().map(|s| s.to_string()).collect();
        for _ in 0..1000 {
            let bytes = gen.mutate(b"split,index,label\ntrain,0,x\nval,3,2\ntest,1,z\n".to_vec());
            std::fs::write(&human, bytes).unwrap();
            cases += 1;
            loaded += usize::from(bounded(&mut peak, || read_human_labels(&human, &classes).is_ok()));
        }
        assert!(loaded > 100 && loaded < cases, "{loaded} of {cases} loaded: the mutations should hit both sides");
        eprintln!("{cases} cases, {loaded} loaded, at most {peak} bytes allocated at once");
        assert!(peak < CASE_BYTES, "a case allocated {peak} bytes at once");
        assert!(started.elapsed().as_secs() < 60, "{cases} cases took {:?}", started.elapsed());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Property test: mutated versions of the full example `pipe.toml`, and random
    /// bytes, never make parsing (or the data-knob checks) panic.
    #[test]
    fn pipe_toml_parsing_survives_arbitrary_and_mutated_input() {
        let schema = crate::knobs::schema();
        let example = include_str!("../../examples/digits/pipe.toml");
        let dir = temp_dir("toml");
        let cache = cache::Cache::open(dir.join(".pipe")).unwrap();
        let mut gen = Gen(0x70_6d6c);
        let tokens: [&str; 14] = [
            "[",
            "]",
            "=",
            "\"",
            "\n",
            "1e999",
            "-1",
            "nan",
            "[1, 2, 3]",
            "model.hidden = [",
            "99999999999999999999",
            "{ a = 1 }",
            "'''",
            "\u{0}",
        ];
        let mut accepted = 0;
        for case in 0..3000 {
            let text: Vec<u8> = match case % 3 {
                0 => gen.mutate(example.as_bytes().to_vec()),
                1 => {
                    let mut text = example.as_bytes().to_vec();
                    for _ in 0..1 + gen.below(3) {
                        let at = gen.below(text.len() + 1);
                        let token = tokens[gen.below(tokens.len())];
                        text.splice(at..at, token.bytes());
                    }
                    text
                }
                _ => {
                    let n = gen.below(200);
                    gen.bytes(n)
                }
            };
            let text = String::from_utf8_lossy(&text);
            let (parsed, bytes) = super::counting::peak_bytes(|| workspace::Config::parse(&schema, &text, "pipe.toml"));
            assert!(bytes < CASE_BYTES, "parsing allocated {bytes} bytes at once");
            if let Ok(config) = parsed {
                accepted += 1;
                let _ = crate::fingerprints(&config, &dir, cache.stats());
            }
        }
        assert!(accepted > 10, "{accepted}");
        // A 1,000-entry hidden list and a 1 MB key are errors, at once.
        let hidden = format!("model.hidden = [{}]\n", vec!["8"; 1000].join(", "));
        let err = workspace::Config::parse(&schema, &hidden, "pipe.toml").unwrap_err();
        assert!(err.to_string().contains("at most 64 values"), "{err}");
        let started = std::time::Instant::now();
        let key = "k".repeat(1 << 20);
        let err = workspace::Config::parse(&schema, &format!("{key} = 1\n"), "pipe.toml").unwrap_err();
        assert!(err.to_string().len() < 400, "the key is not echoed whole");
        assert!(started.elapsed().as_secs_f64() < 1.0, "{:?}", started.elapsed());
        std::fs::remove_dir_all(&dir).ok();
    }
}
