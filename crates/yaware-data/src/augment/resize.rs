//! Trilinear resizing, random resized crops, and the y-Aware paper's augmentation presets.

use super::basic::flip_axis;
use super::{
    Compose, RandomApply, RandomGaussianBlur, RandomGaussianNoise, SampleRng, Transform, Volume,
    ZNormalization, check_box_params, sample_box,
};
use crate::error::{Error, Result};

fn check_shape(name: &'static str, shape: [usize; 3]) -> Result<()> {
    if shape.contains(&0) {
        return Err(Error::InvalidParam {
            name,
            value: format!("{shape:?}"),
            rule: "every size must be > 0",
        });
    }
    Ok(())
}

/// Linear interpolation along one spatial axis to `out` samples, with `align_corners = false`
/// semantics (PyTorch's `interpolate`): output `o` samples input `(o + ½)·in/out − ½`, clamped.
fn resize_axis(v: &Volume, axis: usize, out: usize) -> Volume {
    let [c, d, h, w] = v.shape();
    let mut dims = [d, h, w];
    let n = dims[axis];
    let stride = [h * w, w, 1][axis];
    let outer: usize = dims[..axis].iter().product();
    dims[axis] = out;
    let out_stride = stride; // axes after `axis` keep their sizes
    let scale = n as f64 / out as f64;
    let taps: Vec<(usize, usize, f32)> = (0..out)
        .map(|o| {
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            (i0, i1, (src - i0 as f64) as f32)
        })
        .collect();
    let per_channel_out = dims.iter().product::<usize>();
    let mut data = vec![0.0f32; c * per_channel_out];
    for (src, dst) in v.channels().zip(data.chunks_exact_mut(per_channel_out)) {
        for o in 0..outer {
            let (sbase, dbase) = (o * n * stride, o * out * out_stride);
            for (k, &(i0, i1, t)) in taps.iter().enumerate() {
                let (a, b) = (
                    &src[sbase + i0 * stride..][..stride],
                    &src[sbase + i1 * stride..][..stride],
                );
                let row = &mut dst[dbase + k * out_stride..][..out_stride];
                for ((r, &x0), &x1) in row.iter_mut().zip(a).zip(b) {
                    *r = x0 + t * (x1 - x0);
                }
            }
        }
    }
    Volume::new([c, dims[0], dims[1], dims[2]], data).expect("resize computes the voxel count")
}

/// Resizes to `target_shape` (D, H, W) by trilinear interpolation (`align_corners = false`), the
/// reference's `Resize(interpolation="linear")`.
#[derive(Debug, Clone)]
pub struct Resize {
    target_shape: [usize; 3],
}

impl Resize {
    /// A non-empty target shape.
    pub fn new(target_shape: [usize; 3]) -> Result<Self> {
        check_shape("target_shape", target_shape)?;
        Ok(Self { target_shape })
    }
}

impl Transform for Resize {
    fn apply(&self, mut volume: Volume, _rng: &mut SampleRng) -> Result<Volume> {
        for axis in 0..3 {
            if volume.spatial()[axis] != self.target_shape[axis] {
                volume = resize_axis(&volume, axis, self.target_shape[axis]);
            }
        }
        Ok(volume)
    }
}

/// Copies the box `start .. start + size` of every channel.
fn crop(v: &Volume, start: [usize; 3], size: [usize; 3]) -> Volume {
    let [c, _, h, w] = v.shape();
    let n = size.iter().product::<usize>();
    let mut data = Vec::with_capacity(c * n);
    for src in v.channels() {
        for z in 0..size[0] {
            for y in 0..size[1] {
                let at = ((start[0] + z) * h + start[1] + y) * w + start[2];
                data.extend_from_slice(&src[at..at + size[2]]);
            }
        }
    }
    Volume::new([c, size[0], size[1], size[2]], data).expect("crop computes the voxel count")
}

/// Crops a random box and resizes it to `target_shape` (the reference's `RandomResizedCrop`,
/// defaults scale (0.08, 1), ratio (0.75, 1.33)): box sampling as in `RandomErasing` (10 tries,
/// then ratio 1), with the whole volume as the fallback.
#[derive(Debug, Clone)]
pub struct RandomResizedCrop {
    target_shape: [usize; 3],
    scale: (f64, f64),
    ratio: (f64, f64),
}

impl RandomResizedCrop {
    /// `scale` within (0, 1], `ratio` > 0, a non-empty target.
    pub fn new(target_shape: [usize; 3], scale: (f64, f64), ratio: (f64, f64)) -> Result<Self> {
        check_shape("target_shape", target_shape)?;
        check_box_params(scale, ratio, false)?;
        Ok(Self {
            target_shape,
            scale,
            ratio,
        })
    }
}

impl Transform for RandomResizedCrop {
    fn apply(&self, volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        let dims = volume.spatial();
        // A box of no voxel cannot be resized: the whole volume is the fallback then too.
        let boxed =
            sample_box(dims, self.scale, self.ratio, rng).filter(|(_, size)| !size.contains(&0));
        let cropped = match boxed {
            Some((start, size)) => crop(&volume, start, size),
            None => volume,
        };
        Resize::new(self.target_shape)?.apply(cropped, rng)
    }
}

/// The paper's flip: one axis drawn among all four (channel, D, H, W) and reversed (flipping
/// the channel axis of a one-channel volume changes nothing).
#[derive(Debug, Clone, Default)]
pub struct PaperFlip;

impl Transform for PaperFlip {
    fn apply(&self, mut volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        match rng.int_inclusive(3) {
            0 => {
                let [c, ..] = volume.shape();
                let n = volume.data().len() / c.max(1);
                for i in 0..c / 2 {
                    let (lo, hi) = volume.data_mut().split_at_mut((c - 1 - i) * n);
                    lo[i * n..(i + 1) * n].swap_with_slice(&mut hi[..n]);
                }
            }
            axis => flip_axis(&mut volume, axis - 1),
        }
        Ok(volume)
    }
}

/// The paper's cutout: a box of `ceil(size/4)` voxels per spatial axis, at a uniformly random
/// position where it fits, set to 0.
#[derive(Debug, Clone, Default)]
pub struct PaperCutout;

impl Transform for PaperCutout {
    fn apply(&self, mut volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        let dims = volume.spatial();
        let [_, h, w] = dims;
        let size = dims.map(|d| d.div_ceil(4));
        let start = [0, 1, 2].map(|i| rng.int_inclusive(dims[i] - size[i]));
        for channel in volume.channels_mut() {
            for z in 0..size[0] {
                for y in 0..size[1] {
                    let at = ((start[0] + z) * h + start[1] + y) * w + start[2];
                    channel[at..at + size[2]].fill(0.0);
                }
            }
        }
        Ok(volume)
    }
}

/// The paper's crop: a random box of `ceil(0.75·size)` per spatial axis, resized back to the
/// input shape (trilinear).
#[derive(Debug, Clone, Default)]
pub struct PaperCrop;

impl Transform for PaperCrop {
    fn apply(&self, volume: Volume, rng: &mut SampleRng) -> Result<Volume> {
        let dims = volume.spatial();
        let size = dims.map(|d| (0.75 * d as f64).ceil() as usize);
        let start = [0, 1, 2].map(|i| rng.int_inclusive(dims[i] - size[i]));
        Resize::new(dims)?.apply(crop(&volume, start, size), rng)
    }
}

/// The y-Aware paper's augmentation recipe ("all_tf"): z-normalise, then flip, blur
/// (σ ~ U(0.1, 1)), noise (σ ~ U(0.1, 1)), cutout and crop-resize, each with p = 0.5.
pub fn paper_all_tf() -> Compose {
    let half = |t: Box<dyn Transform>| -> Box<dyn Transform> {
        Box::new(RandomApply::new(t, 0.5).expect("0.5 is a probability"))
    };
    Compose(vec![
        Box::new(ZNormalization::default()),
        half(Box::new(PaperFlip)),
        half(Box::new(
            RandomGaussianBlur::new(&[0.1, 1.0]).expect("valid sigma"),
        )),
        half(Box::new(
            RandomGaussianNoise::new((0.0, 0.0), (0.1, 1.0)).expect("valid ranges"),
        )),
        half(Box::new(PaperCutout)),
        half(Box::new(PaperCrop)),
    ])
}

/// The released model's recipe ("cutout"): z-normalise, then the paper's cutout (p = 1).
pub fn paper_cutout() -> Compose {
    Compose(vec![
        Box::new(ZNormalization::default()),
        Box::new(PaperCutout),
    ])
}
