//! Flip, Gaussian noise, z-normalisation and centred crop-or-pad.

use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;

use super::{SampleRng, Transform, Volume, check_probability, check_range};
use crate::error::{Error, Result};

/// Flips each listed spatial axis (0 = D, 1 = H, 2 = W) independently with probability
/// `flip_probability` (the reference's `RandomFlip`).
#[derive(Debug, Clone)]
pub struct RandomFlip {
    axes: Vec<usize>,
    flip_probability: f64,
}

impl RandomFlip {
    /// Axes in `{0, 1, 2}`, probability in `[0, 1]`.
    pub fn new(axes: Vec<usize>, flip_probability: f64) -> Result<Self> {
        if let Some(&a) = axes.iter().find(|&&a| a > 2) {
            return Err(Error::InvalidParam {
                name: "axes",
                value: a.to_string(),
                rule: "spatial axes are 0, 1 or 2",
            });
        }
        check_probability("flip_probability", flip_probability)?;
        Ok(Self {
            axes,
            flip_probability,
        })
    }
}

/// Reverses spatial axis `axis` (0 = D, 1 = H, 2 = W) in place.
pub(super) fn flip_axis(v: &mut Volume, axis: usize) {
    let [_, d, h, w] = v.shape();
    let dims = [d, h, w];
    // Strides of the spatial axes within a channel.
    let strides = [h * w, w, 1];
    let (n, stride) = (dims[axis], strides[axis]);
    let block = n * stride;
    for channel in v.channels_mut() {
        for slab in channel.chunks_exact_mut(block) {
            if stride == 1 {
                slab.reverse();
                continue;
            }
            // Swap whole rows / planes, first with last.
            for i in 0..n / 2 {
                let (lo, hi) = slab.split_at_mut((n - 1 - i) * stride);
                lo[i * stride..(i + 1) * stride].swap_with_slice(&mut hi[..stride]);
            }
        }
    }
}

impl Transform for RandomFlip {
    fn apply(&self, mut volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        for &axis in &self.axes {
            if rng.uniform() < self.flip_probability {
                flip_axis(&mut volume, axis);
            }
        }
        Ok(volume)
    }
}

/// Adds `N(μ, σ)` noise to every voxel, with `μ ~ U(mean)` and `σ ~ U(std)` drawn per call (the
/// reference's `RandomGaussianNoise`; defaults mean 0, std in (0.1, 1.0)).
#[derive(Debug, Clone)]
pub struct RandomGaussianNoise {
    pub(crate) mean: (f64, f64),
    pub(crate) std: (f64, f64),
}

impl RandomGaussianNoise {
    /// Ranges `(low, high)`; the std range must be ≥ 0.
    pub fn new(mean: (f64, f64), std: (f64, f64)) -> Result<Self> {
        check_range("mean", mean, None)?;
        check_range("std", std, Some(0.0))?;
        Ok(Self { mean, std })
    }
}

impl Default for RandomGaussianNoise {
    fn default() -> Self {
        Self {
            mean: (0.0, 0.0),
            std: (0.1, 1.0),
        }
    }
}

impl Transform for RandomGaussianNoise {
    fn apply(&self, mut volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        let mu = rng.range(self.mean.0, self.mean.1);
        let sigma = rng.range(self.std.0, self.std.1);
        // Chunks draw from their own streams, derived from one number of the sample's stream:
        // parallel, and the same whatever the number of threads.
        let base = rng.next_u64();
        volume
            .data_mut()
            .par_chunks_mut(NOISE_CHUNK)
            .enumerate()
            .for_each(|(i, chunk)| {
                let mut r = SampleRng::new(base, i as u64, 0, 0);
                for pair in chunk.chunks_mut(2) {
                    let (z0, z1) = r.normal_pair();
                    pair[0] += (mu + sigma * z0) as f32;
                    if let Some(x) = pair.get_mut(1) {
                        *x += (mu + sigma * z1) as f32;
                    }
                }
            });
        Ok(volume)
    }
}

/// Voxels per independently seeded noise stream.
const NOISE_CHUNK: usize = 1 << 16;

/// A voxel predicate selecting the voxels z-normalisation takes its statistics from (e.g.
/// `|x| x > 0.0` for a brain mask).
pub type VoxelMask = Arc<dyn Fn(f32) -> bool + Send + Sync>;

/// Per channel `(x − μ)/(σ + eps)`, with μ and σ over the masked voxels (all by default).
///
/// σ is the population standard deviation (ddof = 0), as the reference's numpy backend; its
/// torch backend uses ddof = 1 — the two disagree, and we document the one we use.
#[derive(Clone)]
pub struct ZNormalization {
    eps: f64,
    mask: Option<VoxelMask>,
}

impl fmt::Debug for ZNormalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZNormalization")
            .field("eps", &self.eps)
            .field("masked", &self.mask.is_some())
            .finish()
    }
}

impl Default for ZNormalization {
    /// eps = 1e-8, no mask.
    fn default() -> Self {
        Self {
            eps: 1e-8,
            mask: None,
        }
    }
}

impl ZNormalization {
    /// Statistics over the voxels where `mask` holds.
    pub fn with_mask(mask: VoxelMask) -> Self {
        Self {
            mask: Some(mask),
            ..Default::default()
        }
    }
}

impl Transform for ZNormalization {
    fn apply(&self, mut volume: Volume, _rng: &mut SampleRng) -> Result<Volume> {
        for channel in volume.channels_mut() {
            let selected = |x: &f32| self.mask.as_ref().is_none_or(|m| m(*x));
            let (mut n, mut sum) = (0usize, 0.0f64);
            for x in channel.iter().filter(|x| selected(x)) {
                n += 1;
                sum += *x as f64;
            }
            if n == 0 {
                return Err(Error::Volume(
                    "z-normalisation: the mask selects no voxel".into(),
                ));
            }
            let mean = sum / n as f64;
            let var = channel
                .iter()
                .filter(|x| selected(x))
                .map(|&x| (x as f64 - mean).powi(2))
                .sum::<f64>()
                / n as f64;
            let scale = 1.0 / (var.sqrt() + self.eps);
            for x in channel.iter_mut() {
                *x = ((*x as f64 - mean) * scale) as f32;
            }
        }
        Ok(volume)
    }
}

/// Centres the volume in `target_shape` (D, H, W): pads with `value` (before = (out − in)/2,
/// after = the rest) and crops (start = (in − out)/2), per axis.
#[derive(Debug, Clone)]
pub struct CropOrPad {
    target_shape: [usize; 3],
    value: f32,
}

impl CropOrPad {
    /// A non-empty target shape, constant padding with `value`.
    pub fn new(target_shape: [usize; 3], value: f32) -> Result<Self> {
        if target_shape.contains(&0) {
            return Err(Error::InvalidParam {
                name: "target_shape",
                value: format!("{target_shape:?}"),
                rule: "every size must be > 0",
            });
        }
        Ok(Self {
            target_shape,
            value,
        })
    }
}

impl Transform for CropOrPad {
    fn apply(&self, volume: Volume, _rng: &mut SampleRng) -> Result<Volume> {
        let [c, d, h, w] = volume.shape();
        let [od, oh, ow] = self.target_shape;
        // Offset of the output origin in input coordinates (negative when padding).
        let off = |inp: usize, out: usize| -> isize {
            if out >= inp {
                -(((out - inp) / 2) as isize)
            } else {
                ((inp - out) / 2) as isize
            }
        };
        let (fd, fh, fw) = (off(d, od), off(h, oh), off(w, ow));
        let mut data = vec![self.value; c * od * oh * ow];
        for (ci, src) in volume.channels().enumerate() {
            let dst = &mut data[ci * od * oh * ow..(ci + 1) * od * oh * ow];
            for z in 0..od {
                let sz = z as isize + fd;
                if sz < 0 || sz >= d as isize {
                    continue;
                }
                for y in 0..oh {
                    let sy = y as isize + fh;
                    if sy < 0 || sy >= h as isize {
                        continue;
                    }
                    // The run [x0, x1) of the output row that lies inside the input.
                    let x0 = (-fw).max(0) as usize;
                    let x1 = (w as isize - fw).min(ow as isize).max(x0 as isize) as usize;
                    let out_row = (z * oh + y) * ow;
                    let in_row = (sz as usize * h + sy as usize) * w;
                    let sx0 = (x0 as isize + fw) as usize;
                    dst[out_row + x0..out_row + x1]
                        .copy_from_slice(&src[in_row + sx0..in_row + sx0 + (x1 - x0)]);
                }
            }
        }
        Volume::new([c, od, oh, ow], data)
    }
}
