use std::io::Read;
use std::path::{Path, PathBuf};

use super::*;

pub(super) const IDX_FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

pub(super) const FASHION_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

pub(super) fn idx_path(dir: &Path, stem: &str) -> Result<PathBuf, SourceError> {
    for candidate in [dir.join(stem), dir.join(format!("{stem}.gz"))] {
        // `exists`, not `is_file`: a FIFO named like the file is refused when read.
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(file_error(&dir.join(stem), "missing IDX file (looked for it with and without .gz)"))
}

pub(super) fn is_fashion(dir: &Path) -> bool {
    dir.to_string_lossy().to_ascii_lowercase().contains("fashion")
}

/// Deflate cannot expand data by more than about 1032:1; a gzip stream claiming more
/// is truncated or lying, and is refused before it is decompressed.
pub(super) const MAX_DEFLATE_RATIO: u64 = 1032;

/// The dimensions an IDX header declares, and the header's length, from its first
/// bytes (`prefix` holds at least the 4 magic bytes and the dimensions, or is short).
pub(super) fn idx_header(path: &Path, prefix: &[u8], want_dims: usize) -> Result<(Vec<usize>, usize), SourceError> {
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
pub(super) fn idx_body_len(path: &Path, dims: &[usize], header: usize) -> Result<usize, SourceError> {
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
pub(super) fn read_idx(reader: &Reader, name: &str, want_dims: usize) -> Result<(Vec<usize>, Vec<u8>), SourceError> {
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
pub(super) fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
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

pub(super) fn load_idx(reader: &Reader, dir: &Path) -> Result<RawDataset, SourceError> {
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
pub(super) fn class_names(reader: &Reader, dir: &Path, n_classes: usize) -> Result<Vec<String>, SourceError> {
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
