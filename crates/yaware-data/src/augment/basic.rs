//! Flip, Gaussian noise, z-normalisation and centred crop-or-pad.

use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;

use super::gather::{AxisMap, gather};
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

/// Swaps rows `a` and `b`, reversing both if `reverse`.
fn swap_rows(a: &mut [f32], b: &mut [f32], reverse: bool) {
    if reverse {
        for (x, y) in a.iter_mut().zip(b.iter_mut().rev()) {
            std::mem::swap(x, y);
        }
    } else {
        a.swap_with_slice(b);
    }
}

/// Flips one plane `(H, W)` in place along H and / or W.
fn flip_plane(p: &mut [f32], w: usize, flip_h: bool, flip_w: bool) {
    let h = p.len() / w;
    if flip_h {
        let (top, bottom) = p.split_at_mut(h / 2 * w);
        let bottom_len = bottom.len();
        // Row y pairs with row h − 1 − y; the middle row of an odd h stays (reversed if W).
        let (middle, bottom) = bottom.split_at_mut(bottom_len - h / 2 * w);
        for (a, b) in top
            .chunks_exact_mut(w)
            .zip(bottom.chunks_exact_mut(w).rev())
        {
            swap_rows(a, b, flip_w);
        }
        if flip_w {
            middle.reverse();
        }
    } else if flip_w {
        p.chunks_exact_mut(w).for_each(<[f32]>::reverse);
    }
}

/// Swaps planes `a` and `b` `(H, W)`, flipping both along H and / or W.
fn swap_planes(a: &mut [f32], b: &mut [f32], w: usize, flip_h: bool, flip_w: bool) {
    let rows_b: Vec<&mut [f32]> = b.chunks_exact_mut(w).collect();
    let mut rows_b = rows_b;
    if flip_h {
        rows_b.reverse();
    }
    for (ra, rb) in a.chunks_exact_mut(w).zip(rows_b) {
        swap_rows(ra, rb, flip_w);
    }
}

/// Reverses the spatial axes marked in `axes` (D, H, W) in place, in one pass over the voxels,
/// planes in parallel.
pub(super) fn flip_axes(v: &mut Volume, axes: [bool; 3]) {
    let [_, d, h, w] = v.shape();
    let [flip_d, flip_h, flip_w] = axes;
    let plane = h * w;
    if plane == 0 || !(flip_d || flip_h || flip_w) {
        return;
    }
    for channel in v.channels_mut() {
        if flip_d {
            // Plane z pairs with plane d − 1 − z; the middle plane of an odd d flips alone.
            let (lo, rest) = channel.split_at_mut(d / 2 * plane);
            let (middle, hi) = rest.split_at_mut(rest.len() - d / 2 * plane);
            lo.par_chunks_mut(plane)
                .zip(hi.par_chunks_mut(plane).rev())
                .for_each(|(a, b)| swap_planes(a, b, w, flip_h, flip_w));
            flip_plane(middle, w, flip_h, flip_w);
        } else {
            channel
                .par_chunks_mut(plane)
                .for_each(|p| flip_plane(p, w, flip_h, flip_w));
        }
    }
}

/// Reverses spatial axis `axis` (0 = D, 1 = H, 2 = W) in place.
pub(super) fn flip_axis(v: &mut Volume, axis: usize) {
    let mut axes = [false; 3];
    axes[axis] = true;
    flip_axes(v, axes);
}

impl Transform for RandomFlip {
    fn apply(&self, mut volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        // An axis listed twice flips twice (the identity), as the reference's loop does.
        let mut axes = [false; 3];
        for &axis in &self.axes {
            if rng.uniform() < self.flip_probability {
                axes[axis] ^= true;
            }
        }
        flip_axes(&mut volume, axes);
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

/// `Σ f(x)` over `xs` in f64, in 8 interleaved accumulators (vectorised; a fixed order).
fn lane_sum(xs: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x as f64);
        }
    }
    let tail_sum: f64 = tail.iter().map(|&x| f(x as f64)).sum();
    acc.iter().sum::<f64>() + tail_sum
}

/// Voxels per partial sum of the z-normalisation statistics: the sums are added in a fixed
/// order, so the result does not depend on the number of threads.
const STATS_CHUNK: usize = 1 << 15;

impl Transform for ZNormalization {
    fn apply(&self, mut volume: Volume, _rng: &mut SampleRng) -> Result<Volume> {
        for channel in volume.channels_mut() {
            let mask = self.mask.as_deref();
            // Partial (count, sum) per chunk, in parallel, added in order.
            let partial: Vec<(usize, f64)> = channel
                .par_chunks(STATS_CHUNK)
                .map(|c| match mask {
                    None => (c.len(), lane_sum(c, |x| x)),
                    Some(m) => c
                        .iter()
                        .filter(|&&x| m(x))
                        .fold((0, 0.0), |(n, s), &x| (n + 1, s + x as f64)),
                })
                .collect();
            let (n, sum) = partial
                .iter()
                .fold((0, 0.0), |(n, s), &(k, p)| (n + k, s + p));
            if n == 0 {
                return Err(Error::Volume(
                    "z-normalisation: the mask selects no voxel".into(),
                ));
            }
            let mean = sum / n as f64;
            let var = channel
                .par_chunks(STATS_CHUNK)
                .map(|c| match mask {
                    None => lane_sum(c, |x| (x - mean) * (x - mean)),
                    Some(m) => c
                        .iter()
                        .filter(|&&x| m(x))
                        .map(|&x| (x as f64 - mean).powi(2))
                        .sum::<f64>(),
                })
                .collect::<Vec<f64>>()
                .into_iter()
                .sum::<f64>()
                / n as f64;
            let scale = 1.0 / (var.sqrt() + self.eps);
            channel.par_chunks_mut(STATS_CHUNK).for_each(|c| {
                for x in c {
                    *x = ((*x as f64 - mean) * scale) as f32;
                }
            });
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
        if n == 0 {
            return None;
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

impl CropOrPad {
    /// The output-to-input index map of each axis: a centred crop, or a centred pad whose
    /// margins read the input as the mode says.
    fn axis_maps(&self, input: [usize; 3]) -> [AxisMap; 3] {
        [0, 1, 2].map(|axis| {
            let (n, out) = (input[axis], self.target_shape[axis]);
            let index = if out <= n {
                let start = (n - out) / 2;
                (start..start + out).map(Some).collect()
            } else {
                let before = (out - n) / 2;
                (0..out)
                    .map(|o| self.mode.source(o as isize - before as isize, n))
                    .collect()
            };
            AxisMap {
                source_axis: axis,
                index,
            }
        })
    }
}

impl Transform for CropOrPad {
    fn apply(&self, volume: Volume, _rng: &mut SampleRng) -> Result<Volume> {
        let input = volume.spatial();
        if input == self.target_shape {
            return Ok(volume);
        }
        // One pass: each output row is filled or copied (runs of the input row) where it lands.
        // The axes are independent, so the corners combine the modes of their axes as numpy's
        // axis-by-axis padding does.
        let fill = match self.mode {
            PadMode::Constant(v) => v,
            _ => 0.0,
        };
        let maps = self.axis_maps(input);
        Ok(gather(volume, self.target_shape, &maps, fill))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    // The previous implementation (in place, axis by axis), kept as a reference.
    /// Crops or pads axis `axis` (1 = D, 2 = H, 3 = W) of the `(C, D, H, W)` voxels `buf` to
    /// `out`, centred, in place: a crop moves blocks towards the start (forwards), a pad moves the
    /// input to its centred place (backwards) and fills the margins from it, so no other buffer is
    /// allocated (fresh big allocations page-fault; this also keeps the input's pages warm).
    pub(crate) fn crop_or_pad_axis(
        buf: &mut Vec<f32>,
        shape: &mut [usize; 4],
        axis: usize,
        out: usize,
        mode: PadMode,
    ) {
        let n = shape[axis];
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        if out < n {
            let start = (n - out) / 2;
            // Block `o` goes to `o·out ≤ o·n + start`: never over a block still to be moved.
            for o in 0..outer {
                let src = (o * n + start) * inner;
                buf.copy_within(src..src + out * inner, o * out * inner);
            }
            buf.truncate(outer * out * inner);
        } else if out > n {
            let before = (out - n) / 2;
            let value = match mode {
                PadMode::Constant(v) => v,
                _ => 0.0,
            };
            buf.resize(outer * out * inner, value);
            // Block `o` (and its margins) lands at or after `o·n·inner`, the end of the blocks
            // still to be moved, which are before it.
            for o in (0..outer).rev() {
                let base = o * out * inner;
                buf.copy_within(o * n * inner..(o + 1) * n * inner, base + before * inner);
                for k in (0..before).chain(before + n..out) {
                    let dst = base + k * inner;
                    match mode.source(k as isize - before as isize, n) {
                        None => buf[dst..dst + inner].fill(value),
                        Some(s) => {
                            let src = base + (before + s) * inner;
                            buf.copy_within(src..src + inner, dst);
                        }
                    }
                }
            }
        }
        shape[axis] = out;
    }

    /// The previous `CropOrPad::apply`.
    pub(crate) fn reference(target: [usize; 3], mode: PadMode, volume: Volume) -> Volume {
        let Volume {
            mut shape,
            mut data,
        } = volume;
        let input = shape;
        for axis in (1..4).filter(|&a| target[a - 1] < input[a]) {
            crop_or_pad_axis(&mut data, &mut shape, axis, target[axis - 1], mode);
        }
        for axis in (1..4).filter(|&a| target[a - 1] > input[a]) {
            crop_or_pad_axis(&mut data, &mut shape, axis, target[axis - 1], mode);
        }
        Volume::new(shape, data).unwrap()
    }

    #[test]
    fn one_pass_crop_or_pad_equals_the_axis_by_axis_reference() {
        let shape = [2, 5, 8, 7];
        let n: usize = shape.iter().product();
        let v = Volume::new(shape, (0..n).map(|i| (i as f32).sin()).collect()).unwrap();
        let modes = [
            PadMode::Constant(-2.5),
            PadMode::Edge,
            PadMode::Reflect,
            PadMode::Symmetric,
            PadMode::Wrap,
        ];
        // Crops and pads mixed across axes, pads wider than the input, odd margins.
        let targets = [
            [5, 8, 7],
            [3, 12, 7],
            [9, 3, 20],
            [1, 1, 1],
            [16, 17, 2],
            [6, 8, 4],
        ];
        for mode in modes {
            for target in targets {
                let t = CropOrPad::with_mode(target, mode).unwrap();
                let got = t.apply(v.clone(), &mut SampleRng::new(0, 0, 0, 0)).unwrap();
                assert_eq!(
                    got,
                    reference(target, mode, v.clone()),
                    "{mode:?} {target:?}"
                );
            }
        }
    }
}
