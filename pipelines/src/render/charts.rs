//! SVG line charts, legends and histograms.

use super::*;

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
pub(super) fn segments(points: &[(f64, f64)], x: &Axis, y: &Axis) -> Vec<Vec<(f64, f64)>> {
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
pub(super) fn chart_panel(svg: &mut String, panel: &Panel, at: (f64, f64)) {
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
