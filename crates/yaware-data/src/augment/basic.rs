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

/// How [`CropOrPad`] fills the voxels it adds: numpy's `np.pad` modes, applied axis by axis
/// (so corners combine the modes of their axes as numpy's do). Shown on `a b c d` padded by 2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PadMode {
    /// A constant (`constant`, `constant_values=value`): `v v | a b c d | v v`.
    Constant(f32),
    /// The edge voxel repeated (`edge`): `a a | a b c d | d d`.
    Edge,
    /// Mirrored about the edge voxel, which is not repeated (`reflect`, the default
    /// `reflect_type="even"`): `c b | a b c d | c b`; periodic beyond one reflection, and like
    /// `edge` on an axis of size 1, as numpy.
    Reflect,
    /// Mirrored about the edge, which is repeated (`symmetric`): `b a | a b c d | d c`.
    Symmetric,
    /// Periodic (`wrap`): `c d | a b c d | a b`.
    Wrap,
}

impl PadMode {
    /// The input index giving output voxel `s` (an input coordinate, possibly outside
    /// `[0, n)`), or `None` for the constant.
    fn source(self, s: isize, n: usize) -> Option<usize> {
        let n = n as isize;
        if (0..n).contains(&s) {
            return Some(s as usize);
        }
        let i = match self {
            PadMode::Constant(_) => return None,
            PadMode::Edge => s.clamp(0, n - 1),
            PadMode::Reflect if n == 1 => 0,
            PadMode::Reflect => {
                let period = 2 * (n - 1);
                let m = s.rem_euclid(period);
                if m < n { m } else { period - m }
            }
            PadMode::Symmetric => {
                let m = s.rem_euclid(2 * n);
                if m < n { m } else { 2 * n - 1 - m }
            }
            PadMode::Wrap => s.rem_euclid(n),
        };
        Some(i as usize)
    }
}

/// Centres the volume in `target_shape` (D, H, W), per axis: pads (before = (out − in)/2,
/// after = the rest) as its [`PadMode`] says, and crops (start = (in − out)/2) — the
/// reference's `CropOrPad(target_shape, padding_mode, constant_values)`.
#[derive(Debug, Clone)]
pub struct CropOrPad {
    target_shape: [usize; 3],
    mode: PadMode,
}

impl CropOrPad {
    /// A non-empty target shape, constant padding with `value`.
    pub fn new(target_shape: [usize; 3], value: f32) -> Result<Self> {
        Self::with_mode(target_shape, PadMode::Constant(value))
    }

    /// A non-empty target shape, padding as `mode` says.
    pub fn with_mode(target_shape: [usize; 3], mode: PadMode) -> Result<Self> {
        if target_shape.contains(&0) {
            return Err(Error::InvalidParam {
                name: "target_shape",
                value: format!("{target_shape:?}"),
                rule: "every size must be > 0",
            });
        }
        Ok(Self { target_shape, mode })
    }
}

/// For each output index along an axis, the input index it copies (`None`: the constant).
/// Offset of the output origin in input coordinates along an axis (negative when padding).
fn centre_offset(inp: usize, out: usize) -> isize {
    if out >= inp {
        -(((out - inp) / 2) as isize)
    } else {
        ((inp - out) / 2) as isize
    }
}

/// For each output index along an axis, the input index it copies (`None`: the constant).
fn axis_map(inp: usize, out: usize, mode: PadMode) -> Vec<Option<usize>> {
    let off = centre_offset(inp, out);
    (0..out)
        .map(|o| mode.source(o as isize + off, inp))
        .collect()
}

impl Transform for CropOrPad {
    fn apply(&self, volume: Volume, _rng: &mut SampleRng) -> Result<Volume> {
        let [c, d, h, w] = volume.shape();
        let [od, oh, ow] = self.target_shape;
        if [d, h, w] == self.target_shape {
            return Ok(volume);
        }
        let value = match self.mode {
            PadMode::Constant(v) => v,
            _ => 0.0,
        };
        let (md, mh, mw) = (
            axis_map(d, od, self.mode),
            axis_map(h, oh, self.mode),
            axis_map(w, ow, self.mode),
        );
        // The output run [x0, x1) inside the input along W, copied row by row from sx0.
        let fw = centre_offset(w, ow);
        let x0 = (-fw).max(0) as usize;
        let x1 = (w as isize - fw).clamp(x0 as isize, ow as isize) as usize;
        let sx0 = (x0 as isize + fw) as usize;
        let plane = oh * ow;
        // Zeroed memory is mapped lazily: each output page is faulted in once, by the thread
        // that writes its plane.
        let mut data = vec![0.0f32; c * od * plane];
        data.par_chunks_mut(plane).enumerate().for_each(|(p, out)| {
            let (ci, z) = (p / od, p % od);
            let src = &volume.data()[ci * d * h * w..(ci + 1) * d * h * w];
            for (y, row) in out.chunks_exact_mut(ow).enumerate() {
                let (Some(sz), Some(sy)) = (md[z], mh[y]) else {
                    row.fill(value);
                    continue;
                };
                let src_row = &src[(sz * h + sy) * w..][..w];
                row[x0..x1].copy_from_slice(&src_row[sx0..sx0 + (x1 - x0)]);
                for x in (0..x0).chain(x1..ow) {
                    row[x] = mw[x].map_or(value, |sx| src_row[sx]);
                }
            }
        });
        Volume::new([c, od, oh, ow], data)
    }
}
