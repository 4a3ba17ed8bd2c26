use super::*;

pub(super) const CIFAR_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];
pub(super) const CIFAR_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

pub(super) fn load_cifar10(reader: &Reader) -> Result<RawDataset, SourceError> {
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
