//! 3D pooling with PyTorch's semantics: CPU custom ops with hand-written backward passes.
//!
//! Output sizes follow PyTorch: `⌊(L + 2p − d·(k − 1) − 1 + (ceil_mode ? s − 1 : 0)) / s⌋ + 1`
//! per axis, where with `ceil_mode` the last window is dropped when it would start at or past
//! `L + p` (in the right padding); the padding may be at most half the kernel size. Max pooling
//! pads with −∞ and, in backward, gives each window's gradient to its first maximum in
//! (d, h, w) scan order (a NaN counts as a maximum, as in PyTorch); average pooling divides by
//! the window clipped to the padded volume `[−p, L + p)` (`count_include_pad = true`, the
//! default) or by its in-volume part (`false`). See [`Pool3dParams`].
//!
//! Max pooling without dilation runs separably (W, then H, then D); with a dilation it scans
//! each window directly.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::elem::{Real, check_volume, cpu_slice, dispatch, pick_index, with_cpu_slices};
use crate::{Error, Result};

/// Hyper-parameters of a 3D pooling, per axis `[D, H, W]`: the arguments of PyTorch's
/// `MaxPool3d` (`kernel_size`, `stride`, `padding`, `dilation`, `ceil_mode`) and `AvgPool3d`
/// (`kernel_size`, `stride`, `padding`, `ceil_mode`, `count_include_pad`).
///
/// Output size per axis: `⌊(L + 2p − d·(k − 1) − 1 + (ceil_mode ? s − 1 : 0)) / s⌋ + 1`,
/// minus one with `ceil_mode` when the last window would start at or past `L + p` (PyTorch's
/// rule: every window starts inside the volume or its left padding). Windows are clipped to
/// the volume; with `ceil_mode` the last one may reach past the right padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool3dParams {
    /// Window size per axis.
    pub kernel: [usize; 3],
    /// Stride per axis.
    pub stride: [usize; 3],
    /// Implicit padding per axis (both sides), at most half the kernel size.
    pub padding: [usize; 3],
    /// Spacing between window taps per axis (max pooling only; average pooling refuses
    /// anything but 1, as PyTorch's `AvgPool3d` has no dilation).
    pub dilation: [usize; 3],
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
    /// Average pooling only: divide by the window clipped to the padded volume (`true`,
    /// PyTorch's default) or by the number of in-volume elements (`false`). Ignored by max
    /// pooling.
    pub count_include_pad: bool,
}

impl Pool3dParams {
    /// Kernel, stride and padding per axis; dilation 1, `ceil_mode = false`,
    /// `count_include_pad = true` (PyTorch's defaults).
    pub fn new(kernel: [usize; 3], stride: [usize; 3], padding: [usize; 3]) -> Self {
        Self {
            kernel,
            stride,
            padding,
            dilation: [1; 3],
            ceil_mode: false,
            count_include_pad: true,
        }
    }

    /// Sets the per-axis dilation.
    pub fn with_dilation(mut self, dilation: [usize; 3]) -> Self {
        self.dilation = dilation;
        self
    }

    /// Sets `ceil_mode`.
    pub fn with_ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }

    /// Sets `count_include_pad`.
    pub fn with_count_include_pad(mut self, count_include_pad: bool) -> Self {
        self.count_include_pad = count_include_pad;
        self
    }

    /// Output size `(oD, oH, oW)` for an input volume `(D, H, W)` (see the type's docs).
    /// Errors: a zero kernel size, stride or dilation, a padding above half the kernel
    /// ([`Error::InvalidParam`]); an input too small for one window ([`Error::Input`], `op`
    /// naming the caller).
    pub fn output_size(&self, op: &'static str, input: [usize; 3]) -> Result<[usize; 3]> {
        for (name, v) in [
            ("kernel_size", self.kernel),
            ("stride", self.stride),
            ("dilation", self.dilation),
        ] {
            if v.contains(&0) {
                return Err(Error::InvalidParam {
                    name,
                    value: format!("{v:?}"),
                    reason: format!("every {name} must be positive"),
                });
            }
        }
        let (kernel, padding) = (self.kernel, self.padding);
        if (0..3).any(|a| padding[a] > kernel[a] / 2) {
            return Err(Error::InvalidParam {
                name: "padding",
                value: format!("{padding:?}"),
                reason: format!("must be at most half the kernel size {kernel:?} on every axis"),
            });
        }
        let mut output = [0; 3];
        for a in 0..3 {
            let (l, p, s) = (input[a], padding[a], self.stride[a]);
            let span = self.dilation[a] * (kernel[a] - 1) + 1;
            let round = if self.ceil_mode { s - 1 } else { 0 };
            let Some(num) = (l + 2 * p + round).checked_sub(span) else {
                return Err(Error::Input {
                    op,
                    problem: format!(
                        "input volume {input:?} is too small for kernel {kernel:?} with \
                         padding {padding:?} and dilation {:?} (axis {a}: window span \
                         {span} > {})",
                        self.dilation,
                        l + 2 * p + round
                    ),
                });
            };
            let mut o = num / s + 1;
            if self.ceil_mode && (o - 1) * s >= l + p {
                o -= 1;
            }
            output[a] = o;
        }
        Ok(output)
    }
}

/// Shape bookkeeping of one pooling call: `nc` volumes of `input` voxels, `output` windows.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    input: [usize; 3],
    output: [usize; 3],
    params: Pool3dParams,
}

impl Geometry {
    /// Validates the input and hyper-parameters (PyTorch's rules) and computes output sizes.
    fn new(op: &'static str, x: &Tensor, params: Pool3dParams) -> Result<Self> {
        Self::from_dims(op, check_volume(op, x)?, params)
    }

    /// [`Geometry::new`] on the dims of a checked input.
    fn from_dims(op: &'static str, dims: [usize; 5], params: Pool3dParams) -> Result<Self> {
        let [n, c, d, h, w] = dims;
        if d * h * w == 0 {
            return Err(Error::Input {
                op,
                problem: format!("cannot pool empty volumes, got shape {dims:?}"),
            });
        }
        let input = [d, h, w];
        let output = params.output_size(op, input).map_err(|e| match e {
            Error::Input { op, problem } => Error::Input {
                op,
                problem: format!("input shape {dims:?}: {problem}"),
            },
            e => e,
        })?;
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
            params,
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

    /// Per axis and output position, the window's first tap `o·s − p` (possibly negative).
    fn start(&self, a: usize, o: usize) -> isize {
        (o * self.params.stride[a]) as isize - self.params.padding[a] as isize
    }

    /// Per axis, the input range `[start, end)` each output position covers, clipped to the
    /// volume (the clipped part is padding), for dilation 1. Never empty: the padding is at
    /// most k/2 and every window starts before `L` (PyTorch's `ceil_mode` rule).
    fn ranges(&self) -> [Vec<(usize, usize)>; 3] {
        std::array::from_fn(|a| {
            (0..self.output[a])
                .map(|o| {
                    let start = self.start(a, o);
                    let end = start + self.params.kernel[a] as isize;
                    (
                        start.max(0) as usize,
                        end.min(self.input[a] as isize) as usize,
                    )
                })
                .collect()
        })
    }

    /// Per axis and output position, the in-volume positions of the window's taps
    /// `o·s − p + j·d`, `j < k`, in order. Empty when every tap falls in the padding (possible
    /// with a dilation).
    fn taps(&self) -> [Vec<Vec<usize>>; 3] {
        std::array::from_fn(|a| {
            let (k, d, len) = (
                self.params.kernel[a],
                self.params.dilation[a] as isize,
                self.input[a] as isize,
            );
            (0..self.output[a])
                .map(|o| {
                    let start = self.start(a, o);
                    (0..k as isize)
                        .map(|j| start + j * d)
                        .filter(|&i| (0..len).contains(&i))
                        .map(|i| i as usize)
                        .collect()
                })
                .collect()
        })
    }

    /// Per axis and output position, the divisor factor of average pooling: the window's
    /// length clipped to the padded volume `[−p, L + p)` with `count_include_pad`, to the
    /// volume otherwise (dilation 1).
    fn divisors(&self) -> [Vec<usize>; 3] {
        std::array::from_fn(|a| {
            let (k, p, len) = (
                self.params.kernel[a] as isize,
                self.params.padding[a] as isize,
                self.input[a] as isize,
            );
            (0..self.output[a])
                .map(|o| {
                    let start = self.start(a, o);
                    let n = if self.params.count_include_pad {
                        (start + k).min(len + p) - start
                    } else {
                        (start + k).min(len) - start.max(0)
                    };
                    n as usize
                })
                .collect()
        })
    }
}

/// The argmax recorded for a max-pooling window with no in-volume tap (output −∞, no
/// gradient). Never a valid index: volumes have at most `u32::MAX` voxels.
const NO_TAP: u32 = u32::MAX;

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

/// The maxima of [`max_forward`] without their indices (the same separable passes): what the
/// forward pass returns; the backward pass recomputes the indices from the input.
fn max_forward_values<T: Real>(x: &[T], g: &Geometry) -> Vec<T> {
    let (il, ol) = (g.in_len(), g.out_len());
    let [rd, rh, rw] = g.ranges();
    let [id, ih, iw] = g.input;
    let [_, oh, ow] = g.output;
    let mut out = vec![T::from_f64(0.0); g.volumes() * ol];
    out.par_chunks_mut(ol).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(av, bv), (v, out)| {
            let x = &x[v * il..(v + 1) * il];
            // Along W: (D, H, OW).
            av.clear();
            av.resize(id * ih * ow, T::NEG_INFINITY);
            for (row, mv) in x.chunks_exact(iw).zip(av.chunks_exact_mut(ow)) {
                for (m, &(w0, w1)) in mv.iter_mut().zip(&rw) {
                    let mut best = row[w0];
                    for &val in &row[w0 + 1..w1] {
                        best = T::pick((val > best) | val.is_nan(), val, best);
                    }
                    *m = best;
                }
            }
            // Along H: (D, OH, OW).
            bv.clear();
            bv.resize(id * oh * ow, T::NEG_INFINITY);
            for d in 0..id {
                for (o, &(h0, h1)) in rh.iter().enumerate() {
                    let dst = &mut bv[(d * oh + o) * ow..(d * oh + o + 1) * ow];
                    fold_max(dst, &av[(d * ih + h0) * ow..(d * ih + h1) * ow]);
                }
            }
            // Along D: (OD, OH, OW).
            let plane = oh * ow;
            for (o, &(d0, d1)) in rd.iter().enumerate() {
                fold_max(
                    &mut out[o * plane..(o + 1) * plane],
                    &bv[d0 * plane..d1 * plane],
                );
            }
        },
    );
    out
}

/// [`select_max`] without the indices: the maximum of the rows of `vals`, NaN winning.
#[inline]
fn fold_max<T: Real>(m: &mut [T], vals: &[T]) {
    let n = m.len();
    m.copy_from_slice(&vals[..n]);
    for vals in vals[n..].chunks_exact(n) {
        for (m, &v) in m.iter_mut().zip(vals) {
            *m = T::pick((v > *m) | v.is_nan(), v, *m);
        }
    }
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

/// Max pooling window by window, over the taps of [`Geometry::taps`] in (d, h, w) order with
/// PyTorch's rule (the first tap initialises the argmax, a later value replaces the maximum
/// only if strictly greater or NaN): the path for dilated windows, and the oracle of the
/// separable [`max_forward`] in the tests. A window with no in-volume tap gives −∞ and
/// [`NO_TAP`].
fn max_forward_direct<T: Real>(x: &[T], g: &Geometry) -> (Vec<T>, Vec<u32>) {
    let (il, ol) = (g.in_len(), g.out_len());
    let [td, th, tw] = g.taps();
    let [_, ih, iw] = g.input;
    let mut out = vec![T::from_f64(0.0); g.volumes() * ol];
    let mut arg = vec![0u32; g.volumes() * ol];
    out.par_chunks_mut(ol)
        .zip(arg.par_chunks_mut(ol))
        .enumerate()
        .for_each(|(v, (out, arg))| {
            let x = &x[v * il..(v + 1) * il];
            let mut j = 0;
            for dd in &td {
                for hh in &th {
                    for ww in &tw {
                        let mut best = NO_TAP;
                        let mut max = T::NEG_INFINITY;
                        for &d in dd {
                            for &h in hh {
                                let row = (d * ih + h) * iw;
                                for &w in ww {
                                    let val = x[row + w];
                                    if best == NO_TAP {
                                        best = (row + w) as u32;
                                    }
                                    if val > max || val.is_nan() {
                                        max = val;
                                        best = (row + w) as u32;
                                    }
                                }
                            }
                        }
                        out[j] = max;
                        arg[j] = best;
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
            // `NO_TAP` (an empty dilated window) is out of range: no gradient.
            if let Some(d) = dx.get_mut(a as usize) {
                *d += g;
            }
        }
    });
    dx
}

/// Max pooling as a custom op. The forward pass computes the maxima only (inference pays no
/// index bookkeeping); the backward pass recomputes the argmax from the input, then
/// scatter-adds.
struct MaxPool3dOp {
    geo: Geometry,
}

impl CustomOp1 for MaxPool3dOp {
    fn name(&self) -> &'static str {
        "max_pool3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s, self.name(), |T| {
            let x = cpu_slice::<T>(s, l, self.name())?;
            let out = if self.geo.params.dilation == [1; 3] {
                max_forward_values(x, &self.geo)
            } else {
                max_forward_direct(x, &self.geo).0
            };
            Ok((T::to_cpu_storage_owned(out), self.geo.out_shape()))
        })
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        fn grad<T: Real>(geo: &Geometry, x: &[T], dy: &[T]) -> Vec<T> {
            let (_, arg) = if geo.params.dilation == [1; 3] {
                max_forward(x, geo)
            } else {
                max_forward_direct(x, geo)
            };
            max_backward(dy, &arg, geo)
        }
        let (shape, device) = (x.shape(), x.device());
        let dx = match x.dtype() {
            candle_core::DType::F32 => {
                with_cpu_slices::<f32, _, 2>([x, dy], self.name(), |[xs, dys]| {
                    Tensor::from_vec(grad(&self.geo, xs, dys), shape, device)
                })?
            }
            _ => with_cpu_slices::<f64, _, 2>([x, dy], self.name(), |[xs, dys]| {
                Tensor::from_vec(grad(&self.geo, xs, dys), shape, device)
            })?,
        };
        Ok(Some(dx))
    }
}

/// Max pooling of `x (N, C, D, H, W)` with −∞ padding; in backward the first maximum of each
/// window receives the gradient (PyTorch's rule).
///
/// `kernel`, `stride` and `padding` are per axis `[D, H, W]`; the output has
/// `floor((L + 2p − k) / s) + 1` positions per axis (dilation 1, `ceil_mode = false`; see
/// [`max_pool3d_with`] for the others). f32 and f64 on the CPU. Errors: a non-5D, non-float,
/// non-CPU or empty (`D·H·W = 0`) input ([`Error::Input`]); a zero kernel size or stride, or a
/// padding above half the kernel ([`Error::InvalidParam`]); a padded volume smaller than the
/// window ([`Error::Input`]).
pub fn max_pool3d(
    x: &Tensor,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<Tensor> {
    max_pool3d_with(x, &Pool3dParams::new(kernel, stride, padding))
}

/// Max pooling of `x (N, C, D, H, W)` with every option of PyTorch's `MaxPool3d`
/// ([`Pool3dParams`]: dilation, `ceil_mode`; `count_include_pad` is ignored).
///
/// Same semantics, dtypes and errors as [`max_pool3d`] (plus a zero dilation). A dilated
/// window whose taps all fall in the padding outputs −∞ and passes no gradient.
pub fn max_pool3d_with(x: &Tensor, params: &Pool3dParams) -> Result<Tensor> {
    let geo = Geometry::new("max_pool3d", x, *params)?;
    let op = MaxPool3dOp { geo };
    Ok(x.contiguous()?.apply_op1(op)?)
}

// ---------------------------------------------------------------------------------------------
// Average pooling.

/// `1 / divisor` of every window, in output order ([`Geometry::divisors`]).
fn avg_scales<T: Real>(g: &Geometry) -> Vec<T> {
    let [fd, fh, fw] = g.divisors();
    let mut scales = Vec::with_capacity(g.out_len());
    for &a in &fd {
        for &b in &fh {
            for &c in &fw {
                scales.push(T::from_f64(1.0 / (a * b * c) as f64));
            }
        }
    }
    scales
}

/// Window sums divided by the window's divisor (see [`Geometry::divisors`]).
fn avg_forward<T: Real>(x: &[T], g: &Geometry) -> Vec<T> {
    let (il, ol) = (g.in_len(), g.out_len());
    let [rd, rh, rw] = g.ranges();
    let [_, ih, iw] = g.input;
    let scales = avg_scales::<T>(g);
    let mut out = vec![T::from_f64(0.0); g.volumes() * ol];
    out.par_chunks_mut(ol).enumerate().for_each(|(v, out)| {
        let x = &x[v * il..(v + 1) * il];
        let mut j = 0;
        for &(d0, d1) in &rd {
            for &(h0, h1) in &rh {
                for &(w0, w1) in &rw {
                    let scale = scales[j];
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

/// Spreads each `dy / divisor` over its window (padding positions dropped).
fn avg_backward<T: Real>(dy: &[T], g: &Geometry) -> Vec<T> {
    let (il, ol) = (g.in_len(), g.out_len());
    let [rd, rh, rw] = g.ranges();
    let [_, ih, iw] = g.input;
    let scales = avg_scales::<T>(g);
    let mut dx = vec![T::from_f64(0.0); g.volumes() * il];
    dx.par_chunks_mut(il).enumerate().for_each(|(v, dx)| {
        let dy = &dy[v * ol..(v + 1) * ol];
        let mut j = 0;
        for &(d0, d1) in &rd {
            for &(h0, h1) in &rh {
                for &(w0, w1) in &rw {
                    let g = dy[j] * scales[j];
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
/// spread as `dy / (kD·kH·kW)` over its window. See [`avg_pool3d_with`] for `ceil_mode` and
/// `count_include_pad = false`.
pub fn avg_pool3d(
    x: &Tensor,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<Tensor> {
    avg_pool3d_with(x, &Pool3dParams::new(kernel, stride, padding))
}

/// Average pooling of `x (N, C, D, H, W)` with every option of PyTorch's `AvgPool3d` but
/// `divisor_override` ([`Pool3dParams`]: `ceil_mode`, `count_include_pad`).
///
/// Each window's sum is divided by its length clipped to the padded volume `[−p, L + p)` per
/// axis (`count_include_pad = true`: `k³` except for `ceil_mode`'s last windows) or by its
/// number of in-volume elements (`false`), as PyTorch does; in backward each output's gradient
/// is spread as `dy / divisor` over the window. Same dtypes and errors as [`max_pool3d`], plus
/// [`Error::InvalidParam`] for a dilation other than 1.
pub fn avg_pool3d_with(x: &Tensor, params: &Pool3dParams) -> Result<Tensor> {
    if params.dilation != [1; 3] {
        return Err(Error::InvalidParam {
            name: "dilation",
            value: format!("{:?}", params.dilation),
            reason: "average pooling has no dilation (PyTorch's AvgPool3d takes none): must \
                     be [1, 1, 1]"
                .into(),
        });
    }
    let geo = Geometry::new("avg_pool3d", x, *params)?;
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
    let params = Pool3dParams::new([d, h, w], [d, h, w], [0; 3]);
    let geo = Geometry::new("adaptive_max_pool3d", x, params)?;
    let op = MaxPool3dOp { geo };
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
            let g = Geometry::new("max_pool3d", &t, Pool3dParams::new(k, s, p)).unwrap();
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
        let params = Pool3dParams::new([2; 3], [2; 3], [0; 3]);
        match Geometry::from_dims("max_pool3d", dims, params) {
            Err(Error::Input { op, problem }) => {
                assert_eq!(op, "max_pool3d");
                assert!(problem.contains("[1, 1, 2048, 2048, 1025]"), "{problem}");
            }
            other => panic!("expected an input error, got {other:?}"),
        }
        assert!(Geometry::from_dims("max_pool3d", [1, 1, 2048, 2048, 1023], params).is_ok());
    }
}
