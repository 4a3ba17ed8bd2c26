//! Data augmentation, applied per training batch to the flattened rows using the
//! data's shape: for images a random crop after zero padding, a left-right flip, a
//! small sub-pixel translation and rotation (one bilinear resampling), then cutout;
//! for any data Gaussian input noise.
//!
//! Geometry works on raw pixel values (the training normalisation undone, so padding
//! and the area a rotation uncovers are black, 0, as in the raw image); cutout and
//! noise work on the normalised values the model sees (cutout sets the training mean,
//! 0). Every draw comes from [`Rng`] keyed by `(seed, augment/<op>/step=<t>)`, one
//! stream per operation, so a batch is a pure function of the seed and the step
//! (a resumed run draws the same), and enabling one operation leaves the others'
//! draws unchanged.

use candle_core::Tensor;

use crate::models::image_shape;
use crate::rng::Rng;

/// The `augment.*` knobs. All zero / false: no augmentation (the batch is untouched).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AugmentSpec {
    /// Zero padding before a random crop back to the original size (pixels).
    pub crop_pad: usize,
    pub hflip: bool,
    /// Largest shift as a fraction of the height and width.
    pub translate: f64,
    /// Largest rotation, degrees either way.
    pub rotate: f64,
    /// Side of the zeroed square (pixels).
    pub cutout: usize,
    /// Standard deviation of the additive Gaussian noise, normalised units.
    pub noise: f64,
}

impl AugmentSpec {
    pub fn is_identity(&self) -> bool {
        *self == AugmentSpec::default()
    }

    /// The first image-only operation that is switched on, as its knob name.
    fn image_only(&self) -> Option<&'static str> {
        [
            (self.crop_pad > 0, "augment.crop_pad"),
            (self.hflip, "augment.hflip"),
            (self.translate > 0.0, "augment.translate"),
            (self.rotate > 0.0, "augment.rotate"),
            (self.cutout > 0, "augment.cutout"),
        ]
        .into_iter()
        .find_map(|(on, name)| on.then_some(name))
    }

    fn geometric(&self) -> bool {
        self.crop_pad > 0 || self.hflip || self.translate > 0.0 || self.rotate > 0.0
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AugmentError {
    #[error("{knob} needs image data ([C, H, W] or [H, W]), but examples have shape {shape:?}; use augment.noise")]
    NotImages { knob: &'static str, shape: Vec<usize> },
}

/// Augmentation of one dataset: the spec, the example shape and the normalisation.
#[derive(Debug, Clone)]
pub struct Augment {
    spec: AugmentSpec,
    image: Option<(usize, usize, usize)>,
    n_features: usize,
    mean: Vec<f32>,
    std: Vec<f32>,
    seed: u64,
}

/// One example's geometric draw: output pixel -> source pixel.
struct Warp {
    shift: (f64, f64),
    flip: bool,
    /// cos and sin of the rotation.
    rotation: (f64, f64),
}

impl Augment {
    /// `mean` and `std` are the training normalisation (per feature), `shape` one example's.
    pub fn new(
        spec: AugmentSpec,
        shape: &[usize],
        mean: &[f32],
        std: &[f32],
        seed: u64,
    ) -> Result<Augment, AugmentError> {
        let image = image_shape(shape);
        if let (None, Some(knob)) = (image, spec.image_only()) {
            return Err(AugmentError::NotImages { knob, shape: shape.to_vec() });
        }
        let n_features = shape.iter().product();
        Ok(Augment { spec, image, n_features, mean: mean.to_vec(), std: std.to_vec(), seed })
    }

    pub fn is_identity(&self) -> bool {
        self.spec.is_identity()
    }

    /// The batch `x [batch, features]` of training step `step`, augmented.
    pub fn apply(&self, x: &Tensor, step: usize) -> candle_core::Result<Tensor> {
        if self.is_identity() {
            return Ok(x.clone());
        }
        let mut values = x.flatten_all()?.to_vec1::<f32>()?;
        self.apply_rows(&mut values, step);
        Tensor::from_vec(values, x.dims(), x.device())
    }

    /// Augments the rows of `x` (each `n_features` long) in place.
    pub fn apply_rows(&self, x: &mut [f32], step: usize) {
        if self.is_identity() || self.n_features == 0 {
            return;
        }
        let stream = |op: &str| Rng::new(self.seed, &format!("augment/{op}/step={step}"));
        let (mut geometry, mut cutout, mut noise) = (stream("geometry"), stream("cutout"), stream("noise"));
        let mut scratch = vec![0f32; self.n_features];
        for row in x.chunks_mut(self.n_features) {
            if let Some(image) = self.image {
                if self.spec.geometric() {
                    let warp = self.draw_warp(&mut geometry, image);
                    self.warp(row, &mut scratch, image, &warp);
                }
                if self.spec.cutout > 0 {
                    self.cutout(row, image, &mut cutout);
                }
            }
            if self.spec.noise > 0.0 {
                for value in row.iter_mut() {
                    *value += (noise.normal() * self.spec.noise) as f32;
                }
            }
        }
    }

    fn draw_warp(&self, rng: &mut Rng, (_, h, w): (usize, usize, usize)) -> Warp {
        let s = &self.spec;
        let pad = s.crop_pad as u64;
        // Cropping an HxW window at offset (oy, ox) of the padded image shows source
        // pixel (i + oy - pad, j + ox - pad) at (i, j).
        let mut shift = if pad > 0 {
            (rng.below(2 * pad + 1) as f64 - pad as f64, rng.below(2 * pad + 1) as f64 - pad as f64)
        } else {
            (0.0, 0.0)
        };
        let flip = s.hflip && rng.below(2) == 1;
        if s.translate > 0.0 {
            shift.0 += (rng.uniform() * 2.0 - 1.0) * s.translate * h as f64;
            shift.1 += (rng.uniform() * 2.0 - 1.0) * s.translate * w as f64;
        }
        let rotation = if s.rotate > 0.0 {
            let angle = (rng.uniform() * 2.0 - 1.0) * s.rotate.to_radians();
            (angle.cos(), angle.sin())
        } else {
            (1.0, 0.0)
        };
        Warp { shift, flip, rotation }
    }

    /// Resamples one example: raw values, warped with bilinear interpolation and zero
    /// outside the image, normalised again. Integer shifts and flips copy exactly.
    fn warp(&self, row: &mut [f32], raw: &mut [f32], (c, h, w): (usize, usize, usize), warp: &Warp) {
        for (i, (value, (m, s))) in row.iter().zip(self.mean.iter().zip(&self.std)).enumerate() {
            raw[i] = value * s + m;
        }
        let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
        let (cos, sin) = warp.rotation;
        let at = |plane: &[f32], y: isize, x: isize| -> f64 {
            if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                0.0
            } else {
                plane[y as usize * w + x as usize] as f64
            }
        };
        for channel in 0..c {
            let plane = &raw[channel * h * w..(channel + 1) * h * w];
            for i in 0..h {
                for j in 0..w {
                    let j_out = if warp.flip { w - 1 - j } else { j };
                    // Rotate the output position about the centre, then shift.
                    let (dy, dx) = (i as f64 - cy, j_out as f64 - cx);
                    let y = cos * dy - sin * dx + cy + warp.shift.0;
                    let x = sin * dy + cos * dx + cx + warp.shift.1;
                    let (y0, x0) = (y.floor(), x.floor());
                    let (fy, fx) = (y - y0, x - x0);
                    let (y0, x0) = (y0 as isize, x0 as isize);
                    let mut v = at(plane, y0, x0) * (1.0 - fy) * (1.0 - fx);
                    if fx > 0.0 {
                        v += at(plane, y0, x0 + 1) * (1.0 - fy) * fx;
                    }
                    if fy > 0.0 {
                        v += at(plane, y0 + 1, x0) * fy * (1.0 - fx);
                        if fx > 0.0 {
                            v += at(plane, y0 + 1, x0 + 1) * fy * fx;
                        }
                    }
                    let k = channel * h * w + i * w + j;
                    row[k] = (v as f32 - self.mean[k]) / self.std[k];
                }
            }
        }
    }

    /// Sets a `cutout x cutout` square (clipped at the border) to 0, the training mean.
    fn cutout(&self, row: &mut [f32], (c, h, w): (usize, usize, usize), rng: &mut Rng) {
        let side = self.spec.cutout;
        let (cy, cx) = (rng.below(h as u64) as usize, rng.below(w as u64) as usize);
        let (y0, x0) = (cy.saturating_sub(side / 2), cx.saturating_sub(side / 2));
        let (y1, x1) = ((cy + side.div_ceil(2)).min(h), (cx + side.div_ceil(2)).min(w));
        for channel in 0..c {
            for y in y0..y1 {
                row[channel * h * w + y * w + x0..channel * h * w + y * w + x1].fill(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two 1x4x4 images with values 1..=16 and 17..=32, no normalisation.
    fn images() -> (Vec<f32>, Vec<usize>) {
        ((1..=32).map(|v| v as f32).collect(), vec![1, 4, 4])
    }

    fn augment(spec: AugmentSpec, seed: u64) -> Augment {
        let (_, shape) = images();
        Augment::new(spec, &shape, &[0.0; 16], &[1.0; 16], seed).unwrap()
    }

    fn run(spec: AugmentSpec, seed: u64, step: usize) -> Vec<f32> {
        let (mut x, _) = images();
        augment(spec, seed).apply_rows(&mut x, step);
        x
    }

    fn every_op() -> AugmentSpec {
        AugmentSpec { crop_pad: 1, hflip: true, translate: 0.1, rotate: 15.0, cutout: 2, noise: 0.1 }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_or_step_other_bytes() {
        let a = run(every_op(), 3, 7);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&run(every_op(), 3, 7)));
        assert_ne!(bits(&a), bits(&run(every_op(), 4, 7)), "another seed");
        assert_ne!(bits(&a), bits(&run(every_op(), 3, 8)), "another step");
        assert_ne!(a, images().0, "it changed the batch");
    }

    #[test]
    fn tensor_path_matches_rows() {
        let (x, _) = images();
        let tensor = Tensor::from_vec(x, (2, 16), &candle_core::Device::Cpu).unwrap();
        let out = augment(every_op(), 1).apply(&tensor, 5).unwrap();
        assert_eq!(out.flatten_all().unwrap().to_vec1::<f32>().unwrap(), run(every_op(), 1, 5));
    }

    #[test]
    fn crop_is_an_exact_integer_shift_with_zero_padding() {
        // Over many steps every shift in -1..=1 shows up; each output is the input
        // shifted by whole pixels (exact values), zeros where it left the image.
        let spec = AugmentSpec { crop_pad: 1, ..AugmentSpec::default() };
        let (input, _) = images();
        let mut seen = std::collections::BTreeSet::new();
        for step in 0..40 {
            let out = run(spec.clone(), 0, step);
            let image = &out[..16];
            let shifted = |dy: isize, dx: isize| -> Vec<f32> {
                (0..16)
                    .map(|k| {
                        let (y, x) = ((k / 4) as isize + dy, (k % 4) as isize + dx);
                        if (0..4).contains(&y) && (0..4).contains(&x) {
                            input[(y * 4 + x) as usize]
                        } else {
                            0.0
                        }
                    })
                    .collect()
            };
            let found =
                (-1..=1).flat_map(|dy| (-1..=1).map(move |dx| (dy, dx))).find(|&(dy, dx)| shifted(dy, dx) == image);
            seen.insert(found.expect("an integer shift"));
        }
        assert_eq!(seen.len(), 9, "{seen:?}");
    }

    #[test]
    fn flip_mirrors_rows_and_cutout_zeroes_a_square() {
        let flipped: Vec<Vec<f32>> =
            (0..20).map(|step| run(AugmentSpec { hflip: true, ..AugmentSpec::default() }, 0, step)).collect();
        let (input, _) = images();
        let mirror: Vec<f32> = (0..16).map(|k| input[(k / 4) * 4 + 3 - k % 4]).collect();
        assert!(flipped.iter().any(|x| x[..16] == mirror[..]) && flipped.iter().any(|x| x[..16] == input[..16]));
        let cut = run(AugmentSpec { cutout: 2, ..AugmentSpec::default() }, 0, 0);
        let zeros = cut[..16].iter().filter(|v| **v == 0.0).count();
        assert!((1..=4).contains(&zeros), "{cut:?}");
        assert!(cut[..16].iter().zip(&input).all(|(a, b)| *a == 0.0 || a == b));
    }

    #[test]
    fn geometry_pads_with_raw_black_in_normalised_units() {
        // mean 10, std 2: a raw 0 pixel is -5 after normalisation.
        let spec = AugmentSpec { crop_pad: 2, ..AugmentSpec::default() };
        let aug = Augment::new(spec, &[4, 4], &[10.0; 16], &[2.0; 16], 0).unwrap();
        let mut x = vec![1.0f32; 16 * 30];
        aug.apply_rows(&mut x, 0);
        assert!(x.contains(&-5.0) && x.contains(&1.0));
        assert!(x.iter().all(|v| *v == -5.0 || *v == 1.0), "integer shifts keep exact values");
    }

    #[test]
    fn tabular_data_takes_noise_only() {
        let err = Augment::new(AugmentSpec { crop_pad: 1, ..AugmentSpec::default() }, &[5], &[0.0; 5], &[1.0; 5], 0);
        assert!(matches!(err, Err(AugmentError::NotImages { knob: "augment.crop_pad", .. })));
        let noisy =
            Augment::new(AugmentSpec { noise: 0.5, ..AugmentSpec::default() }, &[5], &[0.0; 5], &[1.0; 5], 0).unwrap();
        let mut x = vec![0f32; 10];
        noisy.apply_rows(&mut x, 0);
        assert!(x.iter().all(|v| *v != 0.0));
    }
}
