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

use std::path::{Path, PathBuf};

use crate::data::RawDataset;

mod cifar;
mod csv;
mod human;
mod idx;
mod images;

#[cfg(test)]
pub(crate) mod counting;
#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

use cifar::load_cifar10;
use cifar::CIFAR_FILES;
use csv::load_csv;
pub use human::read_human_labels;
use idx::{idx_path, is_fashion, load_idx, IDX_FILES};
use images::{image_files, load_images};

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
