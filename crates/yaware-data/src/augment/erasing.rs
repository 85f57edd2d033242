//! Random erasing (cutout) of boxes.

use super::{SampleRng, Transform, Volume, check_box_params, sample_box};
use crate::error::{Error, Result};

/// What an erased box is filled with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EraseValue {
    /// A constant (default 0).
    Number(f32),
    /// The box's mean, per channel.
    Mean,
    /// `N(0, 1)` noise per voxel.
    Random,
}

/// Erases `num_iterations` random boxes, the same box in every channel (the reference's
/// `RandomErasing`; defaults scale (0.02, 0.33), ratio (1, 3), one iteration, value 0).
///
/// Box sampling: a target size `U(scale)·volume`, three aspect ratios `exp(U(log r0, log r1))`
/// normalised to a product of 1, sides `round(∛size · a_i)`; a box that does not fit is
/// redrawn, up to 10 times, then tried once with ratio 1, then nothing is erased.
#[derive(Debug, Clone)]
pub struct RandomErasing {
    scale: (f64, f64),
    ratio: (f64, f64),
    num_iterations: usize,
    value: EraseValue,
}

impl Default for RandomErasing {
    fn default() -> Self {
        Self {
            scale: (0.02, 0.33),
            ratio: (1.0, 3.0),
            num_iterations: 1,
            value: EraseValue::Number(0.0),
        }
    }
}

impl RandomErasing {
    /// `scale` within `[0, 1]`, `ratio` > 0, at least one iteration.
    pub fn new(
        scale: (f64, f64),
        ratio: (f64, f64),
        num_iterations: usize,
        value: EraseValue,
    ) -> Result<Self> {
        check_box_params(scale, ratio, true)?;
        if num_iterations == 0 {
            return Err(Error::InvalidParam {
                name: "num_iterations",
                value: "0".into(),
                rule: "must be >= 1",
            });
        }
        if let EraseValue::Number(v) = value
            && !v.is_finite()
        {
            return Err(Error::InvalidParam {
                name: "value",
                value: v.to_string(),
                rule: "must be finite",
            });
        }
        Ok(Self {
            scale,
            ratio,
            num_iterations,
            value,
        })
    }
}

impl Transform for RandomErasing {
    fn apply(&self, mut volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        let dims = volume.spatial();
        let [_, h, w] = dims;
        for _ in 0..self.num_iterations {
            let Some((start, size)) = sample_box(dims, self.scale, self.ratio, rng) else {
                continue;
            };
            let n = size.iter().product::<usize>();
            if n == 0 {
                continue;
            }
            let index = |z: usize, y: usize, x: usize| {
                ((start[0] + z) * h + start[1] + y) * w + start[2] + x
            };
            for channel in volume.channels_mut() {
                let fill = match self.value {
                    EraseValue::Number(v) => Some(v),
                    EraseValue::Mean => {
                        let mut sum = 0.0f64;
                        for z in 0..size[0] {
                            for y in 0..size[1] {
                                for x in 0..size[2] {
                                    sum += channel[index(z, y, x)] as f64;
                                }
                            }
                        }
                        Some((sum / n as f64) as f32)
                    }
                    EraseValue::Random => None,
                };
                for z in 0..size[0] {
                    for y in 0..size[1] {
                        for x in 0..size[2] {
                            channel[index(z, y, x)] = fill.unwrap_or_else(|| rng.normal() as f32);
                        }
                    }
                }
            }
        }
        Ok(volume)
    }
}
