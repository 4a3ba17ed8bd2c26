//! Pictures as artifacts: PNG canvases of example images with text labels (a tiny
//! built-in 3x5 font, so no font files are needed) and hand-written SVG charts.
//! Output bytes depend only on the inputs.

use std::fmt::Write as _;

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

/// A histogram as SVG: `counts[i]` values in `[edges[i], edges[i+1])`.
pub fn histogram_svg(title: &str, edges: &[f64], counts: &[u64]) -> String {
    let (width, height, margin) = (640.0, 320.0, 40.0);
    let max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let bar_w = (width - 2.0 * margin) / counts.len().max(1) as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{margin}" y="20">{}</text>"#,
        escape(title)
    );
    for (i, &count) in counts.iter().enumerate() {
        // Log scale: image data is dominated by a few values (background pixels).
        let h = if count == 0 { 0.0 } else { (1.0 + count as f64).ln() / (1.0 + max).ln() * (height - 2.0 * margin) };
        let _ = write!(
            svg,
            r##"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="#4878a8"><title>[{}, {}): {count}</title></rect>"##,
            margin + i as f64 * bar_w,
            height - margin - h,
            (bar_w - 1.0).max(0.5),
            h,
            edges[i],
            edges[i + 1]
        );
    }
    let _ = write!(
        svg,
        r#"<line x1="{margin}" y1="{y}" x2="{x2}" y2="{y}" stroke="black"/><text x="{margin}" y="{ty}">{lo}</text><text x="{x2}" y="{ty}" text-anchor="end">{hi}</text><text x="{mid}" y="{ty}" text-anchor="middle">value (count on a log scale)</text></svg>"#,
        y = height - margin,
        x2 = width - margin,
        ty = height - margin + 16.0,
        lo = edges.first().copied().unwrap_or(0.0),
        hi = edges.last().copied().unwrap_or(0.0),
        mid = width / 2.0,
    );
    svg
}

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// Distinct line colours, cycled.
pub const PALETTE: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// A line chart panel as an SVG group of `width` x `height` at (x, y). Non-finite
/// points are skipped; `log_y` plots log10 of positive values.
fn chart_panel(svg: &mut String, title: &str, series: &[Series], log_y: bool, at: (f64, f64), size: (f64, f64)) {
    let (x0, y0) = at;
    let (width, height) = size;
    let margin = 58.0;
    let transform = |v: f64| {
        if log_y {
            if v > 0.0 {
                Some(v.log10())
            } else {
                None
            }
        } else {
            Some(v)
        }
    };
    let points: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter_map(|(x, y)| if x.is_finite() && y.is_finite() { transform(y).map(|y| (x, y)) } else { None })
        .collect();
    let (min_x, max_x) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (min_y, max_y) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (min_x, max_x) = if min_x.is_finite() { (min_x, max_x.max(min_x + 1e-9)) } else { (0.0, 1.0) };
    let (min_y, max_y) = if min_y.is_finite() { (min_y, max_y.max(min_y + 1e-9)) } else { (0.0, 1.0) };
    let sx = |x: f64| x0 + margin + (x - min_x) / (max_x - min_x) * (width - 1.5 * margin);
    let sy = |y: f64| y0 + height - margin + (min_y - y) / (max_y - min_y) * (height - 2.0 * margin);
    let label = |v: f64| if log_y { format!("{:.3e}", 10f64.powf(v)) } else { format!("{v:.4}") };
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-weight="bold">{}</text><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#999"/>"##,
        x0 + margin,
        y0 + 16.0,
        escape(title),
        x0 + margin,
        y0 + margin,
        width - 1.5 * margin,
        height - 2.0 * margin
    );
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><text x="{:.1}" y="{:.1}">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
        x0 + margin - 2.0,
        y0 + margin + 4.0,
        label(max_y),
        x0 + margin - 2.0,
        y0 + height - margin,
        label(min_y),
        x0 + margin,
        y0 + height - margin + 14.0,
        min_x,
        x0 + width - 0.5 * margin,
        y0 + height - margin + 14.0,
        max_x
    );
    for (i, line) in series.iter().enumerate() {
        let coords: Vec<String> = line
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .filter_map(|&(x, y)| transform(y).map(|y| format!("{:.2},{:.2}", sx(x), sy(y))))
            .collect();
        if !coords.is_empty() {
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#,
                line.color,
                coords.join(" "),
                escape(&line.name)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" fill="{}" text-anchor="end">{}</text>"#,
            x0 + width - 0.5 * margin - 4.0,
            y0 + margin + 14.0 + 14.0 * i as f64,
            line.color,
            escape(&line.name)
        );
    }
}

/// Charts side by side in one SVG: `(title, series, log_y)` per panel.
pub fn charts_svg(panels: &[(&str, Vec<Series>, bool)]) -> String {
    let (width, height) = (480.0, 300.0);
    let total = width * panels.len().max(1) as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{height}" viewBox="0 0 {total} {height}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>"#
    );
    for (i, (title, series, log_y)) in panels.iter().enumerate() {
        chart_panel(&mut svg, title, series, *log_y, (i as f64 * width, 0.0), (width, height));
    }
    svg.push_str("</svg>");
    svg
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
mod tests {
    use super::*;

    #[test]
    fn grid_is_a_png_of_the_expected_size() {
        let image: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let rows = vec![("SEVEN".to_string(), vec![image.as_slice(), image.as_slice()])];
        let png = grid(&rows, &[8, 8], Scale { low: 0.0, high: 63.0 }, 4);
        let decoded = image::load_from_memory(&png).unwrap();
        assert!(decoded.width() > 4 * 8 && decoded.height() >= 8);
        assert_eq!(png, grid(&rows, &[8, 8], Scale { low: 0.0, high: 63.0 }, 4), "deterministic");
    }

    #[test]
    fn histogram_is_svg() {
        let svg = histogram_svg("pixels <raw>", &[0.0, 1.0, 2.0], &[3, 0]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("pixels &lt;raw&gt;"));
        assert_eq!(svg.matches("<rect").count(), 3);
    }
}
