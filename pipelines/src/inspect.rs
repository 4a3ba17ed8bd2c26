//! Becoming one with the data: the `inspect` stage's findings. Every finding lists
//! examples as (split, index in split, index in the source) so a person can look.
//!
//! Exact duplicates are found by hashing each example's bytes; near-duplicates by a
//! coarse signature (downsampled to at most 8x8, quantised to 4 levels) that is
//! hashed and grouped, never by comparing all pairs of raw floats; label-noise
//! suspects by k nearest training neighbours in a seeded random projection, with
//! distances from one matrix product per chunk of queries.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use serde::Serialize;
use serde_json::{json, Value};

use crate::data::{Prepared, Split};
use crate::render::{self, image_dims, is_image, Scale};
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct InspectOptions {
    pub top_k: usize,
    pub knn_k: usize,
    pub knn_queries: usize,
    pub outlier_z: f64,
    pub seed: u64,
}

/// One example, as findings name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub struct ExampleRef {
    pub split: &'static str,
    /// Index within its split.
    pub index: usize,
    /// Index in the source dataset (row of the CSV, position in the IDX file, ...).
    pub source_index: u32,
    pub label: u32,
}

pub struct Inspection {
    pub report: Value,
    pub metrics: BTreeMap<String, f64>,
    /// Pictures: file name -> bytes.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Caps long lists in the report; the metrics hold the full counts.
const MAX_LISTED: usize = 100;

struct View<'a> {
    name: &'static str,
    split: &'a Split,
    /// Raw (un-normalised) values.
    raw: Vec<f32>,
}

impl View<'_> {
    fn example(&self, index: usize) -> ExampleRef {
        ExampleRef { split: self.name, index, source_index: self.split.index[index], label: self.split.y[index] }
    }
}

pub fn inspect(data: &Prepared, options: &InspectOptions) -> Result<Inspection, candle_core::Error> {
    let d = data.n_features();
    let views: Vec<View<'_>> = data
        .splits()
        .into_iter()
        .map(|(name, split)| {
            let mut raw = split.x.clone();
            for row in raw.chunks_mut(d) {
                for ((v, m), s) in row.iter_mut().zip(&data.mean).zip(&data.std) {
                    *v = *v * s + m;
                }
            }
            View { name, split, raw }
        })
        .collect();
    let mut metrics = BTreeMap::new();
    let mut report = serde_json::Map::new();

    // Class balance.
    let n_classes = data.n_classes();
    let mut counts = serde_json::Map::new();
    for view in &views {
        let mut per_class = vec![0u64; n_classes];
        view.split.y.iter().for_each(|&y| per_class[y as usize] += 1);
        counts.insert(view.name.into(), json!(per_class));
        if view.name == "train" {
            let max = per_class.iter().copied().max().unwrap_or(0) as f64;
            let min = per_class.iter().copied().min().unwrap_or(0).max(1) as f64;
            metrics.insert("imbalance_ratio".into(), max / min);
        }
    }
    report.insert("class_names".into(), json!(data.meta.class_names));
    report.insert("class_counts".into(), Value::Object(counts));

    duplicates(&views, d, &mut report, &mut metrics);
    near_duplicates(&views, data, &mut report, &mut metrics);
    corrupt_values(&views, data, &mut report, &mut metrics);
    let outliers = outliers(&views, d, options, &mut report, &mut metrics);
    let suspects = label_noise(&views[0], d, options, &mut report, &mut metrics)?;

    let mut files = Vec::new();
    files.push(("histogram.svg".to_string(), histogram(&views[0], d).into_bytes()));
    if is_image(&data.meta.shape) {
        files.extend(pictures(data, &views, &outliers, &suspects));
    }
    Ok(Inspection { report: Value::Object(report), metrics, files })
}

fn duplicates(
    views: &[View<'_>],
    d: usize,
    report: &mut serde_json::Map<String, Value>,
    metrics: &mut BTreeMap<String, f64>,
) {
    let mut groups: HashMap<[u8; 16], Vec<ExampleRef>> = HashMap::new();
    for view in views {
        for (index, row) in view.raw.chunks(d).enumerate() {
            let mut hasher = blake3::Hasher::new();
            for value in row {
                hasher.update(&value.to_le_bytes());
            }
            let mut key = [0u8; 16];
            key.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
            groups.entry(key).or_default().push(view.example(index));
        }
    }
    let mut groups: Vec<Vec<ExampleRef>> = groups.into_values().filter(|g| g.len() > 1).collect();
    groups.sort();
    let mut within = Vec::new();
    let mut cross = Vec::new();
    let mut conflicting = Vec::new();
    let (mut n_within, mut n_leaked, mut n_conflicting) = (0usize, 0usize, 0usize);
    for group in &groups {
        let first_split = group[0].split;
        if group.iter().all(|e| e.split == first_split) {
            n_within += group.len() - 1;
            within.push(group);
        } else {
            // Every copy outside the training split leaks a training example (or another split's).
            n_leaked += group.iter().filter(|e| e.split != "train").count().max(1);
            cross.push(group);
        }
        if group.iter().any(|e| e.label != group[0].label) {
            n_conflicting += group.len();
            conflicting.push(group);
        }
    }
    metrics.insert("n_duplicates_within".into(), n_within as f64);
    metrics.insert("n_leaked".into(), n_leaked as f64);
    metrics.insert("n_conflicting".into(), n_conflicting as f64);
    report.insert(
        "duplicates".into(),
        json!({
            "within_split": within.iter().take(MAX_LISTED).collect::<Vec<_>>(),
            "cross_split": cross.iter().take(MAX_LISTED).collect::<Vec<_>>(),
            "conflicting_labels": conflicting.iter().take(MAX_LISTED).collect::<Vec<_>>(),
        }),
    );
}

/// A coarse signature of an image: downsampled to at most 8x8 cells (channels
/// averaged), each cell quantised to 4 levels over the data's range.
fn image_signature(row: &[f32], shape: &[usize], low: f32, high: f32) -> [u8; 16] {
    let (channels, height, width) = image_dims(shape);
    let (cells_h, cells_w) = (height.min(8), width.min(8));
    let mut levels = Vec::with_capacity(cells_h * cells_w);
    for cy in 0..cells_h {
        for cx in 0..cells_w {
            let (y0, y1) = (cy * height / cells_h, ((cy + 1) * height / cells_h).max(cy * height / cells_h + 1));
            let (x0, x1) = (cx * width / cells_w, ((cx + 1) * width / cells_w).max(cx * width / cells_w + 1));
            let mut sum = 0f32;
            let mut n = 0f32;
            for c in 0..channels {
                for y in y0..y1 {
                    for x in x0..x1 {
                        let v = row[c * height * width + y * width + x];
                        if v.is_finite() {
                            sum += v;
                            n += 1.0;
                        }
                    }
                }
            }
            let mean = if n > 0.0 { sum / n } else { low };
            levels.push((((mean - low) / (high - low).max(1e-12)) * 4.0).clamp(0.0, 3.0) as u8);
        }
    }
    digest(&levels)
}

/// A signature of a feature vector: each standardised feature rounded to 0.001
/// standard deviations, so copies that differ only by rounding collide.
fn vector_signature(standardised: &[f32]) -> [u8; 16] {
    let levels: Vec<u8> = standardised
        .iter()
        .flat_map(|z| if z.is_finite() { ((z * 1000.0).round() as i32).to_le_bytes() } else { [0xff; 4] })
        .collect();
    digest(&levels)
}

fn digest(bytes: &[u8]) -> [u8; 16] {
    let mut key = [0u8; 16];
    key.copy_from_slice(&blake3::hash(bytes).as_bytes()[..16]);
    key
}

fn near_duplicates(
    views: &[View<'_>],
    data: &Prepared,
    report: &mut serde_json::Map<String, Value>,
    metrics: &mut BTreeMap<String, f64>,
) {
    let d = data.n_features();
    let (low, high) = data.meta.value_range.unwrap_or_else(|| {
        let finite = views.iter().flat_map(|v| v.raw.iter()).filter(|v| v.is_finite());
        finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    });
    let image = is_image(&data.meta.shape);
    let signature = |view: &View<'_>, index: usize| {
        if image {
            image_signature(&view.raw[index * d..(index + 1) * d], &data.meta.shape, low, high)
        } else {
            vector_signature(&view.split.x[index * d..(index + 1) * d])
        }
    };
    let mut train: HashMap<[u8; 16], usize> = HashMap::new();
    for index in 0..views[0].split.len() {
        train.entry(signature(&views[0], index)).or_insert(index);
    }
    let mut pairs = Vec::new();
    let mut n_other = 0usize;
    for view in &views[1..] {
        n_other += view.split.len();
        for (index, row) in view.raw.chunks(d).enumerate() {
            if let Some(&train_index) = train.get(&signature(view, index)) {
                let exact = views[0].raw[train_index * d..(train_index + 1) * d] == *row;
                if !exact {
                    pairs.push((view.example(index), views[0].example(train_index)));
                }
            }
        }
    }
    metrics.insert("n_near_duplicates".into(), pairs.len() as f64);
    metrics.insert("near_duplicate_share".into(), pairs.len() as f64 / n_other.max(1) as f64);
    let listed: Vec<Value> = pairs.iter().take(MAX_LISTED).map(|(a, b)| json!({ "example": a, "train": b })).collect();
    report.insert("near_duplicates".into(), json!(listed));
}

fn corrupt_values(
    views: &[View<'_>],
    data: &Prepared,
    report: &mut serde_json::Map<String, Value>,
    metrics: &mut BTreeMap<String, f64>,
) {
    let d = data.n_features();
    let mut non_finite = Vec::new();
    let mut out_of_range = Vec::new();
    let mut all_zero = Vec::new();
    for view in views {
        for (index, row) in view.raw.chunks(d).enumerate() {
            if row.iter().any(|v| !v.is_finite()) {
                non_finite.push(view.example(index));
            } else if let Some((low, high)) = data.meta.value_range {
                let tolerance = 1e-3 * (high - low).abs().max(1.0);
                if row.iter().any(|&v| v < low - tolerance || v > high + tolerance) {
                    out_of_range.push(view.example(index));
                }
            }
            if row.iter().all(|v| v.abs() < 1e-6) {
                all_zero.push(view.example(index));
            }
        }
    }
    // Constant features: equal (finite) value across the whole training split.
    let train = &views[0];
    let constant: Vec<usize> = (0..d)
        .filter(|&feature| {
            let mut values = train.raw.iter().skip(feature).step_by(d).filter(|v| v.is_finite());
            match values.next() {
                Some(first) => values.all(|v| v == first),
                None => true,
            }
        })
        .collect();
    metrics.insert("n_non_finite".into(), non_finite.len() as f64);
    metrics.insert("n_out_of_range".into(), out_of_range.len() as f64);
    metrics.insert("n_all_zero".into(), all_zero.len() as f64);
    metrics.insert("n_constant_features".into(), constant.len() as f64);
    metrics.insert("constant_feature_share".into(), constant.len() as f64 / d.max(1) as f64);
    report.insert("non_finite".into(), json!(non_finite.iter().take(MAX_LISTED).collect::<Vec<_>>()));
    report.insert("out_of_range".into(), json!(out_of_range.iter().take(MAX_LISTED).collect::<Vec<_>>()));
    report.insert("all_zero".into(), json!(all_zero.iter().take(MAX_LISTED).collect::<Vec<_>>()));
    report.insert("constant_features".into(), json!(constant));
    report.insert("value_range".into(), json!(data.meta.value_range));
}

#[derive(Debug, Clone, Serialize)]
pub struct Outlier {
    pub example: ExampleRef,
    /// The largest robust z-score (within its class) of the example's mean, std and norm.
    pub score: f64,
    pub mean: f64,
    pub std: f64,
    pub norm: f64,
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn outliers(
    views: &[View<'_>],
    d: usize,
    options: &InspectOptions,
    report: &mut serde_json::Map<String, Value>,
    metrics: &mut BTreeMap<String, f64>,
) -> Vec<Outlier> {
    let mut all = Vec::new();
    for view in views {
        for (index, row) in view.raw.chunks(d).enumerate() {
            let finite: Vec<f64> = row.iter().filter(|v| v.is_finite()).map(|&v| v as f64).collect();
            let n = finite.len().max(1) as f64;
            let mean = finite.iter().sum::<f64>() / n;
            let std = (finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
            let norm = finite.iter().map(|v| v * v).sum::<f64>().sqrt();
            all.push(Outlier { example: view.example(index), score: 0.0, mean, std, norm });
        }
    }
    // Robust z-scores within each class: classes may differ in brightness or scale
    // (a multi-modal population), but an example should look like its own class.
    let n_classes = all.iter().map(|o| o.example.label as usize + 1).max().unwrap_or(0);
    for class in 0..n_classes {
        let members: Vec<usize> = (0..all.len()).filter(|&i| all[i].example.label as usize == class).collect();
        for stat in 0..3 {
            let get = |o: &Outlier| [o.mean, o.std, o.norm][stat];
            let mut values: Vec<f64> = members.iter().map(|&i| get(&all[i])).collect();
            let center = median(&mut values);
            let mut deviations: Vec<f64> = members.iter().map(|&i| (get(&all[i]) - center).abs()).collect();
            let mad = median(&mut deviations) * 1.4826;
            // No spread (most members identical in this statistic, up to float
            // rounding) gives no evidence.
            if mad <= 1e-6 * center.abs().max(1.0) {
                continue;
            }
            for &i in &members {
                let z = ((get(&all[i]) - center) / mad).abs();
                all[i].score = all[i].score.max(z);
            }
        }
    }
    let n_outliers = all.iter().filter(|o| o.score > options.outlier_z).count();
    metrics.insert("n_outliers".into(), n_outliers as f64);
    metrics.insert("outlier_share".into(), n_outliers as f64 / all.len().max(1) as f64);
    all.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.example.cmp(&b.example)));
    all.truncate(options.top_k);
    report.insert("outliers".into(), json!(all));
    all
}

#[derive(Debug, Clone, Serialize)]
pub struct Suspect {
    pub example: ExampleRef,
    /// Labels of its k nearest training neighbours, nearest first.
    pub neighbour_labels: Vec<u32>,
    /// The label most of them carry.
    pub dominant_label: u32,
    /// Share of neighbours that agree with the example's own label.
    pub agreement: f64,
}

fn label_noise(
    train: &View<'_>,
    d: usize,
    options: &InspectOptions,
    report: &mut serde_json::Map<String, Value>,
    metrics: &mut BTreeMap<String, f64>,
) -> Result<Vec<Suspect>, candle_core::Error> {
    let n = train.split.len();
    let k = options.knn_k.min(n.saturating_sub(1));
    if k == 0 {
        report.insert("label_noise".into(), json!([]));
        metrics.insert("suspect_share".into(), 0.0);
        return Ok(Vec::new());
    }
    let device = Device::Cpu;
    // Normalised features (NaN as 0), projected to 32 dims when wider.
    let clean: Vec<f32> = train.split.x.iter().map(|v| if v.is_finite() { *v } else { 0.0 }).collect();
    let mut features = Tensor::from_vec(clean, (n, d), &device)?;
    if d > 64 {
        let dims = 32;
        let mut rng = Rng::new(options.seed, "inspect/projection");
        let scale = 1.0 / (dims as f64).sqrt();
        let projection: Vec<f32> = (0..d * dims).map(|_| (rng.normal() * scale) as f32).collect();
        features = features.matmul(&Tensor::from_vec(projection, (d, dims), &device)?)?;
    }
    let squared = features.sqr()?.sum(1)?.to_vec1::<f32>()?;
    let mut queries: Vec<usize> = (0..n).collect();
    if n > options.knn_queries {
        Rng::new(options.seed, "inspect/knn-queries").shuffle(&mut queries);
        queries.truncate(options.knn_queries);
        queries.sort_unstable();
    }
    let features_t = features.t()?.contiguous()?;
    let mut suspects = Vec::new();
    for chunk in queries.chunks(256) {
        let index = Tensor::from_vec(chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(), chunk.len(), &device)?;
        let dots = features.index_select(&index, 0)?.matmul(&features_t)?.to_vec2::<f32>()?;
        for (row, &query) in dots.iter().zip(chunk) {
            // Squared distance up to the query's own norm, which does not change the order.
            let mut nearest: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
            for (j, dot) in row.iter().enumerate() {
                if j == query {
                    continue;
                }
                let distance = squared[j] - 2.0 * dot;
                if nearest.len() < k || distance < nearest[k - 1].0 {
                    let at = nearest.partition_point(|&(dist, idx)| (dist, idx) < (distance, j));
                    nearest.insert(at, (distance, j));
                    nearest.truncate(k);
                }
            }
            let labels: Vec<u32> = nearest.iter().map(|&(_, j)| train.split.y[j]).collect();
            let own = train.split.y[query];
            let agree = labels.iter().filter(|&&l| l == own).count();
            let mut tally: BTreeMap<u32, usize> = BTreeMap::new();
            labels.iter().for_each(|&l| *tally.entry(l).or_default() += 1);
            let (dominant, dominant_count) = tally
                .iter()
                .max_by_key(|(label, count)| (**count, std::cmp::Reverse(**label)))
                .map_or((own, 0), |(l, c)| (*l, *c));
            if 2 * agree < k && dominant != own && 2 * dominant_count > k {
                suspects.push(Suspect {
                    example: train.example(query),
                    neighbour_labels: labels,
                    dominant_label: dominant,
                    agreement: agree as f64 / k as f64,
                });
            }
        }
    }
    metrics.insert("n_suspects".into(), suspects.len() as f64);
    metrics.insert("suspect_share".into(), suspects.len() as f64 / queries.len().max(1) as f64);
    metrics.insert("knn_queries".into(), queries.len() as f64);
    suspects.sort_by(|a, b| a.agreement.total_cmp(&b.agreement).then(a.example.cmp(&b.example)));
    report.insert("label_noise".into(), json!(suspects.iter().take(MAX_LISTED).collect::<Vec<_>>()));
    Ok(suspects)
}

fn histogram(train: &View<'_>, _d: usize) -> String {
    let finite: Vec<f32> = train.raw.iter().copied().filter(|v| v.is_finite()).collect();
    let (low, high) = finite.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (low, high) = if low.is_finite() { (low as f64, (high as f64).max(low as f64 + 1e-6)) } else { (0.0, 1.0) };
    let bins = 50;
    let mut counts = vec![0u64; bins];
    for &v in &finite {
        let bin = (((v as f64 - low) / (high - low)) * bins as f64) as usize;
        counts[bin.min(bins - 1)] += 1;
    }
    let edges: Vec<f64> = (0..=bins).map(|i| low + (high - low) * i as f64 / bins as f64).collect();
    render::histogram_svg("training split: raw feature values", &edges, &counts)
}

fn pictures(data: &Prepared, views: &[View<'_>], outliers: &[Outlier], suspects: &[Suspect]) -> Vec<(String, Vec<u8>)> {
    let d = data.n_features();
    let shape = &data.meta.shape;
    let (low, high) = data.meta.value_range.unwrap_or((0.0, 255.0));
    let scale = Scale { low, high };
    let train = &views[0];
    let names = &data.meta.class_names;
    let row_of = |view: &View<'_>, index: usize| -> Vec<f32> { view.raw[index * d..(index + 1) * d].to_vec() };
    let mut files = Vec::new();

    // A sample grid: up to 8 training examples per class.
    let mut samples: Vec<(String, Vec<Vec<f32>>)> = names.iter().map(|n| (n.clone(), Vec::new())).collect();
    for (index, &label) in train.split.y.iter().enumerate() {
        let slot = &mut samples[label as usize].1;
        if slot.len() < 8 {
            slot.push(row_of(train, index));
        }
    }
    let rows: Vec<(String, Vec<&[f32]>)> =
        samples.iter().map(|(name, ex)| (name.clone(), ex.iter().map(Vec::as_slice).collect())).collect();
    files.push(("samples.png".to_string(), render::grid(&rows, shape, scale, 8)));

    // Per-class mean images and the per-pixel std map of the training split.
    let n_classes = names.len();
    let mut sums = vec![vec![0f64; d]; n_classes];
    let mut counts = vec![0f64; n_classes];
    let mut total = vec![0f64; d];
    let mut total_sq = vec![0f64; d];
    for (row, &label) in train.raw.chunks(d).zip(&train.split.y) {
        counts[label as usize] += 1.0;
        for (i, &v) in row.iter().enumerate() {
            let v = if v.is_finite() { v as f64 } else { 0.0 };
            sums[label as usize][i] += v;
            total[i] += v;
            total_sq[i] += v * v;
        }
    }
    let means: Vec<Vec<f32>> =
        sums.iter().zip(&counts).map(|(s, c)| s.iter().map(|v| (v / c.max(1.0)) as f32).collect()).collect();
    let rows: Vec<(String, Vec<&[f32]>)> =
        names.iter().zip(&means).map(|(name, mean)| (name.clone(), vec![mean.as_slice()])).collect();
    files.push(("class_means.png".to_string(), render::grid(&rows, shape, scale, 1)));
    let n = train.split.len().max(1) as f64;
    let std: Vec<f32> =
        total.iter().zip(&total_sq).map(|(s, sq)| ((sq / n) - (s / n).powi(2)).max(0.0).sqrt() as f32).collect();
    let max_std = std.iter().copied().fold(0f32, f32::max).max(1e-6);
    let std_tile = [(std.as_slice(), "pixel std".to_string())];
    let std_scale = Scale { low: 0.0, high: max_std };
    let std_png = render::heatmap_tiles(&std_tile, shape, std_scale, render::ColorMap::Sequential, 1, 200, "std");
    files.push(("pixel_std.png".to_string(), std_png));

    // Thumbnails of the top outliers and label-noise suspects.
    let find = |e: &ExampleRef| views.iter().find(|v| v.name == e.split).map(|v| row_of(v, e.index));
    let outlier_rows: Vec<(String, Vec<f32>)> = outliers
        .iter()
        .filter_map(|o| {
            find(&o.example).map(|row| (format!("{}:{} Z={:.1}", o.example.split, o.example.index, o.score), row))
        })
        .collect();
    let tiles: Vec<(&[f32], String)> = outlier_rows.iter().map(|(l, r)| (r.as_slice(), l.clone())).collect();
    if !tiles.is_empty() {
        files.push(("outliers.png".to_string(), render::tiles(&tiles, shape, scale, 4)));
    }
    let suspect_rows: Vec<(String, Vec<f32>)> = suspects
        .iter()
        .take(16)
        .filter_map(|s| {
            let label = |l: u32| names.get(l as usize).cloned().unwrap_or_else(|| l.to_string());
            let text = format!(
                "{}:{} {} > {}",
                s.example.split,
                s.example.index,
                label(s.example.label),
                label(s.dominant_label)
            );
            find(&s.example).map(|row| (text, row))
        })
        .collect();
    let tiles: Vec<(&[f32], String)> = suspect_rows.iter().map(|(l, r)| (r.as_slice(), l.clone())).collect();
    if !tiles.is_empty() {
        files.push(("suspects.png".to_string(), render::tiles(&tiles, shape, scale, 4)));
    }
    files
}
