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
