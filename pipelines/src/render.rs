//! Pictures as artifacts: PNG canvases of example images with text labels (a tiny
//! built-in 3x5 font, so no font files are needed), heat maps with a colour bar,
//! and hand-written SVG charts with nice-number ticks, axis titles, a grid and a
//! legend outside the data. Output bytes depend only on the inputs.

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
fn color_bar_width(scale: Scale, title: &str) -> usize {
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
fn with_color_bar(picture: &Canvas, scale: Scale, map: ColorMap, what: &str) -> Canvas {
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
fn tile_canvas(
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

/// A chart axis: its range (extended to round numbers) and its ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub min: f64,
    pub max: f64,
    pub log: bool,
    /// Tick values with their labels, short and readable (`0.25`, `3e-4`, `1000`).
    pub ticks: Vec<(f64, String)>,
}

/// A "nice" step `mantissa * 10^exponent` with mantissa 1, 2 or 5.
#[derive(Debug, Clone, Copy)]
struct Step {
    mantissa: i64,
    exponent: i32,
}

impl Step {
    /// The smallest nice step >= `raw` (raw > 0).
    fn at_least(raw: f64) -> Step {
        let mut exponent = raw.log10().floor() as i32;
        for _ in 0..2 {
            for mantissa in [1, 2, 5] {
                let step = Step { mantissa, exponent };
                if step.times(1) >= raw * (1.0 - 1e-12) {
                    return step;
                }
            }
            exponent += 1;
        }
        Step { mantissa: 1, exponent }
    }

    /// The next smaller nice step.
    fn smaller(self) -> Step {
        match self.mantissa {
            5 => Step { mantissa: 2, exponent: self.exponent },
            2 => Step { mantissa: 1, exponent: self.exponent },
            _ => Step { mantissa: 5, exponent: self.exponent - 1 },
        }
    }

    /// `i` steps, computed from integers so that tick values are the doubles nearest
    /// to their decimal text (`3 * 1e-4` is `0.0003`, not `0.00030000000000000003`).
    fn times(self, i: i64) -> f64 {
        let units = (i * self.mantissa) as f64;
        if self.exponent >= 0 {
            units * 10f64.powi(self.exponent)
        } else {
            units / 10f64.powi(-self.exponent)
        }
    }
}

/// Short text of `value`, a multiple of a step whose exponent is `exponent`:
/// fixed decimals, or `m e k` on a `scientific` axis.
fn tick_text(value: f64, exponent: i32, scientific_axis: bool) -> String {
    if value == 0.0 {
        "0".into()
    } else if scientific_axis {
        scientific(value, exponent)
    } else {
        let decimals = (-exponent).max(0) as usize;
        format!("{value:.decimals$}")
    }
}

/// `value` as `m e k` with as few mantissa digits as a step of 10^`exponent` needs.
fn scientific(value: f64, exponent: i32) -> String {
    if value == 0.0 || !value.is_finite() {
        return if value == 0.0 { "0".into() } else { value.to_string() };
    }
    let mut power = value.abs().log10().floor() as i32;
    let digits = (power - exponent).clamp(0, 6) as usize;
    let mut mantissa = value / 10f64.powi(power);
    if format!("{:.digits$}", mantissa.abs()).starts_with("10") {
        power += 1;
        mantissa = value / 10f64.powi(power);
    }
    let text = format!("{mantissa:.digits$}");
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    format!("{text}e{power}")
}

/// Short text of a log-axis tick `m * 10^power`: plain between 0.001 and 10^5.
fn log_tick_text(value: f64, power: i32) -> String {
    if (-3..=5).contains(&power) {
        let decimals = (-power).max(0) as usize;
        format!("{value:.decimals$}")
    } else {
        scientific(value, power)
    }
}

/// Nice ticks from `low` to `high`: the largest 1-2-5 step giving at least 5 ticks
/// (about 5 to 10), and the range extended to whole steps when `extend`.
fn linear_ticks(low: f64, high: f64, extend: bool) -> (f64, f64, Vec<(f64, String)>) {
    let mut step = Step::at_least((high - low) / 8.0);
    for _ in 0..8 {
        let (first, last) = if extend {
            ((low / step.times(1) + 1e-9).floor() as i64, (high / step.times(1) - 1e-9).ceil() as i64)
        } else {
            ((low / step.times(1) - 1e-9).ceil() as i64, (high / step.times(1) + 1e-9).floor() as i64)
        };
        if last - first + 1 >= 5 {
            let largest = step.times(first.abs().max(last.abs()));
            let sci = step.exponent < -3 || largest >= 1e6;
            let ticks = (first..=last).map(|i| (step.times(i), tick_text(step.times(i), step.exponent, sci))).collect();
            return if extend { (step.times(first), step.times(last), ticks) } else { (low, high, ticks) };
        }
        step = step.smaller();
    }
    (low, high, vec![(low, scientific(low, -6)), (high, scientific(high, -6))])
}

impl Axis {
    /// An axis over `values`; non-finite values (and non-positive ones on a log axis)
    /// are left out. A constant series gets a range around its value.
    pub fn fit(values: impl IntoIterator<Item = f64>, log: bool) -> Axis {
        let (low, high) = values
            .into_iter()
            .filter(|v| v.is_finite() && (!log || *v > 0.0))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        if log {
            Axis::log(low, high)
        } else {
            Axis::linear(low, high)
        }
    }

    fn linear(low: f64, high: f64) -> Axis {
        let (low, high) = if !low.is_finite() {
            (0.0, 1.0)
        } else if high - low <= 1e-9 * low.abs().max(high.abs()) || high == low {
            match low {
                v if v > 0.0 => (0.0, 2.0 * v),
                v if v < 0.0 => (2.0 * v, 0.0),
                _ => (0.0, 1.0),
            }
        } else {
            (low, high)
        };
        let (min, max, ticks) = linear_ticks(low, high, true);
        Axis { min, max, log: false, ticks }
    }

    /// An axis from exactly `low` to `high` (both finite, low < high), ticks inside.
    pub fn tight(low: f64, high: f64) -> Axis {
        let (min, max, ticks) = linear_ticks(low, high, false);
        Axis { min, max, log: false, ticks }
    }

    /// Whole decades; ticks at each decade (every k-th when there are many), or at
    /// 1-2-5 (1-2-3-5-7 within one decade) so there are always at least 5.
    fn log(low: f64, high: f64) -> Axis {
        let (low, high) = if low.is_finite() { (low, high) } else { (0.1, 1.0) };
        let decade = |power: i32| Step { mantissa: 1, exponent: power }.times(1);
        // log10 is not exact: settle on the decades by comparing with 10^k itself.
        let mut first = low.log10().floor() as i32;
        first += i32::from(decade(first + 1) <= low) - i32::from(decade(first) > low);
        let mut last = high.log10().ceil() as i32;
        last += i32::from(decade(last) < high) - i32::from(decade(last - 1) >= high);
        let last = last.max(first + 1);
        let decades = last - first;
        let mantissas: &[i64] = match decades {
            1 => &[1, 2, 3, 5, 7],
            2 | 3 => &[1, 2, 5],
            _ => &[1],
        };
        let every = (decades as usize).div_ceil(10).max(1);
        let mut ticks = Vec::new();
        for power in (first..last).step_by(every) {
            for &m in mantissas {
                let value = Step { mantissa: m, exponent: power }.times(1);
                ticks.push((value, log_tick_text(value, power)));
            }
        }
        let top = Step { mantissa: 1, exponent: last }.times(1);
        ticks.push((top, log_tick_text(top, last)));
        Axis { min: Step { mantissa: 1, exponent: first }.times(1), max: top, log: true, ticks }
    }

    /// 0..1 along the axis; `None` for a value the axis cannot show.
    pub fn frac(&self, value: f64) -> Option<f64> {
        if !value.is_finite() || (self.log && value <= 0.0) {
            return None;
        }
        Some(if self.log {
            (value.log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
        } else {
            (value - self.min) / (self.max - self.min)
        })
    }
}

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// Distinct line colours, cycled.
pub const PALETTE: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// One chart: a title, axis titles, its lines, and whether y is on a log scale.
pub struct Panel {
    pub title: String,
    pub x_title: String,
    pub y_title: String,
    pub series: Vec<Series>,
    pub log_y: bool,
}

impl Panel {
    /// A panel over training steps.
    pub fn steps(title: &str, y_title: &str, series: Vec<Series>) -> Panel {
        Panel { title: title.into(), x_title: "step".into(), y_title: y_title.into(), series, log_y: false }
    }

    pub fn log_y(self) -> Panel {
        Panel { log_y: true, ..self }
    }
}

pub(crate) const PANEL_W: f64 = 640.0;
pub(crate) const PANEL_H: f64 = 340.0;
/// The plot area within a panel: left, top, width, height.
pub(crate) const PLOT: (f64, f64, f64, f64) = (78.0, 34.0, 380.0, 250.0);

/// Panels in one SVG, two per row. Each has labelled ticks on both axes, axis
/// titles, a grid, and its legend to the right of the plot area.
pub fn charts_svg(panels: &[Panel]) -> String {
    let columns = panels.len().clamp(1, 2);
    let rows = panels.len().div_ceil(2).max(1);
    let (width, height) = (PANEL_W * columns as f64, PANEL_H * rows as f64);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    for (i, panel) in panels.iter().enumerate() {
        let at = ((i % 2) as f64 * PANEL_W, (i / 2) as f64 * PANEL_H);
        chart_panel(&mut svg, panel, at);
    }
    svg.push_str("</svg>");
    svg
}

/// Points of a line split where one is missing or not drawable on the axes.
fn segments(points: &[(f64, f64)], x: &Axis, y: &Axis) -> Vec<Vec<(f64, f64)>> {
    let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for &(px, py) in points {
        match (x.frac(px).zip(y.frac(py)), segments.last_mut()) {
            (Some(point), Some(segment)) => segment.push(point),
            _ => segments.push(Vec::new()),
        }
    }
    segments.retain(|s| !s.is_empty());
    segments
}

/// The frame of a plot area at (left, top) of `size`: grid, ticks, tick labels,
/// axis titles.
pub(crate) fn axes_svg(
    svg: &mut String,
    (left, top): (f64, f64),
    (w, h): (f64, f64),
    x: &Axis,
    y: &Axis,
    titles: (&str, &str),
) {
    for (value, text) in &x.ticks {
        let Some(f) = x.frac(*value) else { continue };
        let px = left + f * w;
        let _ = write!(
            svg,
            r##"<line x1="{px:.2}" y1="{top:.2}" x2="{px:.2}" y2="{:.2}" stroke="#e4e4e4"/><line x1="{px:.2}" y1="{:.2}" x2="{px:.2}" y2="{:.2}" stroke="#555"/><text x="{px:.2}" y="{:.2}" text-anchor="middle">{}</text>"##,
            top + h,
            top + h,
            top + h + 5.0,
            top + h + 18.0,
            escape(text)
        );
    }
    for (value, text) in &y.ticks {
        let Some(f) = y.frac(*value) else { continue };
        let py = top + h - f * h;
        let _ = write!(
            svg,
            r##"<line x1="{left:.2}" y1="{py:.2}" x2="{:.2}" y2="{py:.2}" stroke="#e4e4e4"/><line x1="{:.2}" y1="{py:.2}" x2="{left:.2}" y2="{py:.2}" stroke="#555"/><text x="{:.2}" y="{:.2}" text-anchor="end">{}</text>"##,
            left + w,
            left - 5.0,
            left - 8.0,
            py + 4.0,
            escape(text)
        );
    }
    let _ = write!(
        svg,
        r##"<rect x="{left:.2}" y="{top:.2}" width="{w:.2}" height="{h:.2}" fill="none" stroke="#555"/><text x="{:.2}" y="{:.2}" text-anchor="middle">{}</text><text transform="translate({:.2},{:.2}) rotate(-90)" text-anchor="middle">{}{}</text>"##,
        left + w / 2.0,
        top + h + 36.0,
        escape(titles.0),
        left - 60.0,
        top + h / 2.0,
        escape(titles.1),
        if y.log { " (log scale)" } else { "" }
    );
}

/// One panel at `at` (its top-left corner).
fn chart_panel(svg: &mut String, panel: &Panel, at: (f64, f64)) {
    let (left, top, w, h) = (at.0 + PLOT.0, at.1 + PLOT.1, PLOT.2, PLOT.3);
    let x = Axis::fit(panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), false);
    let y = Axis::fit(
        panel.series.iter().flat_map(|s| s.points.iter().filter(|p| p.0.is_finite()).map(|p| p.1)),
        panel.log_y,
    );
    let _ = write!(
        svg,
        r#"<text x="{:.2}" y="{:.2}" font-weight="bold" font-size="13">{}</text>"#,
        left,
        at.1 + 20.0,
        escape(&panel.title)
    );
    axes_svg(svg, (left, top), (w, h), &x, &y, (&panel.x_title, &panel.y_title));
    for line in &panel.series {
        for segment in segments(&line.points, &x, &y) {
            let coords: Vec<String> =
                segment.iter().map(|(fx, fy)| format!("{:.2},{:.2}", left + fx * w, top + h - fy * h)).collect();
            if coords.len() == 1 {
                let (cx, cy) = (left + segment[0].0 * w, top + h - segment[0].1 * h);
                let _ = write!(svg, r#"<circle cx="{cx:.2}" cy="{cy:.2}" r="2" fill="{}"/>"#, line.color);
            } else {
                let _ = write!(
                    svg,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#,
                    line.color,
                    coords.join(" "),
                    escape(&line.name)
                );
            }
        }
    }
    legend_svg(svg, &panel.series, (left + w + 16.0, top));
}

/// A legend at (x, y): a colour swatch and the name of each line, one per row; the
/// rows that do not fit the plot's height are summarised as "+N more".
pub(crate) fn legend_svg(svg: &mut String, series: &[Series], (x, y): (f64, f64)) {
    let fits = ((PLOT.3 - 4.0) / 15.0) as usize;
    let shown = if series.len() > fits { fits - 1 } else { series.len() };
    for (i, line) in series.iter().take(shown).enumerate() {
        let row = y + 10.0 + 15.0 * i as f64;
        let name: String = line.name.chars().take(22).collect();
        let _ = write!(
            svg,
            r#"<line x1="{x:.2}" y1="{row:.2}" x2="{:.2}" y2="{row:.2}" stroke="{}" stroke-width="3"/><text x="{:.2}" y="{:.2}">{}</text>"#,
            x + 18.0,
            line.color,
            x + 24.0,
            row + 4.0,
            escape(&name)
        );
    }
    if shown < series.len() {
        let _ = write!(
            svg,
            r#"<text x="{x:.2}" y="{:.2}">+{} more</text>"#,
            y + 14.0 + 15.0 * shown as f64,
            series.len() - shown
        );
    }
}

/// A histogram as SVG: `counts[i]` values in `[edges[i], edges[i+1])`, counts on a
/// log axis (image data is dominated by a few values, such as background pixels).
pub fn histogram_svg(title: &str, edges: &[f64], counts: &[u64]) -> String {
    let (width, height) = (PLOT.0 + PLOT.2 + 40.0, PANEL_H);
    let (left, top, w, h) = (PLOT.0, PLOT.1, PLOT.2, PLOT.3);
    let (low, high) = (edges.first().copied().unwrap_or(0.0), edges.last().copied().unwrap_or(1.0));
    let x = if low.is_finite() && high.is_finite() && low < high {
        Axis::tight(low, high)
    } else {
        Axis::fit(edges.iter().copied(), false)
    };
    let y = Axis::fit(counts.iter().filter(|&&c| c > 0).map(|&c| c as f64), true);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-weight="bold" font-size="13">{}</text>"#,
        escape(title)
    );
    axes_svg(&mut svg, (left, top), (w, h), &x, &y, ("value", "count"));
    for (i, &count) in counts.iter().enumerate() {
        let (Some(x0), Some(x1), Some(fy)) = (x.frac(edges[i]), x.frac(edges[i + 1]), y.frac(count as f64)) else {
            continue;
        };
        let bar_h = (fy * h).max(1.0);
        let _ = write!(
            svg,
            r##"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{bar_h:.2}" fill="#4878a8"><title>[{}, {}): {count}</title></rect>"##,
            left + x0 * w,
            top + h - bar_h,
            ((x1 - x0) * w - 1.0).max(0.5),
            edges[i],
            edges[i + 1]
        );
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

    fn labels(axis: &Axis) -> Vec<&str> {
        axis.ticks.iter().map(|(_, text)| text.as_str()).collect()
    }

    #[test]
    fn linear_ticks_are_nice_short_and_at_least_five() {
        let steps = Axis::fit([0.0, 3000.0], false);
        assert_eq!(labels(&steps), ["0", "500", "1000", "1500", "2000", "2500", "3000"]);
        let accuracy = Axis::fit([0.08, 0.97], false);
        assert_eq!(labels(&accuracy), ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        // A tiny range around zero: no `-0.00000047683715820312`.
        let tiny = Axis::fit([-4.76837158203125e-7, 3.1e-7], false);
        assert!(labels(&tiny).iter().all(|t| t.len() <= 5), "{:?}", labels(&tiny));
        assert_eq!(labels(&tiny), ["-5e-7", "-4e-7", "-3e-7", "-2e-7", "-1e-7", "0", "1e-7", "2e-7", "3e-7", "4e-7"]);
        let lr = Axis::fit([3e-4, 3e-4], false);
        assert_eq!((lr.min, lr.max), (0.0, 6e-4));
        assert_eq!(labels(&lr), ["0", "1e-4", "2e-4", "3e-4", "4e-4", "5e-4", "6e-4"]);
        for (low, high) in [(0.0, 1.0), (2.3, 2.31), (-7.0, 1234.5), (1e-9, 3e-9), (5.0, 5.0), (0.0, 1e7)] {
            let axis = Axis::fit([low, high], false);
            assert!(axis.ticks.len() >= 5 && axis.ticks.len() <= 11, "{low}..{high}: {:?}", labels(&axis));
            assert!(axis.min <= low && axis.max >= high);
            assert!(labels(&axis).iter().all(|t| t.len() <= 7), "{:?}", labels(&axis));
        }
    }

    #[test]
    fn log_ticks_are_at_least_five() {
        assert_eq!(labels(&Axis::fit([0.3, 2.2], true)), ["0.1", "0.2", "0.5", "1", "2", "5", "10"]);
        assert_eq!(labels(&Axis::fit([0.002, 0.009], true)), ["0.001", "0.002", "0.003", "0.005", "0.007", "0.01"]);
        assert_eq!(labels(&Axis::fit([1e-7, 2.0], true)).len(), 9);
        assert!(labels(&Axis::fit([1e-7, 2.0], true)).contains(&"1e-7"));
        let empty = Axis::fit([f64::NAN, -1.0], true);
        assert!(empty.ticks.len() >= 5);
    }

    #[test]
    fn charts_have_axes_titles_grid_and_an_outside_legend() {
        let series = vec![
            Series {
                name: "train".into(),
                color: PALETTE[0],
                points: vec![(0.0, 2.3), (100.0, 0.5), (200.0, f64::NAN), (300.0, 0.1)],
            },
            Series { name: "val".into(), color: PALETTE[1], points: vec![(0.0, 2.3), (300.0, 0.3)] },
        ];
        let svg = charts_svg(&[Panel::steps("loss", "cross-entropy", series).log_y()]);
        assert!(svg.contains(">step</text>") && svg.contains("cross-entropy (log scale)"));
        assert!(svg.matches(r##"stroke="#e4e4e4""##).count() >= 10, "a grid line per tick");
        // The legend lies right of the plot area.
        let legend_x = PLOT.0 + PLOT.2 + 16.0;
        assert!(svg.contains(&format!(r#"<line x1="{legend_x:.2}""#)));
        // The NaN splits the train line: a line, then a lone point.
        assert_eq!((svg.matches("<polyline").count(), svg.matches("<circle").count()), (2, 1));
        let again = charts_svg(&[Panel::steps("loss", "cross-entropy", Vec::new())]);
        assert!(again.contains("</svg>"));
    }

    #[test]
    fn small_pictures_are_scaled_up_with_a_colour_bar() {
        let std: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
        let png = heatmap_tiles(
            &[(std.as_slice(), "pixel std".into())],
            &[8, 8],
            Scale { low: 0.0, high: 1.0 },
            ColorMap::Sequential,
            1,
            200,
            "std",
        );
        let image = image::load_from_memory(&png).unwrap().to_rgb8();
        assert!(image.width() >= 200 + 40 && image.height() >= 200, "{}x{}", image.width(), image.height());
        // The colour bar's top is the map's last colour.
        let top = ColorMap::Sequential.color(1.0);
        assert!(image.pixels().any(|p| p.0 == top));
        let row: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let matrix = matrix_heatmap(
            &[("example 3".into(), row.as_slice())],
            Scale { low: 0.0, high: 63.0 },
            ColorMap::Sequential,
            "batch example",
            "gradient",
        );
        let matrix = image::load_from_memory(&matrix).unwrap();
        assert!(matrix.width() >= 320 && matrix.height() >= 100);
        let two = tiles_at(
            &[(std.as_slice(), "1>1".into()), (std.as_slice(), "2>7".into())],
            &[8, 8],
            Scale { low: 0.0, high: 1.0 },
            8,
            96,
        );
        assert!(image::load_from_memory(&two).unwrap().width() >= 200);
        assert_eq!(
            png,
            heatmap_tiles(
                &[(std.as_slice(), "pixel std".into())],
                &[8, 8],
                Scale { low: 0.0, high: 1.0 },
                ColorMap::Sequential,
                1,
                200,
                "std"
            )
        );
    }

    #[test]
    fn color_maps_span_their_anchors() {
        assert_eq!(ColorMap::Sequential.color(0.0), [68, 1, 84]);
        assert_eq!(ColorMap::Diverging.color(0.5), [247, 247, 247]);
        assert_eq!(ColorMap::Diverging.color(2.0), [178, 24, 43]);
        assert_eq!(ColorMap::Sequential.color(f32::NAN), [0, 0, 0]);
    }

    #[test]
    fn histogram_is_svg() {
        let svg = histogram_svg("pixels <raw>", &[0.0, 1.0, 2.0], &[3, 0]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("pixels &lt;raw&gt;"));
        assert_eq!(svg.matches("<rect").count(), 3);
    }
}
