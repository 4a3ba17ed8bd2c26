//! The tune stage's pictures: validation accuracy against each searched knob
//! (`scatter.svg`, one panel per knob, a log axis for `log` knobs, one colour per
//! rung, the untuned config as a dashed line) and the knobs' importance
//! (`importance.svg`, horizontal bars of the share of variance each explains).

use std::fmt::Write;

use workspace::KnobId;

use super::tables::Row;
use crate::render::{axes_svg, escape, legend_svg, Axis, Series, PALETTE, PANEL_H, PANEL_W, PLOT};
use crate::tune::importance::Importance;
use crate::tune::{Dim, Dist};

fn svg_open(svg: &mut String, width: f64, height: f64) {
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
}

/// The x axis of a knob: its values (log for `log`), or one slot per option.
fn knob_axis(dim: &Dim, rows: &[Row]) -> Axis {
    match &dim.dist {
        Dist::Choice(options) => Axis {
            min: -0.5,
            max: options.len() as f64 - 0.5,
            log: false,
            ticks: options
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64, v.to_toml().chars().take(12).collect()))
                .collect(),
        },
        _ => {
            let (low, high) = dim.range().unwrap_or((0.0, 1.0));
            let values = rows.iter().filter_map(|r| r.knobs.iter().find(|(k, _)| *k == dim.knob)).map(|(_, v)| v);
            Axis::fit(values.filter_map(|v| dim.coordinate(v)).chain([low, high]), dim.is_log())
        }
    }
}

/// `scatter.svg`: validation accuracy of every trial run against each knob.
pub fn scatter(dims: &[Dim], rows: &[Row], rungs: &[u64], untuned_acc: f64) -> String {
    let columns = dims.len().clamp(1, 2);
    let panels = dims.len().max(1);
    let (width, height) = (PANEL_W * columns as f64, PANEL_H * panels.div_ceil(2) as f64);
    let mut svg = String::new();
    svg_open(&mut svg, width, height);
    let y = Axis::fit(rows.iter().map(|r| r.metric("val_acc")).chain([untuned_acc]), false);
    let mut legend: Vec<Series> = rungs
        .iter()
        .enumerate()
        .map(|(rung, steps)| Series {
            name: format!("{steps} steps"),
            color: PALETTE[rung % PALETTE.len()],
            points: vec![],
        })
        .collect();
    legend.push(Series { name: "untuned".into(), color: "#777", points: vec![] });
    for (i, dim) in dims.iter().enumerate() {
        let at = ((i % 2) as f64 * PANEL_W, (i / 2) as f64 * PANEL_H);
        let (left, top, w, h) = (at.0 + PLOT.0, at.1 + PLOT.1, PLOT.2, PLOT.3);
        let x = knob_axis(dim, rows);
        let title = format!("validation accuracy against {}", dim.knob);
        let _ = write!(
            svg,
            r#"<text x="{left:.2}" y="{:.2}" font-weight="bold" font-size="13">{}</text>"#,
            at.1 + 20.0,
            escape(&title)
        );
        axes_svg(&mut svg, (left, top), (w, h), &x, &y, (dim.knob.as_str(), "validation accuracy"));
        if let Some(fy) = y.frac(untuned_acc) {
            let py = top + h - fy * h;
            let _ = write!(
                svg,
                r##"<line x1="{left:.2}" y1="{py:.2}" x2="{:.2}" y2="{py:.2}" stroke="#777" stroke-dasharray="5,4"/>"##,
                left + w
            );
        }
        for row in rows {
            let Some((_, value)) = row.knobs.iter().find(|(k, _)| *k == dim.knob) else { continue };
            let point = dim.coordinate(value).and_then(|v| x.frac(v)).zip(y.frac(row.metric("val_acc")));
            let Some((fx, fy)) = point else { continue };
            let _ = write!(
                svg,
                r#"<circle cx="{:.2}" cy="{:.2}" r="3.5" fill="{}" fill-opacity="0.75"><title>trial {} ({} steps): {}={}, val_acc {:.4}</title></circle>"#,
                left + fx * w,
                top + h - fy * h,
                PALETTE[row.rung % PALETTE.len()],
                row.trial,
                row.steps,
                dim.knob,
                escape(&value.to_toml()),
                row.metric("val_acc")
            );
        }
        legend_svg(&mut svg, &legend, (left + w + 16.0, top));
    }
    svg.push_str("</svg>");
    svg
}

/// `importance.svg`: one bar per knob, the most important on top.
pub fn importance(shares: &[(KnobId, Importance)], trials: usize) -> String {
    let mut order: Vec<&(KnobId, Importance)> = shares.iter().collect();
    order.sort_by(|a, b| b.1.share.unwrap_or(-1.0).total_cmp(&a.1.share.unwrap_or(-1.0)).then(a.0.cmp(&b.0)));
    let k = order.len().max(1);
    let (left, top, w, bar) = (180.0, 34.0, 380.0, 28.0);
    let h = bar * k as f64;
    let (width, height) = (left + w + 60.0, top + h + 50.0);
    let mut svg = String::new();
    svg_open(&mut svg, width, height);
    let title = format!("knob importance: share of val_acc variance explained ({trials} trials)");
    let _ = write!(svg, r#"<text x="12" y="20" font-weight="bold" font-size="13">{}</text>"#, escape(&title));
    let slot = |rank: usize| (k - 1 - rank) as f64;
    let ticks = order.iter().enumerate().map(|(rank, (knob, _))| (slot(rank), knob.to_string())).collect();
    let y = Axis { min: -0.5, max: k as f64 - 0.5, log: false, ticks };
    let x = Axis::tight(0.0, 1.0);
    axes_svg(&mut svg, (left, top), (w, h), &x, &y, ("share of variance explained (epsilon squared)", ""));
    for (rank, (knob, imp)) in order.iter().enumerate() {
        let cy = top + h - y.frac(slot(rank)).unwrap_or(0.5) * h;
        let label = match (imp.share, imp.eta_squared) {
            (Some(share), Some(eta)) => {
                let _ = write!(
                    svg,
                    r##"<rect x="{left:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="#4878a8"><title>{knob}: {share:.3} (eta squared {eta:.3}, {} groups)</title></rect>"##,
                    cy - bar * 0.35,
                    (share * w).max(1.0),
                    bar * 0.7,
                    imp.groups
                );
                format!("{share:.2}")
            }
            _ => "n/a (too few trials)".into(),
        };
        let lx = left + imp.share.unwrap_or(0.0) * w + 6.0;
        let _ = write!(svg, r#"<text x="{lx:.2}" y="{:.2}">{}</text>"#, cy + 4.0, escape(&label));
    }
    svg.push_str("</svg>");
    svg
}
