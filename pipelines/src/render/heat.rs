//! Heat maps: colour maps, colour bars, heat-map tiles and matrices.

use super::*;

/// How values map to colours where colour means a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorMap {
    /// Dark blue through green to yellow (viridis): magnitudes.
    Sequential,
    /// Blue, white at the middle, red: signed values around zero.
    Diverging,
}

impl ColorMap {
    fn anchors(self) -> &'static [[u8; 3]] {
        match self {
            ColorMap::Sequential => &[
                [68, 1, 84],
                [71, 44, 122],
                [59, 81, 139],
                [44, 113, 142],
                [33, 144, 141],
                [39, 173, 129],
                [92, 200, 99],
                [170, 220, 50],
                [253, 231, 37],
            ],
            ColorMap::Diverging => &[[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]],
        }
    }

    /// The colour of `unit` in 0..=1 (clamped; non-finite is black).
    pub fn color(self, unit: f32) -> [u8; 3] {
        if !unit.is_finite() {
            return [0, 0, 0];
        }
        let anchors = self.anchors();
        let at = unit.clamp(0.0, 1.0) * (anchors.len() - 1) as f32;
        let i = (at.floor() as usize).min(anchors.len() - 2);
        let t = at - i as f32;
        let mix = |c: usize| (anchors[i][c] as f32 * (1.0 - t) + anchors[i + 1][c] as f32 * t).round() as u8;
        [mix(0), mix(1), mix(2)]
    }
}

impl Scale {
    fn unit(&self, value: f32) -> f32 {
        (value - self.low) / (self.high - self.low).max(1e-12)
    }
}

impl Canvas {
    /// One example of `shape` (one channel) in the colours of `map`.
    pub fn heat(
        &mut self,
        (x, y): (usize, usize),
        values: &[f32],
        shape: &[usize],
        zoom: usize,
        scale: Scale,
        map: ColorMap,
    ) {
        let (_, height, width) = image_dims(shape);
        for row in 0..height {
            for col in 0..width {
                let rgb = map.color(scale.unit(values[row * width + col]));
                self.fill(x + col * zoom, y + row * zoom, zoom, zoom, rgb);
            }
        }
    }

    /// A vertical colour bar `height` px tall at (x, y) with at least 5 labelled
    /// ticks and `title` above it.
    pub fn color_bar(&mut self, x: usize, y: usize, height: usize, scale: Scale, map: ColorMap, title: &str) {
        let dark = [20, 20, 20];
        self.text(x, y.saturating_sub(16), title, 2, dark);
        let height = height.max(2);
        for row in 0..height {
            let unit = 1.0 - row as f32 / (height - 1) as f32;
            self.fill(x, y + row, 16, 1, map.color(unit));
        }
        let (_, _, ticks) = linear_ticks(f64::from(scale.low), f64::from(scale.high), false);
        let span = f64::from(scale.high - scale.low).max(1e-12);
        for (value, text) in ticks {
            let unit = ((value - f64::from(scale.low)) / span).clamp(0.0, 1.0);
            let row = y + ((1.0 - unit) * (height - 1) as f64).round() as usize;
            self.fill(x + 16, row, 4, 1, dark);
            self.text(x + 23, row.saturating_sub(5), &text, 2, dark);
        }
    }
}

/// Width of a colour bar with its labels.
pub(super) fn color_bar_width(scale: Scale, title: &str) -> usize {
    let (_, _, ticks) = linear_ticks(f64::from(scale.low), f64::from(scale.high), false);
    let labels = ticks.iter().map(|(_, t)| text_width(t, 2)).max().unwrap_or(0);
    (23 + labels).max(text_width(title, 2)) + 8
}

/// Examples as heat maps in `map`'s colours, each labelled beneath and at least
/// `min_px` on its longer side, with a colour bar titled `what` on the right.
pub fn heatmap_tiles(
    examples: &[(&[f32], String)],
    shape: &[usize],
    scale: Scale,
    map: ColorMap,
    columns: usize,
    min_px: usize,
    what: &str,
) -> Vec<u8> {
    let tiles = tile_canvas(examples, shape, columns, min_px, |canvas, x, y, values, zoom| {
        canvas.heat((x, y), values, shape, zoom, scale, map)
    });
    with_color_bar(&tiles, scale, map, what).to_png()
}

/// `picture` with a colour bar to its right.
pub(super) fn with_color_bar(picture: &Canvas, scale: Scale, map: ColorMap, what: &str) -> Canvas {
    let bar_w = color_bar_width(scale, what);
    let height = picture.height.max(160);
    let mut canvas = Canvas::new(picture.width + bar_w + 8, height + 8, [255, 255, 255]);
    canvas.blit(picture, 0, 0);
    canvas.color_bar(picture.width + 8, 28, height - 40, scale, map, what);
    canvas
}

impl Canvas {
    /// Copies `other` with its top-left at (x, y).
    fn blit(&mut self, other: &Canvas, x: usize, y: usize) {
        for row in 0..other.height {
            for col in 0..other.width {
                let at = (row * other.width + col) * 3;
                self.set(x + col, y + row, [other.pixels[at], other.pixels[at + 1], other.pixels[at + 2]]);
            }
        }
    }
}

/// The tile layout shared by [`tiles_at`] and [`heatmap_tiles`]: `paint` draws one
/// example at (x, y) with the zoom chosen here.
pub(super) fn tile_canvas(
    examples: &[(&[f32], String)],
    shape: &[usize],
    columns: usize,
    min_px: usize,
    paint: impl Fn(&mut Canvas, usize, usize, &[f32], usize),
) -> Canvas {
    let (_, height, width) = image_dims(shape);
    let columns = columns.max(1);
    let used = columns.min(examples.len()).max(1);
    let longer = height.max(width).max(1);
    let zoom = min_px.div_ceil(longer).max(200usize.div_ceil(longer * used)).clamp(1, 32);
    let size = if zoom >= 4 { 2 } else { 1 };
    let label_w = examples.iter().map(|(_, label)| text_width(label, size)).max().unwrap_or(0);
    let cell_w = (width * zoom).max(label_w) + 8;
    let cell_h = height * zoom + 7 * size + 8;
    let rows = examples.len().div_ceil(columns);
    let mut canvas = Canvas::new(used * cell_w + 4, rows.max(1) * cell_h + 4, [255, 255, 255]);
    for (i, (values, label)) in examples.iter().enumerate() {
        let (x, y) = (4 + (i % columns) * cell_w, 4 + (i / columns) * cell_h);
        paint(&mut canvas, x, y, values, zoom);
        canvas.text(x, y + height * zoom + 4, label, size, [20, 20, 20]);
    }
    canvas
}

/// A matrix as a heat map: one row per `(label, values)`, all rows equally long,
/// cells stretched so the matrix is at least 320 px wide, the column index marked
/// beneath (`x_title`), and a colour bar titled `what`.
pub fn matrix_heatmap(rows: &[(String, &[f32])], scale: Scale, map: ColorMap, x_title: &str, what: &str) -> Vec<u8> {
    let dark = [20, 20, 20];
    let n_columns = rows.first().map_or(1, |(_, values)| values.len()).max(1);
    let cell_w = 320usize.div_ceil(n_columns).max(2);
    let cell_h = 24;
    let label_w = rows.iter().map(|(label, _)| text_width(label, 2)).max().unwrap_or(0) + 12;
    let (matrix_w, matrix_h) = (n_columns * cell_w, rows.len().max(1) * cell_h);
    let mut picture = Canvas::new(label_w + matrix_w + 12, matrix_h + 60, [255, 255, 255]);
    for (r, (label, values)) in rows.iter().enumerate() {
        let y = 8 + r * cell_h;
        picture.text(4, y + cell_h / 2 - 5, label, 2, dark);
        for (c, &value) in values.iter().enumerate() {
            picture.fill(label_w + c * cell_w, y, cell_w, cell_h - 2, map.color(scale.unit(value)));
        }
    }
    // Column ticks at nice indices.
    let (_, _, ticks) = linear_ticks(0.0, (n_columns - 1).max(1) as f64, false);
    let base = 8 + matrix_h;
    for (value, text) in ticks {
        let column = value.round() as usize;
        if column >= n_columns {
            continue;
        }
        let x = label_w + column * cell_w + cell_w / 2;
        picture.fill(x, base, 1, 4, dark);
        picture.text(x.saturating_sub(text_width(&text, 2) / 2), base + 7, &text, 2, dark);
    }
    let title_x = label_w + matrix_w.saturating_sub(text_width(x_title, 2)) / 2;
    picture.text(title_x, base + 26, x_title, 2, dark);
    with_color_bar(&picture, scale, map, what).to_png()
}
