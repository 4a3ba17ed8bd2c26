use std::path::Path;

use super::*;

/// `(class, path, file name)` of every image, classes and files sorted.
pub(super) fn image_files(dir: &Path) -> Result<Vec<(String, PathBuf, String)>, SourceError> {
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
pub(super) fn read_image(reader: &Reader, name: &str) -> Result<image::DynamicImage, SourceError> {
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

pub(super) fn load_images(reader: &Reader, options: &SourceOptions) -> Result<RawDataset, SourceError> {
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
