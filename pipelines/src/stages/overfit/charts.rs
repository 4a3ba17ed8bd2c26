//! The pictures of the `overfit` stage: loss and accuracy curves, per-layer health,
//! prediction dynamics, the first layer's weights and the learning rate per step.

use std::collections::BTreeMap;

use workspace::ExecError;

use super::{Dynamics, LayerStats, Series};
use crate::data::Prepared;
use crate::models::Model;
use crate::render::{charts_svg, heatmap_tiles, is_image, ColorMap, Panel, Scale, Series as Curve, PALETTE};
use crate::stages::common::err;

fn curve(steps: &[usize], values: &[f64], name: &str, color: &'static str) -> Curve {
    Curve { name: name.to_string(), color, points: steps.iter().zip(values).map(|(&s, &v)| (s as f64, v)).collect() }
}

/// `curves.svg`, `layers.svg` and `dynamics.svg`.
pub(super) fn charts(
    data: &Prepared,
    series: &Series,
    layers: &LayerStats,
    dynamics: &Dynamics,
) -> (String, String, String) {
    let curves = charts_svg(&[
        Panel::steps(
            "loss (full splits)",
            "cross-entropy (nats)",
            vec![
                curve(&series.step, &series.train_loss, "train", PALETTE[0]),
                curve(&series.step, &series.val_loss, "val", PALETTE[1]),
            ],
        )
        .log_y(),
        Panel::steps(
            "accuracy (full splits)",
            "accuracy",
            vec![
                curve(&series.step, &series.train_acc, "train", PALETTE[0]),
                curve(&series.step, &series.val_acc, "val", PALETTE[1]),
            ],
        ),
    ]);
    let per_layer = |map: &BTreeMap<String, Vec<f64>>| -> Vec<Curve> {
        map.iter().enumerate().map(|(i, (name, v))| curve(&layers.step, v, name, PALETTE[i % PALETTE.len()])).collect()
    };
    let layer_chart = charts_svg(&[
        Panel::steps("activation std (probe batch)", "std", per_layer(&layers.activation_std)),
        Panel::steps("dead units", "share of units", per_layer(&layers.dead_share)),
        Panel::steps("weight norm", "L2 norm", per_layer(&layers.weight_norm)),
        Panel::steps("gradient norm (last step)", "L2 norm", per_layer(&layers.grad_norm)).log_y(),
    ]);
    let class_name = |l: u32| data.meta.class_names.get(l as usize).cloned().unwrap_or_else(|| l.to_string());
    let true_prob: Vec<Curve> = dynamics
        .probs
        .iter()
        .zip(&dynamics.label)
        .enumerate()
        .map(|(e, (probs, &label))| Curve {
            name: format!("val {e} ({})", class_name(label)),
            color: PALETTE[e % PALETTE.len()],
            points: dynamics.step.iter().zip(probs).map(|(&s, p)| (s as f64, p[label as usize] as f64)).collect(),
        })
        .collect();
    let dynamics_chart = charts_svg(&[Panel::steps(
        "probability of the true class, tracked validation examples",
        "p(true class)",
        true_prob,
    )]);
    (curves, layer_chart, dynamics_chart)
}

/// The first layer's weights drawn in the input's shape, one tile per unit (image
/// data only).
pub(super) fn first_layer(data: &Prepared, model: &dyn Model) -> Result<Option<Vec<u8>>, ExecError> {
    let (true, Some((weights, shape))) = (is_image(&data.meta.shape), model.first_layer()) else {
        return Ok(None);
    };
    let shape = shape.unwrap_or_else(|| data.meta.shape.clone());
    let rows: Vec<Vec<f32>> = weights.to_vec2().map_err(err("weights"))?;
    let bound = rows.iter().flatten().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let cells: Vec<(&[f32], String)> = rows.iter().enumerate().map(|(i, r)| (r.as_slice(), format!("{i}"))).collect();
    let scale = Scale { low: -bound, high: bound };
    Ok(Some(heatmap_tiles(&cells, &shape, scale, ColorMap::Diverging, 16, 64, "weight")))
}

/// `lr.svg`: the learning rate of every step (at most about 2,000 points drawn).
pub(super) fn lr_chart(lr: &[f64]) -> String {
    let stride = lr.len().div_ceil(2000).max(1);
    let mut points: Vec<(f64, f64)> = lr.iter().enumerate().step_by(stride).map(|(t, &v)| (t as f64, v)).collect();
    if let (Some(&last), true) = (lr.last(), !lr.len().saturating_sub(1).is_multiple_of(stride)) {
        points.push(((lr.len() - 1) as f64, last));
    }
    let line = Curve { name: "learning rate".into(), color: PALETTE[0], points };
    charts_svg(&[Panel::steps("learning rate used at each step", "learning rate", vec![line])])
}
