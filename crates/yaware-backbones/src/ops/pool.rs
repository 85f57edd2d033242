//! 3D pooling with PyTorch's semantics: CPU custom ops with hand-written backward passes.
//!
//! Output sizes follow PyTorch with `ceil_mode = false`: `floor((L + 2p − k) / s) + 1` per
//! axis, and the padding may be at most half the kernel size. Max pooling pads with −∞ and, in
//! backward, gives each window's gradient to its first maximum in (d, h, w) scan order (a NaN
//! counts as a maximum, as in PyTorch); average pooling counts the zero padding in the
//! divisor (`count_include_pad = true`).

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::elem::{Real, check_volume, cpu_slice, dispatch, pick_index, with_cpu_slices};
use crate::{Error, Result};

/// Shape bookkeeping of one pooling call: `nc` volumes of `input` voxels, `output` windows.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    input: [usize; 3],
    output: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
}

impl Geometry {
    /// Validates the input and hyper-parameters (PyTorch's rules) and computes output sizes.
    fn new(
        op: &'static str,
        x: &Tensor,
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> Result<Self> {
        Self::from_dims(op, check_volume(op, x)?, kernel, stride, padding)
    }

    /// [`Geometry::new`] on the dims of a checked input.
    fn from_dims(
        op: &'static str,
        dims: [usize; 5],
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> Result<Self> {
        let [n, c, d, h, w] = dims;
        if d * h * w == 0 {
            return Err(Error::Input {
                op,
                problem: format!("cannot pool empty volumes, got shape {dims:?}"),
            });
        }
        if kernel.contains(&0) {
            return Err(Error::InvalidParam {
                name: "kernel_size",
                value: format!("{kernel:?}"),
                reason: "every kernel size must be positive".into(),
            });
        }
        if stride.contains(&0) {
            return Err(Error::InvalidParam {
                name: "stride",
                value: format!("{stride:?}"),
                reason: "every stride must be positive".into(),
            });
        }
        if (0..3).any(|a| padding[a] > kernel[a] / 2) {
            return Err(Error::InvalidParam {
                name: "padding",
                value: format!("{padding:?}"),
                reason: format!("must be at most half the kernel size {kernel:?} on every axis"),
            });
        }
        let input = [d, h, w];
        let mut output = [0; 3];
        for a in 0..3 {
            let padded = input[a] + 2 * padding[a];
            if padded < kernel[a] {
                return Err(Error::Input {
                    op,
                    problem: format!(
                        "input shape {:?} is too small for kernel {kernel:?} with padding \
                         {padding:?}",
                        dims
                    ),
                });
            }
            output[a] = (padded - kernel[a]) / stride[a] + 1;
        }
        if d * h * w > u32::MAX as usize {
            return Err(Error::Input {
                op,
                problem: format!("volumes of shape {dims:?} are too large to pool"),
            });
        }
        Ok(Self {
            n,
            c,
            input,
            output,
            kernel,
            stride,
            padding,
        })
    }

    fn volumes(&self) -> usize {
        self.n * self.c
    }

    fn in_len(&self) -> usize {
        self.input.iter().product()
    }

    fn out_len(&self) -> usize {
        self.output.iter().product()
    }

    fn out_shape(&self) -> Shape {
        let [d, h, w] = self.output;
        Shape::from((self.n, self.c, d, h, w))
    }

    /// Per axis, the input range `[start, end)` each output position covers, clipped to the
    /// volume (the clipped part is padding). Never empty since the padding is at most k/2.
    fn ranges(&self) -> [Vec<(usize, usize)>; 3] {
        std::array::from_fn(|a| {
            (0..self.output[a])
                .map(|o| {
                    let start = (o * self.stride[a]) as isize - self.padding[a] as isize;
                    let end = start + self.kernel[a] as isize;
                    (
                        start.max(0) as usize,
                        end.min(self.input[a] as isize) as usize,
                    )
                })
                .collect()
        })
    }

    fn window_size(&self) -> usize {
        self.kernel.iter().product()
    }
}

// ---------------------------------------------------------------------------------------------
// Max pooling.

/// Window maxima and the in-volume index of each window's first maximum, separably: maxima
/// along W, then along H of those, then along D. Scanning each axis in order with PyTorch's
/// update rule (strictly greater, or NaN) selects the same element as PyTorch's (d, h, w) scan
/// of the whole window: the first maximum, or the last NaN.
fn max_forward<T: Real>(x: &[T], g: &Geometry) -> (Vec<T>, Vec<u32>) {
    let (il, ol) = (g.in_len(), g.out_len());
    let [rd, rh, rw] = g.ranges();
    let [id, ih, iw] = g.input;
    let [_, oh, ow] = g.output;
    let mut out = vec![T::from_f64(0.0); g.volumes() * ol];
    let mut arg = vec![0u32; g.volumes() * ol];
    out.par_chunks_mut(ol)
        .zip(arg.par_chunks_mut(ol))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
            |(av, ai, bv, bi), (v, (out, arg))| {
                let x = &x[v * il..(v + 1) * il];
                // Along W: (D, H, OW).
                av.clear();
                av.resize(id * ih * ow, T::NEG_INFINITY);
                ai.clear();
                ai.resize(id * ih * ow, 0u32);
                for (r, row) in x.chunks_exact(iw).enumerate() {
                    let (mv, mi) = (&mut av[r * ow..(r + 1) * ow], &mut ai[r * ow..(r + 1) * ow]);
                    for (o, &(w0, w1)) in rw.iter().enumerate() {
                        let base = (r * iw) as u32;
                        let (mut m, mut k) = (row[w0], base + w0 as u32);
                        for (w, &val) in row.iter().enumerate().take(w1).skip(w0 + 1) {
                            // Branch-free: random data makes a branch unpredictable.
                            let take = (val > m) | val.is_nan();
                            m = T::pick(take, val, m);
                            k = pick_index(take, base + w as u32, k);
                        }
                        mv[o] = m;
                        mi[o] = k;
                    }
                }
                // Along H: (D, OH, OW).
                bv.clear();
                bv.resize(id * oh * ow, T::NEG_INFINITY);
                bi.clear();
                bi.resize(id * oh * ow, 0u32);
                for d in 0..id {
                    for (o, &(h0, h1)) in rh.iter().enumerate() {
                        let dst = (d * oh + o) * ow..(d * oh + o + 1) * ow;
                        let rows = (d * ih + h0) * ow..(d * ih + h1) * ow;
                        select_max(
                            &mut bv[dst.clone()],
                            &mut bi[dst],
                            &av[rows.clone()],
                            &ai[rows],
                        );
                    }
                }
                // Along D: (OD, OH, OW).
                let plane = oh * ow;
                for (o, &(d0, d1)) in rd.iter().enumerate() {
                    let dst = o * plane..(o + 1) * plane;
                    let planes = d0 * plane..d1 * plane;
                    select_max(
                        &mut out[dst.clone()],
                        &mut arg[dst],
                        &bv[planes.clone()],
                        &bi[planes],
                    );
                }
            },
        );
    (out, arg)
}

/// Folds the rows of `vals` (and their indices), in order, into `(m, mi)` with PyTorch's rule:
/// the first row initialises, a later value replaces only if strictly greater or NaN.
#[inline]
fn select_max<T: Real>(m: &mut [T], mi: &mut [u32], vals: &[T], idx: &[u32]) {
    let n = m.len();
    m.copy_from_slice(&vals[..n]);
    mi.copy_from_slice(&idx[..n]);
    for (vals, idx) in vals[n..].chunks_exact(n).zip(idx[n..].chunks_exact(n)) {
        for ((m, mi), (&v, &i)) in m.iter_mut().zip(mi.iter_mut()).zip(vals.iter().zip(idx)) {
            let take = (v > *m) | v.is_nan();
            *m = T::pick(take, v, *m);
            *mi = pick_index(take, i, *mi);
        }
    }
}

/// The direct (window by window) form of [`max_forward`], kept as its test oracle.
#[cfg(test)]
fn max_forward_direct<T: Real>(x: &[T], g: &Geometry) -> (Vec<T>, Vec<u32>) {
    let (il, ol) = (g.in_len(), g.out_len());
    let [rd, rh, rw] = g.ranges();
    let [_, ih, iw] = g.input;
    let mut out = vec![T::from_f64(0.0); g.volumes() * ol];
    let mut arg = vec![0u32; g.volumes() * ol];
    out.par_chunks_mut(ol)
        .zip(arg.par_chunks_mut(ol))
        .enumerate()
        .for_each(|(v, (out, arg))| {
            let x = &x[v * il..(v + 1) * il];
            let mut j = 0;
            for &(d0, d1) in &rd {
                for &(h0, h1) in &rh {
                    for &(w0, w1) in &rw {
                        let mut best = (d0 * ih + h0) * iw + w0;
                        let mut max = T::NEG_INFINITY;
                        for d in d0..d1 {
                            for h in h0..h1 {
                                let row = (d * ih + h) * iw;
                                for (i, &val) in x[row + w0..row + w1].iter().enumerate() {
                                    // PyTorch's rule: strictly greater, or NaN.
                                    if val > max || val.is_nan() {
                                        max = val;
                                        best = row + w0 + i;
                                    }
                                }
                            }
                        }
                        out[j] = max;
                        arg[j] = best as u32;
                        j += 1;
                    }
                }
            }
        });
    (out, arg)
}

/// Scatter-adds `dy` to the recorded maxima.
fn max_backward<T: Real>(dy: &[T], arg: &[u32], g: &Geometry) -> Vec<T> {
    let (il, ol) = (g.in_len(), g.out_len());
    let mut dx = vec![T::from_f64(0.0); g.volumes() * il];
    dx.par_chunks_mut(il).enumerate().for_each(|(v, dx)| {
        let dy = &dy[v * ol..(v + 1) * ol];
        let arg = &arg[v * ol..(v + 1) * ol];
        for (&a, &g) in arg.iter().zip(dy) {
            dx[a as usize] += g;
        }
    });
    dx
}

/// Max pooling as a custom op; the forward pass records the argmax for the backward pass.
struct MaxPool3dOp {
    geo: Geometry,
    argmax: OnceLock<Vec<u32>>,
}

impl CustomOp1 for MaxPool3dOp {
    fn name(&self) -> &'static str {
        "max_pool3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s, self.name(), |T| {
            let x = cpu_slice::<T>(s, l, self.name())?;
            let (out, arg) = max_forward(x, &self.geo);
            // A second forward of the same op would record identical indices.
            let _ = self.argmax.set(arg);
            Ok((T::to_cpu_storage_owned(out), self.geo.out_shape()))
        })
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let Some(arg) = self.argmax.get() else {
            candle_core::bail!("max_pool3d: backward before forward");
        };
        let dx = match x.dtype() {
            candle_core::DType::F32 => with_cpu_slices::<f32, _, 1>([dy], self.name(), |[dy]| {
                Tensor::from_vec(max_backward(dy, arg, &self.geo), x.shape(), x.device())
            })?,
            _ => with_cpu_slices::<f64, _, 1>([dy], self.name(), |[dy]| {
                Tensor::from_vec(max_backward(dy, arg, &self.geo), x.shape(), x.device())
            })?,
        };
        Ok(Some(dx))
    }
}

/// Max pooling of `x (N, C, D, H, W)` with −∞ padding; in backward the first maximum of each
/// window receives the gradient (PyTorch's rule).
///
/// `kernel`, `stride` and `padding` are per axis `[D, H, W]`; the output has
/// `floor((L + 2p − k) / s) + 1` positions per axis. f32 and f64 on the CPU. Errors: a
/// non-5D, non-float, non-CPU or empty (`D·H·W = 0`) input ([`Error::Input`]); a zero kernel
/// size or stride, or a padding above half the kernel ([`Error::InvalidParam`]); a padded
/// volume smaller than the window ([`Error::Input`]).
pub fn max_pool3d(
    x: &Tensor,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<Tensor> {
    let geo = Geometry::new("max_pool3d", x, kernel, stride, padding)?;
    let op = MaxPool3dOp {
        geo,
        argmax: OnceLock::new(),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

// ---------------------------------------------------------------------------------------------
// Average pooling.

/// Window sums divided by the full window size (padding counted).
fn avg_forward<T: Real>(x: &[T], g: &Geometry) -> Vec<T> {
    let (il, ol) = (g.in_len(), g.out_len());
    let [rd, rh, rw] = g.ranges();
    let [_, ih, iw] = g.input;
    let scale = T::from_f64(1.0 / g.window_size() as f64);
    let mut out = vec![T::from_f64(0.0); g.volumes() * ol];
    out.par_chunks_mut(ol).enumerate().for_each(|(v, out)| {
        let x = &x[v * il..(v + 1) * il];
        let mut j = 0;
        for &(d0, d1) in &rd {
            for &(h0, h1) in &rh {
                for &(w0, w1) in &rw {
                    let mut sum = T::from_f64(0.0);
                    for d in d0..d1 {
                        for h in h0..h1 {
                            let row = (d * ih + h) * iw;
                            for &val in &x[row + w0..row + w1] {
                                sum += val;
                            }
                        }
                    }
                    out[j] = sum * scale;
                    j += 1;
                }
            }
        }
    });
    out
}

/// Spreads each `dy / window_size` over its window (padding positions dropped).
fn avg_backward<T: Real>(dy: &[T], g: &Geometry) -> Vec<T> {
    let (il, ol) = (g.in_len(), g.out_len());
    let [rd, rh, rw] = g.ranges();
    let [_, ih, iw] = g.input;
    let scale = T::from_f64(1.0 / g.window_size() as f64);
    let mut dx = vec![T::from_f64(0.0); g.volumes() * il];
    dx.par_chunks_mut(il).enumerate().for_each(|(v, dx)| {
        let dy = &dy[v * ol..(v + 1) * ol];
        let mut j = 0;
        for &(d0, d1) in &rd {
            for &(h0, h1) in &rh {
                for &(w0, w1) in &rw {
                    let g = dy[j] * scale;
                    j += 1;
                    for d in d0..d1 {
                        for h in h0..h1 {
                            let row = (d * ih + h) * iw;
                            for val in &mut dx[row + w0..row + w1] {
                                *val += g;
                            }
                        }
                    }
                }
            }
        }
    });
    dx
}

/// Average pooling as a custom op.
struct AvgPool3dOp {
    geo: Geometry,
}

impl CustomOp1 for AvgPool3dOp {
    fn name(&self) -> &'static str {
        "avg_pool3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s, self.name(), |T| {
            let x = cpu_slice::<T>(s, l, self.name())?;
            let out = avg_forward(x, &self.geo);
            Ok((T::to_cpu_storage_owned(out), self.geo.out_shape()))
        })
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = match x.dtype() {
            candle_core::DType::F32 => with_cpu_slices::<f32, _, 1>([dy], self.name(), |[dy]| {
                Tensor::from_vec(avg_backward(dy, &self.geo), x.shape(), x.device())
            })?,
            _ => with_cpu_slices::<f64, _, 1>([dy], self.name(), |[dy]| {
                Tensor::from_vec(avg_backward(dy, &self.geo), x.shape(), x.device())
            })?,
        };
        Ok(Some(dx))
    }
}

/// Average pooling of `x (N, C, D, H, W)` (zero padding counted in the average, PyTorch's
/// default `count_include_pad = true`).
///
/// Same geometry, dtypes and errors as [`max_pool3d`]; in backward each output's gradient is
/// spread as `dy / (kD·kH·kW)` over its window.
pub fn avg_pool3d(
    x: &Tensor,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<Tensor> {
    let geo = Geometry::new("avg_pool3d", x, kernel, stride, padding)?;
    Ok(x.contiguous()?.apply_op1(AvgPool3dOp { geo })?)
}

// ---------------------------------------------------------------------------------------------
// Adaptive pooling to 1³.

fn non_empty(op: &'static str, x: &Tensor, volume: usize) -> Result<()> {
    if volume == 0 {
        return Err(Error::Input {
            op,
            problem: format!("cannot pool empty volumes, got shape {:?}", x.dims()),
        });
    }
    Ok(())
}

/// Adaptive average pooling to `1³`: `(N, C, D, H, W) → (N, C, 1, 1, 1)`, the mean over each
/// volume (candle ops, autograd included). Errors: a non-5D, non-float, non-CPU or empty
/// (`D·H·W = 0`) input.
pub fn adaptive_avg_pool3d_1(x: &Tensor) -> Result<Tensor> {
    let [n, c, d, h, w] = check_volume("adaptive_avg_pool3d", x)?;
    non_empty("adaptive_avg_pool3d", x, d * h * w)?;
    Ok(x.reshape((n, c, ()))?
        .mean_keepdim(2)?
        .reshape((n, c, 1, 1, 1))?)
}

/// Adaptive max pooling to `1³`: `(N, C, D, H, W) → (N, C, 1, 1, 1)`, the maximum of each
/// volume; in backward the first maximum receives the gradient (PyTorch's rule, NaN counting
/// as a maximum). Errors: a non-5D, non-float, non-CPU or empty (`D·H·W = 0`) input.
pub fn adaptive_max_pool3d_1(x: &Tensor) -> Result<Tensor> {
    let [_, _, d, h, w] = check_volume("adaptive_max_pool3d", x)?;
    non_empty("adaptive_max_pool3d", x, d * h * w)?;
    let geo = Geometry::new("adaptive_max_pool3d", x, [d, h, w], [d, h, w], [0; 3])?;
    let op = MaxPool3dOp {
        geo,
        argmax: OnceLock::new(),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The separable max pooling selects the same values and indices as the direct scan on
    /// inputs full of ties, −∞ and NaNs, over assorted geometries.
    #[test]
    fn separable_max_equals_direct_scan() {
        let mut state = 7u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let cases = [
            ([2, 3, 7, 6, 5], [3; 3], [2; 3], [1; 3]),
            ([1, 2, 9, 8, 7], [3, 2, 4], [1, 2, 3], [1, 1, 2]),
            ([1, 1, 4, 5, 6], [4, 5, 6], [4, 5, 6], [0; 3]),
            ([2, 2, 5, 5, 5], [2; 3], [1; 3], [0; 3]),
        ];
        for (shape, k, s, p) in cases {
            let len: usize = shape.iter().product();
            let x: Vec<f64> = (0..len)
                .map(|_| match next() % 10 {
                    0 => f64::NAN,
                    1 => f64::NEG_INFINITY,
                    r => (r % 4) as f64,
                })
                .collect();
            let t = Tensor::from_vec(x.clone(), &shape, &candle_core::Device::Cpu).unwrap();
            let g = Geometry::new("max_pool3d", &t, k, s, p).unwrap();
            let (a, ai) = max_forward(&x, &g);
            let (b, bi) = max_forward_direct(&x, &g);
            assert_eq!(ai, bi, "{shape:?} {k:?} {s:?} {p:?}");
            let same = |u: f64, v: f64| u == v || (u.is_nan() && v.is_nan());
            assert!(a.iter().zip(&b).all(|(&u, &v)| same(u, v)));
        }
    }

    /// Volumes of more than `u32::MAX` voxels cannot have their argmax recorded as u32.
    #[test]
    fn oversized_volumes_are_refused() {
        let dims = [1, 1, 2048, 2048, 1025];
        match Geometry::from_dims("max_pool3d", dims, [2; 3], [2; 3], [0; 3]) {
            Err(Error::Input { op, problem }) => {
                assert_eq!(op, "max_pool3d");
                assert!(problem.contains("[1, 1, 2048, 2048, 1025]"), "{problem}");
            }
            other => panic!("expected an input error, got {other:?}"),
        }
        assert!(
            Geometry::from_dims(
                "max_pool3d",
                [1, 1, 2048, 2048, 1023],
                [2; 3],
                [2; 3],
                [0; 3]
            )
            .is_ok()
        );
    }
}
