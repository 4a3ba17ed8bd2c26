//! Pictures as artifacts: PNG canvases of example images with text labels (a tiny
//! built-in 3x5 font, so no font files are needed), heat maps with a colour bar,
//! and hand-written SVG charts with nice-number ticks, axis titles, a grid and a
//! legend outside the data. Output bytes depend only on the inputs.

use std::fmt::Write as _;

mod axis;
mod charts;
mod heat;

pub use axis::*;
pub use charts::*;
pub use heat::*;

/// An RGB canvas.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pixels: Vec<u8>,
}

/// How example values map to grey levels.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub low: f32,
    pub high: f32,
}

impl Scale {
    fn level(&self, value: f32) -> u8 {
        if !value.is_finite() {
            return 0;
        }
        let unit = ((value - self.low) / (self.high - self.low).max(1e-12)).clamp(0.0, 1.0);
        (unit * 255.0).round() as u8
    }
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: [u8; 3]) -> Canvas {
        let mut pixels = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            pixels.extend_from_slice(&background);
        }
        Canvas { width, height, pixels }
    }

    pub fn set(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        if x < self.width && y < self.height {
            let at = (y * self.width + x) * 3;
            self.pixels[at..at + 3].copy_from_slice(&rgb);
        }
    }

    pub fn fill(&mut self, x: usize, y: usize, width: usize, height: usize, rgb: [u8; 3]) {
        for dy in 0..height {
            for dx in 0..width {
                self.set(x + dx, y + dy, rgb);
            }
        }
    }

    /// Draws one example of `shape` ([H, W], [C, H, W] with C = 3, or [D]) at (x, y),
    /// each value a `zoom` x `zoom` block.
    pub fn example(&mut self, x: usize, y: usize, values: &[f32], shape: &[usize], zoom: usize, scale: Scale) {
        let (channels, height, width) = image_dims(shape);
        for row in 0..height {
            for col in 0..width {
                let rgb = if channels == 3 {
                    let at = |c: usize| values[c * height * width + row * width + col];
                    [scale.level(at(0)), scale.level(at(1)), scale.level(at(2))]
                } else {
                    let level = scale.level(values[row * width + col]);
                    [level, level, level]
                };
                self.fill(x + col * zoom, y + row * zoom, zoom, zoom, rgb);
            }
        }
    }

    /// Writes `text` (upper-cased; unknown characters as `?`) with its top-left at (x, y).
    pub fn text(&mut self, x: usize, y: usize, text: &str, size: usize, rgb: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            let rows = glyph(ch.to_ascii_uppercase());
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        self.fill(x + i * 4 * size + col * size, y + row * size, size, size, rgb);
                    }
                }
            }
        }
    }

    pub fn to_png(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let image = image::RgbImage::from_raw(self.width as u32, self.height as u32, self.pixels.clone())
            .expect("canvas buffer matches its size");
        image
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .expect("PNG encoding to memory cannot fail");
        bytes
    }
}

/// Width in pixels of `text` drawn at `size`.
pub fn text_width(text: &str, size: usize) -> usize {
    text.chars().count() * 4 * size
}

/// (channels, height, width) of an example shape; a flat vector is one row.
pub fn image_dims(shape: &[usize]) -> (usize, usize, usize) {
    match shape {
        [c, h, w] if *c == 3 => (3, *h, *w),
        [c, h, w] => (1, c * h, *w),
        [h, w] => (1, *h, *w),
        [d] => (1, 1, *d),
        _ => (1, 1, shape.iter().product()),
    }
}

/// Whether examples of this shape are pictures (worth rendering as images).
pub fn is_image(shape: &[usize]) -> bool {
    let (_, height, width) = image_dims(shape);
    height > 1 && width > 1
}

/// A labelled grid: one row per `(label, examples)`, examples drawn side by side.
pub fn grid(rows: &[(String, Vec<&[f32]>)], shape: &[usize], scale: Scale, columns: usize) -> Vec<u8> {
    let (_, height, width) = image_dims(shape);
    let zoom = (48 / height.max(width)).clamp(1, 6);
    let (cell_w, cell_h) = (width * zoom + 4, height * zoom + 4);
    let label_w = rows.iter().map(|(label, _)| text_width(label, 2)).max().unwrap_or(0) + 8;
    let mut canvas = Canvas::new(label_w + columns * cell_w + 4, rows.len() * cell_h.max(14) + 4, [255, 255, 255]);
    for (r, (label, examples)) in rows.iter().enumerate() {
        let y = 2 + r * cell_h.max(14);
        canvas.text(4, y + cell_h.max(14) / 2 - 5, label, 2, [20, 20, 20]);
        for (c, values) in examples.iter().take(columns).enumerate() {
            canvas.example(label_w + c * cell_w + 2, y + 2, values, shape, zoom, scale);
        }
    }
    canvas.to_png()
}

/// Examples side by side, `columns` per row, each with its label written beneath.
pub fn tiles(examples: &[(&[f32], String)], shape: &[usize], scale: Scale, columns: usize) -> Vec<u8> {
    let (_, height, width) = image_dims(shape);
    let zoom = (48 / height.max(width)).clamp(1, 6);
    let label_w = examples.iter().map(|(_, label)| text_width(label, 1)).max().unwrap_or(0);
    let cell_w = (width * zoom).max(label_w) + 6;
    let cell_h = height * zoom + 12;
    let rows = examples.len().div_ceil(columns.max(1));
    let mut canvas = Canvas::new(columns.min(examples.len()).max(1) * cell_w + 4, rows * cell_h + 4, [255, 255, 255]);
    for (i, (values, label)) in examples.iter().enumerate() {
        let (x, y) = (2 + (i % columns) * cell_w, 2 + (i / columns) * cell_h);
        canvas.example(x + 2, y, values, shape, zoom, scale);
        canvas.text(x + 2, y + height * zoom + 3, label, 1, [20, 20, 20]);
    }
    canvas.to_png()
}

/// Examples side by side like [`tiles`], scaled up (nearest neighbour) so each is at
/// least `min_px` on its longer side and the picture at least 200 px wide.
pub fn tiles_at(
    examples: &[(&[f32], String)],
    shape: &[usize],
    scale: Scale,
    columns: usize,
    min_px: usize,
) -> Vec<u8> {
    tile_canvas(examples, shape, columns, min_px, |canvas, x, y, values, zoom| {
        canvas.example(x, y, values, shape, zoom, scale)
    })
    .to_png()
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// 3x5 glyphs, one row per entry, the top three bits of each row used.
fn glyph(ch: char) -> [u8; 5] {
    match ch {
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'C' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'J' => [0b001, 0b001, 0b001, 0b101, 0b010],
        'K' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'Q' => [0b010, 0b101, 0b101, 0b110, 0b011],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'S' => [0b011, 0b100, 0b010, 0b001, 0b110],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'U' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'W' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'X' => [0b101, 0b101, 0b010, 0b101, 0b101],
        'Y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        'Z' => [0b111, 0b001, 0b010, 0b100, 0b111],
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b110, 0b001, 0b010, 0b100, 0b111],
        '3' => [0b110, 0b001, 0b010, 0b001, 0b110],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b110, 0b001, 0b110],
        '6' => [0b011, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b110],
        ' ' => [0; 5],
        '-' => [0, 0, 0b111, 0, 0],
        '/' => [0b001, 0b001, 0b010, 0b100, 0b100],
        '.' => [0, 0, 0, 0, 0b010],
        ',' => [0, 0, 0, 0b010, 0b100],
        '_' => [0, 0, 0, 0, 0b111],
        ':' => [0, 0b010, 0, 0b010, 0],
        '=' => [0, 0b111, 0, 0b111, 0],
        '(' => [0b010, 0b100, 0b100, 0b100, 0b010],
        ')' => [0b010, 0b001, 0b001, 0b001, 0b010],
        '>' => [0b100, 0b010, 0b001, 0b010, 0b100],
        '#' => [0b101, 0b111, 0b101, 0b111, 0b101],
        _ => [0b110, 0b001, 0b010, 0, 0b010],
    }
}

#[cfg(test)]
mod tests;
