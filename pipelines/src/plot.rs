//! Training curves as a hand-written SVG (axes and ticks from [`crate::render::Axis`]): two runs overlaid (A solid blue family, B
//! orange), loss on a log axis and accuracy on a linear one, train solid and
//! validation dashed. Deterministic bytes for the same inputs, so the plot is an
//! ordinary content-addressed artifact.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::render::Axis;

/// Curves of one side: evaluation steps and the series read from a `metrics.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Curves {
    pub step: Vec<f64>,
    /// `train_loss`, `val_loss`, `train_acc`, `val_acc`; `None` where a point is missing.
    pub series: BTreeMap<String, Vec<Option<f64>>>,
}

const SERIES: [&str; 4] = ["train_loss", "val_loss", "train_acc", "val_acc"];

impl Curves {
    /// Reads the curves of a stage's `metrics.json` (`{"step": [...], "train_loss": [...], ...}`).
    pub fn from_metrics_json(bytes: &[u8]) -> Option<Curves> {
        let value: Value = serde_json::from_slice(bytes).ok()?;
        let step: Vec<f64> = value.get("step")?.as_array()?.iter().map(Value::as_f64).collect::<Option<_>>()?;
        let mut series = BTreeMap::new();
        for name in SERIES {
            if let Some(points) = value.get(name).and_then(Value::as_array) {
                series.insert(name.to_string(), points.iter().map(Value::as_f64).collect());
            }
        }
        (!series.is_empty()).then_some(Curves { step, series })
    }
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 400.0;
const PANEL_W: f64 = 380.0;
const PANEL_H: f64 = 280.0;
const COLORS: [&str; 2] = ["#1f77b4", "#ff7f0e"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An SVG overlaying the curves of side A and side B (either may be absent).
pub fn overlay_svg(title: &str, sides: [(&str, Option<&Curves>); 2]) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, "<title>{}</title>", escape(title));
    let _ = writeln!(svg, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let panels =
        [("loss", ["train_loss", "val_loss"], true, 70.0), ("accuracy", ["train_acc", "val_acc"], false, 540.0)];
    let steps = sides.iter().filter_map(|(_, c)| *c).flat_map(|c| c.step.iter().copied());
    let x_axis = Axis::fit(steps, false);
    for (label, names, log, left) in panels {
        let values = sides
            .iter()
            .filter_map(|(_, c)| *c)
            .flat_map(|c| names.iter().filter_map(|n| c.series.get(*n)).flatten().flatten().copied())
            .collect::<Vec<f64>>();
        let y_axis = Axis::fit(values, log);
        panel(&mut svg, label, left, &x_axis, &y_axis, &names, &sides);
    }
    // Legend: one entry per side and line style.
    let y = HEIGHT - 34.0;
    for (i, (name, curves)) in sides.iter().enumerate() {
        let x = 70.0 + 460.0 * i as f64;
        let missing = if curves.is_none() { " (no curves)" } else { "" };
        for (j, (style, what)) in [("", "train"), (r#" stroke-dasharray="6 4""#, "validation")].iter().enumerate() {
            let x = x + 190.0 * j as f64;
            let _ = writeln!(
                svg,
                r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="2"{style}/>"#,
                x + 24.0,
                COLORS[i]
            );
            let _ = writeln!(svg, r#"<text x="{}" y="{}">{} {what}{missing}</text>"#, x + 30.0, y + 4.0, escape(name));
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(
    svg: &mut String,
    label: &str,
    left: f64,
    x_axis: &Axis,
    y_axis: &Axis,
    names: &[&str; 2],
    sides: &[(&str, Option<&Curves>); 2],
) {
    let top = 40.0;
    let (x_of, y_of) = (|f: f64| left + f * PANEL_W, |f: f64| top + PANEL_H - f * PANEL_H);
    let _ = writeln!(svg, r#"<g class="panel" data-metric="{label}">"#);
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#888"/>"##
    );
    for (value, text) in &x_axis.ticks {
        let Some(f) = x_axis.frac(*value) else { continue };
        let x = x_of(f);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.2}" y1="{}" x2="{x:.2}" y2="{}" stroke="#888"/><text x="{x:.2}" y="{}" text-anchor="middle">{text}</text>"##,
            top + PANEL_H,
            top + PANEL_H + 5.0,
            top + PANEL_H + 18.0
        );
    }
    for (value, text) in &y_axis.ticks {
        let Some(f) = y_axis.frac(*value) else { continue };
        let y = y_of(f);
        let _ = writeln!(
            svg,
            r##"<line x1="{}" y1="{y:.2}" x2="{left}" y2="{y:.2}" stroke="#888"/><line x1="{left}" y1="{y:.2}" x2="{}" y2="{y:.2}" stroke="#eee"/><text x="{}" y="{:.2}" text-anchor="end">{text}</text>"##,
            left - 5.0,
            left + PANEL_W,
            left - 8.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">step</text><text x="{}" y="{}" text-anchor="middle">{label}{}</text>"#,
        left + PANEL_W / 2.0,
        top + PANEL_H + 34.0,
        left + PANEL_W / 2.0,
        top - 6.0,
        if y_axis.log { " (log scale)" } else { "" }
    );
    for (i, (side, curves)) in sides.iter().enumerate() {
        let Some(curves) = curves else { continue };
        for (j, name) in names.iter().enumerate() {
            let Some(points) = curves.series.get(*name) else { continue };
            // Split the line where a point is missing or not drawable.
            let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            for (step, value) in curves.step.iter().zip(points) {
                let point = value.and_then(|v| Some((x_axis.frac(*step)?, y_axis.frac(v)?)));
                match (point, segments.last_mut()) {
                    (Some((fx, fy)), Some(segment)) => segment.push((x_of(fx), y_of(fy))),
                    _ => segments.push(Vec::new()),
                }
            }
            let dash = if j == 1 { r#" stroke-dasharray="6 4""# } else { "" };
            for segment in segments.iter().filter(|s| !s.is_empty()) {
                let points: Vec<String> = segment.iter().map(|(x, y)| format!("{x:.2},{y:.2}")).collect();
                let _ = writeln!(
                    svg,
                    r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} data-side="{}" data-series="{name}" points="{}"/>"#,
                    COLORS[i],
                    escape(side),
                    points.join(" ")
                );
            }
        }
    }
    svg.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_two_runs_with_breaks_for_missing_points() {
        let a = Curves::from_metrics_json(
            br#"{"step":[0,100,200],"train_loss":[2.3,0.5,0.1],"val_loss":[2.3,0.6,0.3],"train_acc":[0.1,0.8,0.95],"val_acc":[0.1,0.7,0.9],"batch_loss":[null,1.0,0.2]}"#,
        )
        .unwrap();
        let mut b = a.clone();
        b.series.get_mut("train_loss").unwrap()[1] = None;
        let svg = overlay_svg("run 1 vs run <2>", [("A: run 1", Some(&a)), ("B: run 2", Some(&b))]);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("run 1 vs run &lt;2&gt;"), "titles are escaped");
        // 4 series per side; B's train loss is split in two by its missing point.
        assert_eq!(svg.matches("<polyline").count(), 9);
        assert_eq!(svg.matches(r#"data-series="train_loss""#).count(), 3);
        assert!(svg.contains("(log scale)") && svg.contains(">0.1<") && svg.contains(">0.5<"));
        assert_eq!(svg, overlay_svg("run 1 vs run <2>", [("A: run 1", Some(&a)), ("B: run 2", Some(&b))]));
        let one_side = overlay_svg("t", [("A", Some(&a)), ("B", None)]);
        assert!(one_side.contains("(no curves)"));
        assert!(Curves::from_metrics_json(b"{\"loss\": 1}").is_none());
    }
}
