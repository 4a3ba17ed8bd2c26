//! Pictures that explain the neighbour findings: each label issue beside its given and
//! suggested label, the confidence, and the training neighbours that outvoted it; each
//! near-duplicate pair side by side with its distance; the confident joint as a
//! class x class table. Drawn on `render::Canvas` (render.rs itself is not changed).

use std::fmt::Write as _;

use super::label_issues::{LabelAudit, LabelIssue};
use super::near_duplicates::NearDuplicate;
use super::{ExampleRef, View};
use crate::render::{escape, image_dims, text_width, Canvas, Scale};

const INK: [u8; 3] = [20, 20, 20];
const RED: [u8; 3] = [190, 30, 30];
const GREEN: [u8; 3] = [30, 130, 50];

/// What drawing examples needs.
pub struct Picture<'a, 'v> {
    pub views: &'a [View<'v>],
    pub shape: &'a [usize],
    pub scale: Scale,
    pub names: &'a [String],
}

impl Picture<'_, '_> {
    fn values(&self, example: &ExampleRef) -> Option<&[f32]> {
        let d: usize = self.shape.iter().product();
        let view = self.views.iter().find(|v| v.name == example.split)?;
        view.raw.get(example.index * d..(example.index + 1) * d)
    }

    fn name(&self, label: u32) -> String {
        self.names.get(label as usize).cloned().unwrap_or_else(|| label.to_string())
    }

    fn zoom(&self) -> usize {
        let (_, height, width) = image_dims(self.shape);
        (56 / height.max(width).max(1)).clamp(1, 6)
    }

    /// One row per issue: the example, its caption, then its vote neighbours.
    pub fn label_issues(&self, issues: &[LabelIssue], limit: usize) -> Option<Vec<u8>> {
        let issues = &issues[..issues.len().min(limit)];
        if issues.is_empty() {
            return None;
        }
        let (_, height, width) = image_dims(self.shape);
        let zoom = self.zoom();
        let (tile_w, tile_h) = (width * zoom, height * zoom);
        let captions: Vec<[String; 4]> = issues
            .iter()
            .map(|issue| {
                [
                    format!("{}:{} (#{})", issue.example.split, issue.example.index, issue.example.source_index),
                    format!("LABEL {} P={:.2}", self.name(issue.example.label), issue.self_confidence),
                    format!("SUGGEST {} P={:.2}", self.name(issue.suggested_label), issue.suggested_confidence),
                    "NEIGHBOURS >".to_string(),
                ]
            })
            .collect();
        let caption_w = captions.iter().flatten().map(|t| text_width(t, 1)).max().unwrap_or(0) + 8;
        let neighbour_w = self.names.iter().map(|n| text_width(n, 1)).max().unwrap_or(0).max(text_width("D=00.00", 1));
        let cell_w = tile_w.max(neighbour_w) + 6;
        let n_neighbours = issues.iter().map(|i| i.neighbours.len()).max().unwrap_or(0);
        let row_h = tile_h.max(4 * 8) + 16;
        let canvas_w = 4 + tile_w + 6 + caption_w + n_neighbours * cell_w;
        let mut canvas = Canvas::new(canvas_w, issues.len() * row_h + 4, [255, 255, 255]);
        for (r, (issue, caption)) in issues.iter().zip(&captions).enumerate() {
            let y = 2 + r * row_h;
            if let Some(values) = self.values(&issue.example) {
                canvas.example(4, y, values, self.shape, zoom, self.scale);
            }
            let text_x = 4 + tile_w + 6;
            for (line, (text, ink)) in caption.iter().zip([INK, RED, GREEN, INK]).enumerate() {
                canvas.text(text_x, y + line * 8, text, 1, ink);
            }
            for (c, neighbour) in issue.neighbours.iter().enumerate() {
                let x = text_x + caption_w + c * cell_w;
                if let Some(values) = self.values(&neighbour.example) {
                    canvas.example(x, y, values, self.shape, zoom, self.scale);
                }
                let ink = if neighbour.example.label == issue.example.label { RED } else { INK };
                canvas.text(x, y + tile_h + 2, &self.name(neighbour.example.label), 1, ink);
                canvas.text(x, y + tile_h + 9, &format!("D={:.2}", neighbour.distance), 1, INK);
            }
            canvas.fill(0, y + row_h - 2, canvas_w, 1, [220, 220, 220]);
        }
        Some(canvas.to_png())
    }

    /// One row per pair: both examples side by side, their names and their distance.
    pub fn near_duplicates(&self, pairs: &[NearDuplicate], limit: usize) -> Option<Vec<u8>> {
        let pairs = &pairs[..pairs.len().min(limit)];
        if pairs.is_empty() {
            return None;
        }
        let (_, height, width) = image_dims(self.shape);
        let zoom = self.zoom();
        let (tile_w, tile_h) = (width * zoom, height * zoom);
        let captions: Vec<[String; 3]> = pairs
            .iter()
            .map(|p| {
                let side = |e: &ExampleRef| format!("{}:{} {}", e.split, e.index, self.name(e.label));
                [side(&p.example), side(&p.other), format!("RMS D={:.4}", p.distance)]
            })
            .collect();
        let caption_w = captions.iter().flatten().map(|t| text_width(t, 1)).max().unwrap_or(0) + 8;
        let row_h = tile_h.max(3 * 8) + 6;
        let canvas_w = 4 + 2 * (tile_w + 4) + 6 + caption_w;
        let mut canvas = Canvas::new(canvas_w, pairs.len() * row_h + 4, [255, 255, 255]);
        for (r, (pair, caption)) in pairs.iter().zip(&captions).enumerate() {
            let y = 2 + r * row_h;
            for (c, example) in [&pair.example, &pair.other].into_iter().enumerate() {
                if let Some(values) = self.values(example) {
                    canvas.example(4 + c * (tile_w + 4), y, values, self.shape, zoom, self.scale);
                }
            }
            let ink = if pair.example.label == pair.other.label { INK } else { RED };
            for (line, text) in caption.iter().enumerate() {
                canvas.text(4 + 2 * (tile_w + 4) + 6, y + line * 8, text, 1, if line == 2 { INK } else { ink });
            }
        }
        Some(canvas.to_png())
    }
}

/// The confident joint as an SVG table: rows the given label, columns the label the
/// out-of-fold neighbours suggest, each cell its count, shaded by its share of the row.
pub fn confident_joint_svg(labels: &LabelAudit, names: &[String]) -> String {
    let n = labels.confident_joint.len();
    let cell = 44.0;
    let label_w = 10.0 + 7.0 * names.iter().map(|n| n.len()).max().unwrap_or(1) as f64;
    let (left, top) = (label_w + 20.0, 70.0);
    let (width, height) = (left + cell * n as f64 + 20.0, top + cell * n as f64 + 20.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{:.0}" y="16" font-size="13">confident joint: given label (rows) x suggested label (columns); estimated noise {:.2}%</text>"#,
        8.0,
        100.0 * labels.estimated_noise
    );
    for (j, name) in names.iter().enumerate().take(n) {
        let x = left + cell * (j as f64 + 0.5);
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            top - 8.0 - 12.0 * (j % 2) as f64,
            escape(name)
        );
        let y = top + cell * (j as f64 + 0.5) + 4.0;
        let _ = write!(svg, r#"<text x="{:.1}" y="{y:.1}" text-anchor="end">{}</text>"#, left - 6.0, escape(name));
    }
    for (i, row) in labels.confident_joint.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1) as f64;
        for (j, &count) in row.iter().enumerate() {
            let share = count as f64 / total;
            let shade = if i == j { 255.0 - 80.0 * share } else { 255.0 - 255.0 * (share * 8.0).min(1.0) };
            let (x, y) = (left + cell * j as f64, top + cell * i as f64);
            let fill = if i == j {
                format!("rgb({0:.0},{0:.0},255)", shade)
            } else {
                format!("rgb(255,{0:.0},{0:.0})", shade)
            };
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{cell:.0}" height="{cell:.0}" fill="{fill}" stroke="white"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{count}</text>"#,
                x + cell / 2.0,
                y + cell / 2.0 + 4.0
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}
