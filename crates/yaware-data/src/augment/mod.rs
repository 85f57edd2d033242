//! 3D augmentations of volumes `(C, D, H, W)`, each a pure function of the volume and a
//! per-sample random generator seeded by `(seed, epoch, sample index, view)`, so a run is
//! reproducible whatever the number of threads.
//!
//! Implemented so far: [`Compose`], [`RandomApply`], [`MultiViews`], [`RandomFlip`],
//! [`RandomGaussianNoise`], [`RandomGaussianBlur`], [`RandomErasing`] (cutout),
//! [`RandomRotation`], [`RandomResizedCrop`], [`Resize`], [`ZNormalization`],
//! [`RobustRescaling`], [`CropOrPad`], and the paper's presets [`paper_all_tf`] and
//! [`paper_cutout`].

mod basic;
mod erasing;
mod gather;
mod resize;
mod spatial;

use std::fmt;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

pub use basic::{CropOrPad, PadMode, RandomFlip, RandomGaussianNoise, VoxelMask, ZNormalization};
pub use erasing::{EraseValue, RandomErasing};
pub use resize::{
    PaperCrop, PaperCutout, PaperFlip, RandomResizedCrop, Resize, paper_all_tf, paper_cutout,
};
pub use spatial::{KeepShape, RandomGaussianBlur, RandomRotation, RobustRescaling};

use crate::error::{Error, Result};

/// A volume `(C, D, H, W)` of f32 voxels, row-major, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    shape: [usize; 4],
    data: Vec<f32>,
}

impl Volume {
    /// A volume from its shape and voxels (the length must match the shape).
    pub fn new(shape: [usize; 4], data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Volume(format!(
                "shape {shape:?} needs {n} voxels, got {}",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }

    /// A volume from a `(D, H, W)` (one channel) or `(C, D, H, W)` tensor of any float dtype.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let shape = match *t.dims() {
            [d, h, w] => [1, d, h, w],
            [c, d, h, w] => [c, d, h, w],
            _ => {
                return Err(Error::Volume(format!(
                    "input data must be 3d or 4d (channel+spatial dimensions), got {:?}",
                    t.dims()
                )));
            }
        };
        Self::new(
            shape,
            t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        )
    }

    /// The volume as a `(C, D, H, W)` f32 tensor.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(&self.data, &self.shape, device)?)
    }

    /// `(C, D, H, W)`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// `(D, H, W)`.
    pub fn spatial(&self) -> [usize; 3] {
        [self.shape[1], self.shape[2], self.shape[3]]
    }

    /// The voxels, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The voxels, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// The voxels of each channel.
    pub fn channels_mut(&mut self) -> std::slice::ChunksExactMut<'_, f32> {
        let n = self.spatial().iter().product::<usize>().max(1);
        self.data.chunks_exact_mut(n)
    }

    /// The voxels of each channel.
    pub fn channels(&self) -> std::slice::ChunksExact<'_, f32> {
        let n = self.spatial().iter().product::<usize>().max(1);
        self.data.chunks_exact(n)
    }
}

/// A counter-based generator: the stream of a sample depends only on `(seed, epoch, index,
/// view)`, never on which thread draws it.
#[derive(Debug, Clone)]
pub struct SampleRng {
    state: u64,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SampleRng {
    /// The generator of view `view` of sample `index` at epoch `epoch` of a run seeded `seed`.
    pub fn new(seed: u64, epoch: u64, index: u64, view: u64) -> Self {
        let state = [epoch, index, view]
            .iter()
            .fold(splitmix(seed), |h, &x| splitmix(h ^ splitmix(x)));
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.state.wrapping_sub(0x9E37_79B9_7F4A_7C15))
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[low, high)`.
    pub fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    /// Uniform integer in `[0, n]` (inclusive).
    pub fn int_inclusive(&mut self, n: usize) -> usize {
        ((self.uniform() * (n as f64 + 1.0)) as usize).min(n)
    }

    /// Two independent standard normals (both outputs of Box–Muller).
    pub fn normal_pair(&mut self) -> (f64, f64) {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        (r * c, r * s)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// An augmentation of one volume.
pub trait Transform: Send + Sync + fmt::Debug {
    /// Transforms `volume`, drawing randomness from `rng`.
    fn apply(&self, volume: Volume, rng: &mut SampleRng) -> Result<Volume>;
}

impl<T: Transform + ?Sized> Transform for Arc<T> {
    fn apply(&self, volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        (**self).apply(volume, rng)
    }
}

impl<T: Transform + ?Sized> Transform for Box<T> {
    fn apply(&self, volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        (**self).apply(volume, rng)
    }
}

/// Transforms applied in order.
#[derive(Debug, Default)]
pub struct Compose(pub Vec<Box<dyn Transform>>);

impl Transform for Compose {
    fn apply(&self, volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        self.0.iter().try_fold(volume, |v, t| t.apply(v, rng))
    }
}

pub(crate) fn check_probability(name: &'static str, p: f64) -> Result<()> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(Error::InvalidParam {
            name,
            value: p.to_string(),
            rule: "must be a number in [0, 1]",
        })
    }
}

pub(crate) fn check_range(
    name: &'static str,
    (lo, hi): (f64, f64),
    min: Option<f64>,
) -> Result<()> {
    let ok = lo.is_finite() && hi.is_finite() && lo <= hi && min.is_none_or(|m| lo >= m);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidParam {
            name,
            value: format!("({lo}, {hi})"),
            rule: "must be finite bounds (low, high) with low <= high (and within the allowed minimum)",
        })
    }
}

/// Checks the box parameters of `RandomErasing` / `RandomResizedCrop`: `scale` within [0, 1]
/// (an upper bound of 0 allowed only with `allow_empty`), `ratio` positive.
pub(crate) fn check_box_params(
    scale: (f64, f64),
    ratio: (f64, f64),
    allow_empty: bool,
) -> Result<()> {
    check_range("scale", scale, Some(0.0))?;
    if scale.1 > 1.0 || (!allow_empty && scale.1 == 0.0) {
        let rule = if allow_empty {
            "must be within [0, 1]"
        } else {
            "must be within (0, 1]"
        };
        return Err(Error::InvalidParam {
            name: "scale",
            value: format!("{scale:?}"),
            rule,
        });
    }
    check_range("ratio", ratio, None)?;
    if ratio.0 <= 0.0 {
        return Err(Error::InvalidParam {
            name: "ratio",
            value: format!("{ratio:?}"),
            rule: "must be > 0",
        });
    }
    Ok(())
}

/// Draws a box `(start, size)` per spatial axis as the reference's `RandomErasing` and
/// `RandomResizedCrop` do: a size `U(scale)·volume`, three aspect ratios `exp(U(log r0, log r1))`
/// normalised to a product of 1, sides `round(∛size · a_i)`, a uniform start where it fits; a box
/// that does not fit is redrawn up to 10 times, then tried once with ratio 1, then `None`.
pub(crate) fn sample_box(
    dims: [usize; 3],
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut SampleRng,
) -> Option<([usize; 3], [usize; 3])> {
    let total = (dims[0] * dims[1] * dims[2]) as f64;
    let attempt = |rng: &mut SampleRng, ratio: (f64, f64)| {
        let target = rng.range(scale.0, scale.1) * total;
        let a = [(); 3].map(|_| rng.range(ratio.0.ln(), ratio.1.ln()).exp());
        let norm = (a[0] * a[1] * a[2]).cbrt();
        let size = [0, 1, 2].map(|i| (target.cbrt() * a[i] / norm).round() as usize);
        if size.iter().zip(&dims).any(|(&s, &d)| s > d) {
            return None;
        }
        let start = [0, 1, 2].map(|i| rng.int_inclusive(dims[i] - size[i]));
        Some((start, size))
    };
    (0..10)
        .find_map(|_| attempt(rng, ratio))
        .or_else(|| attempt(rng, (1.0, 1.0)))
}

/// Applies a transform with probability `p` (the reference's `Transform(p=…)`). One uniform
/// number is drawn whether or not it applies, so the streams of later transforms do not depend
/// on this outcome.
#[derive(Debug)]
pub struct RandomApply<T> {
    pub(crate) transform: T,
    pub(crate) p: f64,
}

impl<T> RandomApply<T> {
    /// `p` must be in `[0, 1]`.
    pub fn new(transform: T, p: f64) -> Result<Self> {
        check_probability("p", p)?;
        Ok(Self { transform, p })
    }
}

impl<T: Transform> Transform for RandomApply<T> {
    fn apply(&self, volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        if rng.uniform() < self.p {
            self.transform.apply(volume, rng)
        } else {
            Ok(volume)
        }
    }
}

/// `n_views` independently augmented views of one sample (two by default): view `k` of sample
/// `index` at `epoch` uses `SampleRng::new(seed, epoch, index, k)`.
#[derive(Debug)]
pub struct MultiViews<T> {
    transform: T,
    n_views: usize,
}

impl<T: Transform> MultiViews<T> {
    /// Two views.
    pub fn new(transform: T) -> Self {
        Self {
            transform,
            n_views: 2,
        }
    }

    /// `n_views ≥ 1` views.
    pub fn with_views(transform: T, n_views: usize) -> Result<Self> {
        if n_views == 0 {
            return Err(Error::InvalidParam {
                name: "n_views",
                value: "0".into(),
                rule: "must be >= 1",
            });
        }
        Ok(Self { transform, n_views })
    }

    /// The views of `volume`, sample `index` of epoch `epoch` in a run seeded `seed`.
    pub fn views(&self, volume: &Volume, seed: u64, epoch: u64, index: u64) -> Result<Vec<Volume>> {
        (0..self.n_views as u64)
            .map(|k| {
                self.transform
                    .apply(volume.clone(), &mut SampleRng::new(seed, epoch, index, k))
            })
            .collect()
    }
}
