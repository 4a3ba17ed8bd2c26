//! Datasets in one canonical form (f32 features `[N, ...]`, u32 labels, class
//! names), a seeded stratified split and normalisation with training statistics
//! only, stored as one safetensors artifact.

use std::collections::BTreeMap;

use cache::{ArtifactHash, StatCache};
use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::sources::{Source, SourceError, SourceOptions};
use crate::tensors::{TensorFile, TensorFileError};

pub use crate::normalize::Normalize;

/// A whole dataset as loaded from its source.
#[derive(Debug, Clone)]
pub struct RawDataset {
    /// Row-major, `n * n_features` values.
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    /// Shape of one example (`[8, 8]` for digits, `[3, 32, 32]` for CIFAR-10).
    pub shape: Vec<usize>,
    pub class_names: Vec<String>,
    /// Examples from this index on form the source's declared test split.
    pub test_start: Option<usize>,
    /// The range raw values must lie in, when the format declares one.
    pub value_range: Option<(f32, f32)>,
}

impl RawDataset {
    pub fn n_features(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("data.split must have 3 fractions (train, val, test) summing to 1, got {0:?}")]
    BadSplit(Vec<f64>),
    #[error("the split leaves no training examples")]
    EmptyTrain,
    #[error(
        "data.split = {fractions:?} leaves no validation examples ({pool} examples to split): \
         raise the validation fraction or add data"
    )]
    EmptyVal { fractions: Vec<f64>, pool: usize },
    #[error("the dataset has no features (every example is empty)")]
    NoFeatures,
    #[error("data.downscale = {factor} needs images of at least {factor}x{factor} pixels, but examples have shape {shape:?}")]
    Downscale { factor: usize, shape: Vec<usize> },
    #[error(transparent)]
    Config(#[from] workspace::ConfigError),
    #[error("dataset artifact: {0}")]
    Artifact(#[from] TensorFileError),
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
}

impl DataError {
    /// The user's data or config is wrong (exit 2), not the tool (exit 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            DataError::Source(_)
                | DataError::BadSplit(_)
                | DataError::EmptyTrain
                | DataError::EmptyVal { .. }
                | DataError::NoFeatures
                | DataError::Downscale { .. }
                | DataError::Config(_)
        )
    }
}

/// The content fingerprint of a source: what identifies the dataset in stage keys.
/// It covers every file the loader reads ([`Source::files`], the list the loader's
/// reader is limited to), an optional file's absence included, and whatever else
/// decides the loader's output ([`Source::identity_extras`]). Files are hashed through
/// the stat cache, so an untouched dataset is not re-read.
pub fn fingerprint(source: &Source, stats: &StatCache) -> Result<ArtifactHash, DataError> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"pipe-dataset-v2\n");
    match source {
        Source::Digits => {
            let raw = source.load(&SourceOptions::default())?;
            hasher.update(b"builtin:digits\n");
            // The same bytes as one value at a time, hashed in one call (115,000
            // calls cost more than the rest of a no-op build's hashing).
            let mut bytes = Vec::with_capacity(4 * (raw.x.len() + raw.y.len()));
            bytes.extend(raw.x.iter().flat_map(|value| value.to_le_bytes()));
            bytes.extend(raw.y.iter().flat_map(|label| label.to_le_bytes()));
            hasher.update(&bytes);
        }
        _ => {
            for file in source.files()? {
                let hash = match stats.hash(&file.path) {
                    Ok(hash) => hash.to_hex(),
                    Err(err) if file.optional && is_not_found(&err) => "absent".to_string(),
                    Err(err) => return Err(err.into()),
                };
                hasher.update(format!("{}={hash}\n", file.name).as_bytes());
            }
            for extra in source.identity_extras() {
                hasher.update(format!("{extra}\n").as_bytes());
            }
        }
    }
    Ok(ArtifactHash::from_bytes(*hasher.finalize().as_bytes()))
}

fn is_not_found(err: &cache::CacheError) -> bool {
    match err {
        cache::CacheError::Input(input) => input.is_not_found(),
        cache::CacheError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// One split: features, labels and each example's index in the raw dataset.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Split {
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    pub index: Vec<u32>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataMeta {
    pub source: String,
    pub shape: Vec<usize>,
    pub class_names: Vec<String>,
    pub normalize: String,
    /// The range raw values must lie in, when the format declares one.
    pub value_range: Option<(f32, f32)>,
}

/// The `data` stage's product: split, normalised, ready to feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub meta: DataMeta,
    pub train: Split,
    pub val: Split,
    pub test: Split,
    /// Per-feature statistics of the training split used to normalise (0 and 1 for `none`).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Prepared {
    pub fn n_features(&self) -> usize {
        self.meta.shape.iter().product()
    }

    pub fn n_classes(&self) -> usize {
        self.meta.class_names.len()
    }

    pub fn splits(&self) -> [(&'static str, &Split); 3] {
        [("train", &self.train), ("val", &self.val), ("test", &self.test)]
    }

    /// Class frequencies of the training split.
    pub fn train_priors(&self) -> Vec<f64> {
        let mut counts = vec![0usize; self.n_classes()];
        for &label in &self.train.y {
            counts[label as usize] += 1;
        }
        counts.iter().map(|&count| count as f64 / self.train.len() as f64).collect()
    }

    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut metrics = BTreeMap::new();
        for (name, split) in self.splits() {
            metrics.insert(format!("n_{name}"), split.len() as f64);
            let mut counts = vec![0usize; self.n_classes()];
            for &label in &split.y {
                counts[label as usize] += 1;
            }
            for (class, count) in counts.iter().enumerate() {
                metrics.insert(format!("n_{name}_class_{class}"), *count as f64);
            }
        }
        metrics.insert("n_features".into(), self.n_features() as f64);
        metrics.insert("n_classes".into(), self.n_classes() as f64);
        metrics
    }

    pub fn encode(&self) -> Result<Vec<u8>, DataError> {
        let mut file = TensorFile::default();
        for (name, split) in self.splits() {
            file.push_f32(&format!("{name}.x"), vec![split.len(), self.n_features()], split.x.clone());
            file.push_u32(&format!("{name}.y"), vec![split.len()], split.y.clone());
            file.push_u32(&format!("{name}.index"), vec![split.len()], split.index.clone());
        }
        file.push_f32("norm.mean", vec![self.mean.len()], self.mean.clone());
        file.push_f32("norm.std", vec![self.std.len()], self.std.clone());
        Ok(file.encode(&self.meta)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Prepared, DataError> {
        let file = TensorFile::decode(bytes)?;
        let meta: DataMeta = file.meta()?;
        let split = |name: &str| -> Result<Split, DataError> {
            Ok(Split {
                x: file.f32(&format!("{name}.x"))?,
                y: file.u32(&format!("{name}.y"))?,
                index: file.u32(&format!("{name}.index"))?,
            })
        };
        Ok(Prepared {
            train: split("train")?,
            val: split("val")?,
            test: split("test")?,
            mean: file.f32("norm.mean")?,
            std: file.f32("norm.std")?,
            meta,
        })
    }
}

/// Seeded stratified split: within each class, a shuffled order is cut by the
/// fractions; each split is then shuffled so classes interleave.
pub fn split(raw: &RawDataset, fractions: &[f64], seed: u64) -> Result<[Vec<u32>; 3], DataError> {
    if fractions.len() != 3 || (fractions.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
        return Err(DataError::BadSplit(fractions.to_vec()));
    }
    let requested = fractions.to_vec();
    // A declared test split (IDX t10k, CIFAR test_batch) is kept as the test split;
    // the rest is split into train and val in the ratio of the first two fractions.
    let pool_end = raw.test_start.unwrap_or(raw.len());
    let fractions: Vec<f64> = match raw.test_start {
        Some(_) => {
            let train_val = (fractions[0] + fractions[1]).max(f64::MIN_POSITIVE);
            vec![fractions[0] / train_val, fractions[1] / train_val, 0.0]
        }
        None => fractions.to_vec(),
    };
    let mut by_class: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (index, &label) in raw.y[..pool_end].iter().enumerate() {
        by_class.entry(label).or_default().push(index as u32);
    }
    let mut parts: [Vec<u32>; 3] = Default::default();
    parts[2].extend(pool_end as u32..raw.len() as u32);
    for (label, mut indices) in by_class {
        Rng::new(seed, &format!("split/class={label}")).shuffle(&mut indices);
        let n = indices.len() as f64;
        let n_train = (fractions[0] * n).round() as usize;
        let n_train = n_train.min(indices.len());
        let n_val = if raw.test_start.is_some() {
            indices.len() - n_train
        } else {
            ((fractions[1] * n).round() as usize).min(indices.len() - n_train)
        };
        parts[0].extend_from_slice(&indices[..n_train]);
        parts[1].extend_from_slice(&indices[n_train..n_train + n_val]);
        parts[2].extend_from_slice(&indices[n_train + n_val..]);
    }
    for (i, part) in parts.iter_mut().enumerate() {
        part.sort_unstable();
        // A declared test split keeps its file order; the rest interleave classes.
        if !(i == 2 && raw.test_start.is_some()) {
            Rng::new(seed, &format!("split/order={i}")).shuffle(part);
        }
    }
    if parts[0].is_empty() {
        return Err(DataError::EmptyTrain);
    }
    if parts[1].is_empty() {
        return Err(DataError::EmptyVal { fractions: requested, pool: pool_end });
    }
    Ok(parts)
}

/// `data.downscale`: each `factor x factor` block of every image channel replaced by
/// its mean (area averaging; trailing rows and columns that do not fill a block are
/// dropped). Factor 1 returns `raw` unchanged.
pub fn downscale(raw: RawDataset, factor: usize) -> Result<RawDataset, DataError> {
    if factor <= 1 {
        return Ok(raw);
    }
    let image = crate::models::image_shape(&raw.shape).filter(|&(_, h, w)| h >= factor && w >= factor);
    let Some((c, h, w)) = image else {
        return Err(DataError::Downscale { factor, shape: raw.shape.clone() });
    };
    let (oh, ow) = (h / factor, w / factor);
    let area = (factor * factor) as f64;
    let mut x = Vec::with_capacity(raw.len() * c * oh * ow);
    for example in raw.x.chunks(c * h * w) {
        for plane in example.chunks(h * w) {
            for i in 0..oh {
                for j in 0..ow {
                    let mut sum = 0f64;
                    for di in 0..factor {
                        let row = &plane[(i * factor + di) * w..(i * factor + di + 1) * w];
                        sum += row[j * factor..(j + 1) * factor].iter().map(|&v| v as f64).sum::<f64>();
                    }
                    x.push((sum / area) as f32);
                }
            }
        }
    }
    let shape = if raw.shape.len() == 3 { vec![c, oh, ow] } else { vec![oh, ow] };
    Ok(RawDataset { x, shape, ..raw })
}

/// Splits and normalises `raw` (statistics from the training split only).
pub fn prepare(
    raw: &RawDataset,
    source: &str,
    fractions: &[f64],
    seed: u64,
    normalize: Normalize,
) -> Result<Prepared, DataError> {
    let d = raw.n_features();
    if d == 0 || raw.x.len() != raw.len() * d {
        return Err(DataError::NoFeatures);
    }
    let [train, val, test] = split(raw, fractions, seed)?;
    let gather = |indices: Vec<u32>| Split {
        x: indices.iter().flat_map(|&i| raw.x[i as usize * d..(i as usize + 1) * d].iter().copied()).collect(),
        y: indices.iter().map(|&i| raw.y[i as usize]).collect(),
        index: indices,
    };
    let (mut train, mut val, mut test) = (gather(train), gather(val), gather(test));
    let (mean, std) = normalize.statistics(&raw.shape, &train.x);
    for split in [&mut train, &mut val, &mut test] {
        for row in split.x.chunks_mut(d) {
            for ((value, m), s) in row.iter_mut().zip(&mean).zip(&std) {
                *value = (*value - m) / s;
            }
        }
    }
    let meta = DataMeta {
        source: source.to_string(),
        shape: raw.shape.clone(),
        class_names: raw.class_names.clone(),
        normalize: crate::stages::common::choice_name(normalize).to_string(),
        value_range: raw.value_range,
    };
    Ok(Prepared { meta, train, val, test, mean, std })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_is_the_real_uci_set() {
        let raw = Source::Digits.load(&SourceOptions::default()).unwrap();
        assert_eq!(raw.len(), 1797);
        assert_eq!(raw.n_features(), 64);
        assert!(raw.x.iter().all(|v| (0.0..=16.0).contains(v) && v.fract() == 0.0));
        let mut counts = [0; 10];
        raw.y.iter().for_each(|&y| counts[y as usize] += 1);
        // The published class counts of the set.
        assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    }

    #[test]
    fn split_is_stratified_seeded_and_disjoint() {
        let raw = Source::Digits.load(&SourceOptions::default()).unwrap();
        let parts = split(&raw, &[0.6, 0.2, 0.2], 0).unwrap();
        assert_eq!(parts, split(&raw, &[0.6, 0.2, 0.2], 0).unwrap());
        assert_ne!(parts, split(&raw, &[0.6, 0.2, 0.2], 1).unwrap());
        let mut all: Vec<u32> = parts.concat();
        all.sort_unstable();
        assert_eq!(all, (0..1797).collect::<Vec<_>>());
        let zeros = parts[0].iter().filter(|&&i| raw.y[i as usize] == 0).count();
        assert_eq!(zeros, (178.0f64 * 0.6).round() as usize);
        assert!(split(&raw, &[0.5, 0.2], 0).is_err());
        assert!(split(&raw, &[0.5, 0.2, 0.2], 0).is_err());
    }

    #[test]
    fn downscale_averages_blocks() {
        // Two 1x4x4 images holding 0..16 and 16..32: 2x2 blocks average to 2.5, 4.5, 10.5, 12.5.
        let raw = RawDataset {
            x: (0..32).map(|v| v as f32).collect(),
            y: vec![0, 1],
            shape: vec![1, 4, 4],
            class_names: vec!["a".into(), "b".into()],
            test_start: None,
            value_range: None,
        };
        let small = downscale(raw.clone(), 2).unwrap();
        assert_eq!(small.shape, [1, 2, 2]);
        assert_eq!(small.x, [2.5, 4.5, 10.5, 12.5, 18.5, 20.5, 26.5, 28.5]);
        assert_eq!(downscale(raw.clone(), 1).unwrap().x, raw.x);
        assert!(matches!(downscale(raw.clone(), 5), Err(DataError::Downscale { factor: 5, .. })));
        let tabular = RawDataset { shape: vec![16], ..raw };
        assert!(matches!(downscale(tabular, 2), Err(DataError::Downscale { .. })));
    }

    #[test]
    fn normalisation_uses_training_statistics_only() {
        let raw = Source::Digits.load(&SourceOptions::default()).unwrap();
        let data = prepare(&raw, "builtin:digits", &[0.6, 0.2, 0.2], 0, Normalize::Feature).unwrap();
        let d = data.n_features();
        for feature in [10, 20, 36] {
            let column: Vec<f32> = data.train.x.iter().skip(feature).step_by(d).copied().collect();
            let mean = column.iter().sum::<f32>() / column.len() as f32;
            assert!(mean.abs() < 1e-4, "train mean of feature {feature} is {mean}");
        }
        let decoded = Prepared::decode(&data.encode().unwrap()).unwrap();
        assert_eq!(decoded, data);
        assert_eq!(data.encode().unwrap(), decoded.encode().unwrap(), "encoding is deterministic");
    }

    #[test]
    fn images_are_standardised_per_channel_so_a_shift_keeps_the_scale() {
        // Digits are 8x8 images: `standard` gives every pixel the same statistics,
        // those of all training pixels, and keeps values within a few units; per
        // feature, the rarely lit border pixels are divided by a tiny deviation.
        let raw = Source::Digits.load(&SourceOptions::default()).unwrap();
        let data = prepare(&raw, "builtin:digits", &[0.6, 0.2, 0.2], 0, Normalize::Standard).unwrap();
        assert!(data.mean.iter().all(|m| *m == data.mean[0]) && data.std.iter().all(|s| *s == data.std[0]));
        let n = data.train.x.len() as f64;
        let mean = data.train.x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = data.train.x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3, "mean {mean}, variance {var}");
        let largest = |x: &[f32]| x.iter().fold(0f32, |m, v| m.max(v.abs()));
        // Raw digits lie in 0..=16: per channel, 16 is under 3 deviations from the mean.
        assert!(largest(&data.train.x) < 3.0, "{}", largest(&data.train.x));
        let per_feature = prepare(&raw, "builtin:digits", &[0.6, 0.2, 0.2], 0, Normalize::Feature).unwrap();
        assert!(largest(&per_feature.train.x) > 10.0, "{}", largest(&per_feature.train.x));
        // Tabular data (no image shape) keeps per-feature statistics under `standard`.
        let table = RawDataset { shape: vec![64], ..raw.clone() };
        let tabular = prepare(&table, "csv", &[0.6, 0.2, 0.2], 0, Normalize::Standard).unwrap();
        assert_eq!(tabular.mean, per_feature.mean);
        assert_eq!(data.meta.normalize, "standard");
    }
}

#[cfg(test)]
mod fingerprint_tests {
    //! Every file a loader reads is in the dataset fingerprint: editing, adding or
    //! removing each one changes it.
    use super::*;
    use crate::sources::fixtures::*;
    use std::path::Path;

    fn fp(source: &Source, cache: &cache::Cache) -> Option<ArtifactHash> {
        fingerprint(source, cache.stats()).ok()
    }

    /// Edits (same size, new bytes, so only the hash can tell), removes and restores
    /// each file; returns how many files were checked.
    fn check_each_file(source: &Source, cache: &cache::Cache) -> usize {
        let base = fp(source, cache).expect("fixture fingerprints");
        let files = source.files().unwrap();
        for file in &files {
            let Ok(original) = std::fs::read(&file.path) else { continue };
            let mut edited = original.clone();
            let last = edited.len() - 1;
            edited[last] ^= 0x01;
            std::thread::sleep(std::time::Duration::from_millis(5));
            std::fs::write(&file.path, &edited).unwrap();
            assert_ne!(fp(source, cache), Some(base), "editing {} changes the fingerprint", file.name);
            std::fs::remove_file(&file.path).unwrap();
            assert_ne!(fp(source, cache), Some(base), "removing {} changes it (or fails)", file.name);
            std::fs::write(&file.path, &original).unwrap();
            assert_eq!(fp(source, cache), Some(base), "restoring {} restores it", file.name);
        }
        files.len()
    }

    fn add_changes(source: &Source, cache: &cache::Cache, path: &Path, bytes: &[u8]) {
        let before = fp(source, cache);
        std::fs::write(path, bytes).unwrap();
        assert_ne!(fp(source, cache), before, "adding {} changes the fingerprint", path.display());
    }

    #[test]
    fn fingerprint_covers_every_file_the_loaders_read() {
        let dir = temp_dir("fingerprint");
        let cache = cache::Cache::open(dir.join(".pipe")).unwrap();

        let idx = Source::Idx(dir.join("idx"));
        write_all(&dir.join("idx"), &idx_files(6));
        add_changes(&idx, &cache, &dir.join("idx/classes.txt"), b"a\nb\nc\n");
        assert_eq!(check_each_file(&idx, &cache), 5, "four IDX files and classes.txt");
        // The loader reads classes.txt: the names it gives are in the key.
        assert_eq!(idx.load(&SourceOptions::default()).unwrap().class_names, ["a", "b", "c"]);

        let cifar = Source::Cifar10(dir.join("cifar"));
        write_all(&dir.join("cifar"), &cifar_files(1));
        add_changes(&cifar, &cache, &dir.join("cifar/batches.meta.txt"), b"0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n");
        assert_eq!(check_each_file(&cifar, &cache), 7, "six batches and batches.meta.txt");

        let csv = Source::Csv(dir.join("data.csv"));
        std::fs::write(dir.join("data.csv"), csv_text(9)).unwrap();
        assert_eq!(check_each_file(&csv, &cache), 1);

        let images = Source::Images(dir.join("pictures"));
        for (name, bytes) in image_fixture() {
            write_all(&dir.join("pictures"), &[(name.as_str(), bytes)]);
        }
        assert_eq!(check_each_file(&images, &cache), 6);
        add_changes(&images, &cache, &dir.join("pictures/cat/9.png"), &png_bytes(9, 6, 5));
        std::fs::create_dir_all(dir.join("pictures/bird")).unwrap();
        add_changes(&images, &cache, &dir.join("pictures/bird/0.png"), &png_bytes(1, 6, 5));
        std::fs::remove_dir_all(&dir).ok();
    }
}
