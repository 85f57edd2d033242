//! Gaussian blur, 90° rotations and robust intensity rescaling.

use rayon::prelude::*;

use super::gather::{AxisMap, gather};
use super::{SampleRng, Transform, Volume, check_probability, check_range};
use crate::error::{Error, Result};

/// Blurs with a Gaussian of `σ_i ~ U(low_i, high_i)` per spatial axis, drawn per call (the
/// reference's `RandomGaussianBlur`, default σ in (0, 2)), as scipy's `gaussian_filter`:
/// separable, `reflect` boundaries (`d c b a | a b c d | d c b a`), kernel truncated at 4σ.
#[derive(Debug, Clone)]
pub struct RandomGaussianBlur {
    sigma: [(f64, f64); 3],
}

impl RandomGaussianBlur {
    /// `sigma` as 2 values (one range for every axis) or 6 (a range per axis), all ≥ 0.
    pub fn new(sigma: &[f64]) -> Result<Self> {
        let ranges = match *sigma {
            [lo, hi] => [(lo, hi); 3],
            [a, b, c, d, e, f] => [(a, b), (c, d), (e, f)],
            _ => {
                return Err(Error::InvalidParam {
                    name: "sigma",
                    value: format!("{sigma:?}"),
                    rule: "must have 2 or 6 values",
                });
            }
        };
        for r in ranges {
            check_range("sigma", r, Some(0.0))?;
        }
        Ok(Self { sigma: ranges })
    }
}

impl Default for RandomGaussianBlur {
    fn default() -> Self {
        Self {
            sigma: [(0.0, 2.0); 3],
        }
    }
}

/// scipy's 1-D Gaussian weights: radius `round(4σ)`, normalised.
fn gaussian_weights(sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as usize;
    let w: Vec<f64> = (0..=2 * radius)
        .map(|i| {
            let x = i as f64 - radius as f64;
            (-0.5 * x * x / (sigma * sigma)).exp()
        })
        .collect();
    let sum: f64 = w.iter().sum();
    w.into_iter().map(|v| v / sum).collect()
}

/// Index `i` (possibly outside `[0, n)`) mapped by `reflect` (half-sample symmetric).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let period = 2 * n;
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - 1 - m }) as usize
}

/// Convolves every line along `axis` of every channel with `weights` (odd length), reflected
/// at the borders, in f64 as scipy's `correlate1d` (each output voxel sums its taps in order,
/// `Σ_k w_k·x_k` from the first tap, every product and sum rounded as written).
///
/// The loops run across voxels rather than along taps, so they vectorise: along D and H every
/// output row (`stride` contiguous voxels) is a sum of `K` shifted input rows, read from a copy
/// of the channel; along W every line is summed tap by tap over its reflected copy.
fn convolve_axis(v: &mut Volume, axis: usize, weights: &[f64]) {
    let [_, d, h, w] = v.shape();
    let dims = [d, h, w];
    let strides = [h * w, w, 1];
    let (n, stride) = (dims[axis], strides[axis]);
    let r = weights.len() / 2;
    for channel in v.channels_mut() {
        if stride == 1 {
            channel.par_chunks_mut(n).for_each_init(
                || (vec![0.0f64; n + 2 * r], vec![0.0f64; n]),
                |(padded, acc), line| {
                    for (j, p) in padded.iter_mut().enumerate() {
                        *p = f64::from(line[reflect(j as isize - r as isize, n)]);
                    }
                    acc.fill(-0.0);
                    for (k, &wk) in weights.iter().enumerate() {
                        for (a, &x) in acc.iter_mut().zip(&padded[k..k + n]) {
                            *a += wk * x;
                        }
                    }
                    for (o, &a) in line.iter_mut().zip(acc.iter()) {
                        *o = a as f32;
                    }
                },
            );
        } else {
            let src = channel.to_vec();
            let block = n * stride;
            channel.par_chunks_mut(stride).enumerate().for_each_init(
                || vec![0.0f64; stride],
                |acc, (row, out)| {
                    let (slab, i) = (row / n, row % n);
                    let slab = &src[slab * block..(slab + 1) * block];
                    acc.fill(-0.0);
                    for (k, &wk) in weights.iter().enumerate() {
                        let j = reflect(i as isize + k as isize - r as isize, n);
                        for (a, &x) in acc.iter_mut().zip(&slab[j * stride..(j + 1) * stride]) {
                            *a += wk * f64::from(x);
                        }
                    }
                    for (o, &a) in out.iter_mut().zip(acc.iter()) {
                        *o = a as f32;
                    }
                },
            );
        }
    }
}

impl Transform for RandomGaussianBlur {
    fn apply(&self, mut volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        let sigmas = self.sigma.map(|(lo, hi)| rng.range(lo, hi));
        for (axis, sigma) in sigmas.into_iter().enumerate() {
            if sigma > 0.0 {
                convolve_axis(&mut volume, axis, &gaussian_weights(sigma));
            }
        }
        Ok(volume)
    }
}

/// What [`RandomRotation`] does on a pair of axes of different sizes, where a quarter turn
/// would change the volume's shape (the reference lets it, and batching then breaks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepShape {
    /// Rotate, then centre crop-or-pad back to the input shape (zero padding).
    #[default]
    CropOrPad,
    /// Only half turns on such a pair (quarter turns still on pairs of equal sizes).
    EqualSidesOnly,
}

/// For each axis pair, with probability `rotation_probability`, rotates by `k·90°`, `k` drawn in
/// {1, 2, 3}, like numpy's `rot90(k, axes)`; the volume keeps its shape (see [`KeepShape`]).
#[derive(Debug, Clone)]
pub struct RandomRotation {
    axes: Vec<(usize, usize)>,
    rotation_probability: f64,
    keep_shape: KeepShape,
}

impl RandomRotation {
    /// Pairs of distinct spatial axes in {0, 1, 2}.
    pub fn new(
        axes: Vec<(usize, usize)>,
        rotation_probability: f64,
        keep_shape: KeepShape,
    ) -> Result<Self> {
        if let Some(&(a, b)) = axes.iter().find(|&&(a, b)| a > 2 || b > 2 || a == b) {
            return Err(Error::InvalidParam {
                name: "axes",
                value: format!("({a}, {b})"),
                rule: "pairs of two different spatial axes in {0, 1, 2}",
            });
        }
        check_probability("rotation_probability", rotation_probability)?;
        Ok(Self {
            axes,
            rotation_probability,
            keep_shape,
        })
    }
}

/// An output-to-input map of spatial coordinates, a signed axis permutation plus a shift:
/// `in[p] = sign[p]·out[axis[p]] + offset[p]`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SignedPermutation {
    axis: [usize; 3],
    sign: [isize; 3],
    offset: [isize; 3],
}

impl SignedPermutation {
    /// `in = out + offset` (the identity for a zero offset).
    fn shift(offset: [isize; 3]) -> Self {
        Self {
            axis: [0, 1, 2],
            sign: [1; 3],
            offset,
        }
    }

    /// numpy's `rot90(·, k, axes=(a, b))` of a volume of spatial shape `n`: the map from the
    /// rotated volume's coordinates to `n`'s, and the rotated shape. With `r` the rotated
    /// coordinates: k = 1 flips `b` then swaps, `in[a] = r[b]`, `in[b] = n_b − 1 − r[a]`;
    /// k = 2 flips both; k = 3 swaps then flips `b`, `in[a] = n_a − 1 − r[b]`, `in[b] = r[a]`.
    fn rot90(k: u32, a: usize, b: usize, n: [usize; 3]) -> (Self, [usize; 3]) {
        let mut m = Self::shift([0; 3]);
        let last = |axis: usize| n[axis] as isize - 1;
        let mut shape = n;
        match k % 4 {
            1 => {
                (m.axis[a], m.axis[b]) = (b, a);
                (m.sign[b], m.offset[b]) = (-1, last(b));
                shape.swap(a, b);
            }
            2 => {
                (m.sign[a], m.offset[a]) = (-1, last(a));
                (m.sign[b], m.offset[b]) = (-1, last(b));
            }
            3 => {
                (m.axis[a], m.axis[b]) = (b, a);
                (m.sign[a], m.offset[a]) = (-1, last(a));
                shape.swap(a, b);
            }
            _ => {}
        }
        (m, shape)
    }

    /// `self ∘ inner`: `inner` maps new coordinates to `self`'s output coordinates.
    fn then(self, inner: Self) -> Self {
        let mut m = self;
        for p in 0..3 {
            let q = self.axis[p];
            m.axis[p] = inner.axis[q];
            m.sign[p] = self.sign[p] * inner.sign[q];
            m.offset[p] = self.sign[p] * inner.offset[q] + self.offset[p];
        }
        m
    }

    /// The per-output-axis index maps into an input of spatial shape `input`, for an output of
    /// shape `out` (`None` where the map leaves the input).
    fn axis_maps(self, input: [usize; 3], out: [usize; 3]) -> [AxisMap; 3] {
        [0, 1, 2].map(|i| {
            let p = self
                .axis
                .iter()
                .position(|&a| a == i)
                .expect("a permutation");
            let index = (0..out[i] as isize)
                .map(|o| {
                    let j = self.sign[p] * o + self.offset[p];
                    (0..input[p] as isize).contains(&j).then_some(j as usize)
                })
                .collect();
            AxisMap {
                source_axis: p,
                index,
            }
        })
    }
}

/// The quarter turns `(k, a, b)` applied in order, then a centred crop-or-pad (zero padding) to
/// `target`, as one gather: each output voxel read once from the input, no intermediate volume.
fn rotate_then_crop_or_pad(v: Volume, turns: &[(u32, usize, usize)], target: [usize; 3]) -> Volume {
    let input = v.spatial();
    let (map, shape) = turns.iter().fold(
        (SignedPermutation::shift([0; 3]), input),
        |(m, n), &(k, a, b)| {
            let (r, rotated) = SignedPermutation::rot90(k, a, b, n);
            (m.then(r), rotated)
        },
    );
    // Centred: a crop starts at (n − out)/2, a pad puts the input at (out − n)/2.
    let centre = [0, 1, 2].map(|i| {
        let (n, out) = (shape[i] as isize, target[i] as isize);
        if n >= out {
            (n - out) / 2
        } else {
            -((out - n) / 2)
        }
    });
    let map = map.then(SignedPermutation::shift(centre));
    let maps = map.axis_maps(input, target);
    gather(v, target, &maps, 0.0)
}

impl Transform for RandomRotation {
    fn apply(&self, volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        let input = volume.spatial();
        let mut shape = input;
        let mut turns = Vec::new();
        for &(a, b) in &self.axes {
            if rng.uniform() >= self.rotation_probability {
                continue;
            }
            let equal = shape[a] == shape[b];
            let k = if equal || self.keep_shape == KeepShape::CropOrPad {
                1 + rng.int_inclusive(2) as u32
            } else {
                2
            };
            if k % 2 == 1 {
                shape.swap(a, b);
            }
            turns.push((k, a, b));
        }
        if turns.is_empty() {
            return Ok(volume);
        }
        // The rotations, then a crop-or-pad back to the input shape when they changed it.
        Ok(rotate_then_crop_or_pad(volume, &turns, input))
    }
}

/// Per channel: clip to the `percentiles` (numpy's linear interpolation), then rescale
/// linearly to `out_min_max`; a constant channel maps to the lower bound (the reference's
/// `RobustRescaling`, defaults (0, 1) and (1, 99); it rescales multi-channel input with global
/// extremes, we rescale each channel on its own).
#[derive(Debug, Clone)]
pub struct RobustRescaling {
    out_min_max: (f64, f64),
    percentiles: (f64, f64),
}

impl Default for RobustRescaling {
    fn default() -> Self {
        Self {
            out_min_max: (0.0, 1.0),
            percentiles: (1.0, 99.0),
        }
    }
}

impl RobustRescaling {
    /// `out_min_max` with low ≤ high, `percentiles` within [0, 100].
    pub fn new(out_min_max: (f64, f64), percentiles: (f64, f64)) -> Result<Self> {
        check_range("out_min_max", out_min_max, None)?;
        check_range("percentiles", percentiles, Some(0.0))?;
        if percentiles.1 > 100.0 {
            return Err(Error::InvalidParam {
                name: "percentiles",
                value: format!("{percentiles:?}"),
                rule: "must be within [0, 100]",
            });
        }
        Ok(Self {
            out_min_max,
            percentiles,
        })
    }
}

/// numpy's `percentile(x, p)` (linear interpolation); reorders `values`.
fn percentile(values: &mut [f32], p: f64) -> f64 {
    let rank = p / 100.0 * (values.len() - 1) as f64;
    let (lo, frac) = (rank.floor() as usize, rank - rank.floor());
    let (_, &mut a, right) = values.select_nth_unstable_by(lo, f32::total_cmp);
    // The next order statistic is the smallest of what lies above.
    let b = right.iter().copied().min_by(f32::total_cmp).unwrap_or(a);
    a as f64 + frac * (b as f64 - a as f64)
}

impl Transform for RobustRescaling {
    fn apply(&self, mut volume: Volume, _rng: &mut SampleRng) -> Result<Volume> {
        let (out_lo, out_hi) = self.out_min_max;
        for channel in volume.channels_mut() {
            let mut scratch = channel.to_vec();
            let lo = percentile(&mut scratch, self.percentiles.0);
            let hi = percentile(&mut scratch, self.percentiles.1);
            for x in channel.iter_mut() {
                let clipped = (*x as f64).clamp(lo, hi);
                *x = if hi > lo {
                    (out_lo + (clipped - lo) / (hi - lo) * (out_hi - out_lo)) as f32
                } else {
                    out_lo as f32
                };
            }
        }
        Ok(volume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::basic::flip_axis;
    use crate::augment::{CropOrPad, PadMode};

    /// The previous line-by-line `convolve_axis` (taps summed per voxel), kept as the reference
    /// of the vectorised one.
    fn convolve_axis_reference(v: &mut Volume, axis: usize, weights: &[f64]) {
        let [_, d, h, w] = v.shape();
        let dims = [d, h, w];
        let strides = [h * w, w, 1];
        let (n, stride) = (dims[axis], strides[axis]);
        let radius = (weights.len() / 2) as isize;
        let block = n * stride;
        for channel in v.channels_mut() {
            channel.par_chunks_mut(block).for_each(|slab| {
                // The line with `radius` reflected voxels on each side, so the taps need no test.
                let r = radius as usize;
                let mut padded = vec![0.0f64; n + 2 * r];
                for offset in 0..stride {
                    for (j, p) in padded.iter_mut().enumerate() {
                        *p = slab[reflect(j as isize - radius, n) * stride + offset] as f64;
                    }
                    for i in 0..n {
                        let acc: f64 = weights
                            .iter()
                            .zip(&padded[i..i + weights.len()])
                            .map(|(w, x)| w * x)
                            .sum();
                        slab[i * stride + offset] = acc as f32;
                    }
                }
            });
        }
    }

    /// The vectorised convolution gives the same bits as the line-by-line one (same products
    /// and sums in the same order), along each axis, on an odd-sized two-channel volume, for
    /// kernels narrower and wider than the axes (multiple reflections).
    #[test]
    fn vectorised_convolution_equals_the_line_by_line_one() {
        let shape = [2, 7, 5, 9];
        let n: usize = shape.iter().product();
        let mut state = 17u64;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        for sigma in [0.4, 1.0, 2.7] {
            let weights = gaussian_weights(sigma);
            for axis in 0..3 {
                let mut fast = Volume::new(shape, data.clone()).unwrap();
                let mut slow = fast.clone();
                convolve_axis(&mut fast, axis, &weights);
                convolve_axis_reference(&mut slow, axis, &weights);
                let same = fast
                    .data()
                    .iter()
                    .zip(slow.data())
                    .all(|(a, b)| a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0));
                assert!(same, "sigma {sigma} axis {axis}");
                assert_ne!(
                    fast.data(),
                    &data[..],
                    "sigma {sigma} axis {axis}: unchanged"
                );
            }
        }
    }

    // The previous implementation (a rotated copy per quarter turn, then a crop-or-pad), kept
    // as the reference of the one-pass gather.
    /// Swaps spatial axes `a` and `b` (a transpose).
    pub(super) fn swap_axes(v: &Volume, a: usize, b: usize) -> Volume {
        let [c, d, h, w] = v.shape();
        let mut dims = [d, h, w];
        dims.swap(a, b);
        let in_strides = [h * w, w, 1];
        let mut src_strides = in_strides;
        src_strides.swap(a, b);
        let n = d * h * w;
        let mut data = vec![0.0f32; c * n];
        for (src, dst) in v.channels().zip(data.chunks_exact_mut(n)) {
            let mut k = 0;
            for i in 0..dims[0] {
                for j in 0..dims[1] {
                    let base = i * src_strides[0] + j * src_strides[1];
                    for l in 0..dims[2] {
                        dst[k] = src[base + l * src_strides[2]];
                        k += 1;
                    }
                }
            }
        }
        Volume::new([c, dims[0], dims[1], dims[2]], data)
            .expect("a transpose keeps the voxel count")
    }

    /// numpy's `rot90(v, k, axes=(a, b))` on spatial axes.
    pub(super) fn rot90(v: Volume, k: u32, a: usize, b: usize) -> Volume {
        match k % 4 {
            1 => {
                let mut v = v;
                flip_axis(&mut v, b);
                swap_axes(&v, a, b)
            }
            2 => {
                let mut v = v;
                flip_axis(&mut v, a);
                flip_axis(&mut v, b);
                v
            }
            3 => {
                let mut t = swap_axes(&v, a, b);
                flip_axis(&mut t, b);
                t
            }
            _ => v,
        }
    }

    /// The previous `RandomRotation` path: each turn into a fresh volume, then `CropOrPad`
    /// axis by axis (the previous in-place implementation) when the shape changed.
    fn compose_then_crop(v: &Volume, turns: &[(u32, usize, usize)], target: [usize; 3]) -> Volume {
        let r = turns
            .iter()
            .fold(v.clone(), |x, &(k, a, b)| rot90(x, k, a, b));
        if r.spatial() == target {
            r
        } else {
            crate::augment::basic::tests::reference(target, PadMode::Constant(0.0), r)
        }
    }

    #[test]
    fn fused_rotation_equals_rotate_then_crop_or_pad() {
        let pairs = [(0, 1), (1, 0), (1, 2), (2, 1), (0, 2), (2, 0)];
        for shape in [[1, 3, 5, 7], [2, 4, 7, 5], [1, 6, 3, 3], [1, 1, 2, 9]] {
            let n: usize = shape.iter().product();
            let v = Volume::new(shape, (0..n).map(|i| i as f32 + 1.0).collect()).unwrap();
            let spatial = v.spatial();
            // Back to the input shape, and to other odd and even targets.
            for target in [spatial, [5, 4, 6], [3, 8, 1]] {
                for k in 0..4 {
                    for &(a, b) in &pairs {
                        let turns = [(k, a, b)];
                        assert_eq!(
                            rotate_then_crop_or_pad(v.clone(), &turns, target),
                            compose_then_crop(&v, &turns, target),
                            "{shape:?} k = {k} axes ({a}, {b}) to {target:?}"
                        );
                        // Two turns in a row, as RandomRotation chains its axis pairs.
                        for &(c, d) in &pairs {
                            let turns = [(k, a, b), (3 - k % 3, c, d)];
                            assert_eq!(
                                rotate_then_crop_or_pad(v.clone(), &turns, target),
                                compose_then_crop(&v, &turns, target),
                                "{shape:?} {turns:?} to {target:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn random_rotation_equals_the_previous_path() {
        // The same draws and the same voxels as rotating copies then cropping back.
        let shape = [2, 5, 7, 4];
        let n: usize = shape.iter().product();
        let v = Volume::new(shape, (0..n).map(|i| i as f32).collect()).unwrap();
        let axes = vec![(0, 1), (1, 2), (2, 0), (0, 1)];
        for keep in [KeepShape::CropOrPad, KeepShape::EqualSidesOnly] {
            let t = RandomRotation::new(axes.clone(), 0.7, keep).unwrap();
            for i in 0..40 {
                let got = t.apply(v.clone(), &mut SampleRng::new(1, 0, i, 0)).unwrap();
                // The previous apply, step by step.
                let mut rng = SampleRng::new(1, 0, i, 0);
                let mut r = v.clone();
                for &(a, b) in &axes {
                    if rng.uniform() >= 0.7 {
                        continue;
                    }
                    let equal = r.spatial()[a] == r.spatial()[b];
                    let k = if equal || keep == KeepShape::CropOrPad {
                        1 + rng.int_inclusive(2) as u32
                    } else {
                        2
                    };
                    r = rot90(r, k, a, b);
                }
                if r.spatial() != v.spatial() {
                    r = CropOrPad::new(v.spatial(), 0.0)
                        .unwrap()
                        .apply(r, &mut rng)
                        .unwrap();
                }
                assert_eq!(got, r, "{keep:?} sample {i}");
                // The generator is left where the previous path left it.
                assert_eq!(rng.next_u64(), {
                    let mut g = SampleRng::new(1, 0, i, 0);
                    t.apply(v.clone(), &mut g).unwrap();
                    g.next_u64()
                });
            }
        }
    }

    fn vol(shape: [usize; 4]) -> Volume {
        let n: usize = shape.iter().product();
        Volume::new(shape, (0..n).map(|i| i as f32).collect()).unwrap()
    }

    #[test]
    fn rot90_follows_numpy() {
        // np.rot90([[1, 2], [3, 4]]) == [[2, 4], [1, 3]] (numpy's documentation).
        let v = Volume::new([1, 2, 2, 1], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(rot90(v.clone(), 1, 0, 1).data(), [2.0, 4.0, 1.0, 3.0]);
        assert_eq!(rot90(v.clone(), 2, 0, 1).data(), [4.0, 3.0, 2.0, 1.0]);
        assert_eq!(rot90(v, 3, 0, 1).data(), [3.0, 1.0, 4.0, 2.0]);
    }

    #[test]
    fn quarter_turns_compose() {
        for (a, b) in [(0, 1), (1, 2), (0, 2), (2, 0)] {
            let v = vol([2, 3, 4, 5]);
            let r = rot90(v.clone(), 1, a, b);
            assert_eq!(rot90(r.clone(), 3, a, b), v, "k = 1 then 3 ({a}, {b})");
            let four = (0..3).fold(r, |x, _| rot90(x, 1, a, b));
            assert_eq!(four, v, "four quarter turns ({a}, {b})");
        }
    }

    #[test]
    fn reflect_is_half_sample_symmetric() {
        let idx: Vec<usize> = (-4..8).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, [3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0]);
    }

    #[test]
    fn gaussian_weights_follow_scipy() {
        let w = gaussian_weights(1.0);
        assert_eq!(w.len(), 9); // radius round(4σ) = 4
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        // scipy.ndimage.gaussian_filter1d(impulse, 1.0, truncate=4.0) at the centre.
        assert!((w[4] - 0.398_943_469_356_097_76).abs() < 1e-15);
    }

    #[test]
    fn percentiles_interpolate_linearly() {
        let mut values = [5.0f32, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&mut values, 50.0), 3.0);
        assert_eq!(percentile(&mut values, 10.0), 1.4);
        assert_eq!(percentile(&mut values, 100.0), 5.0);
        assert_eq!(percentile(&mut values, 0.0), 1.0);
    }
}
