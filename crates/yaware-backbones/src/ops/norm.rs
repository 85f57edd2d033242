//! `BatchNorm3d` with a fused forward and backward.
//!
//! On the CPU the whole layer (statistics, normalisation, affine map and optionally the ReLU)
//! is one `CustomOp3(x, γ, β)` whose forward makes one pass for the statistics and one for the
//! output, and whose backward makes two passes (per-channel sums, then `dx`). Both run one
//! rayon task per channel, whose second pass re-reads the channel while it is still in cache
//! (in eval mode the forward needs no statistics pass and splits the work over planes).
//! f32 inputs accumulate statistics in f64. Other devices use composed candle ops (same
//! results, autograd from candle).

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, Var, WithDType};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use super::elem::{Real, cpu_slice, dispatch, with_cpu_slices};
use crate::{Error, Result};

/// PyTorch's default `eps`.
const EPS: f64 = 1e-5;
/// PyTorch's default `momentum`.
const MOMENTUM: f64 = 0.1;

/// 3D batch normalisation over `(N, D, H, W)` per channel: eps 1e-5, momentum 0.1, running
/// variance updated with the unbiased batch variance, `num_batches_tracked` counted. Its
/// variables are `weight`, `bias`, `running_mean`, `running_var` and `num_batches_tracked`
/// (an I64 scalar) under the builder's prefix.
///
/// With a builder backed by a `VarMap` the five variables are the map's own `Var`s (so saving
/// the map is a checkpoint with PyTorch's `state_dict` names, and gradients of `weight` and
/// `bias` are found with `grads.get(&var)`); with a builder backed by plain tensors
/// (`VarBuilder::from_tensors`, safetensors) they are copied into `Var`s owned by the layer,
/// so train mode can still update the running statistics. Clones share the variables.
#[derive(Debug, Clone)]
pub struct BatchNorm3d {
    num_features: usize,
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
}

impl BatchNorm3d {
    /// Creates (weight 1, bias 0, running mean 0, running variance 1, counter 0) or loads the
    /// variables of a batch norm over `num_features` channels, in the builder's dtype (f32 or
    /// f64).
    ///
    /// A missing `num_batches_tracked` loads as 0 (PyTorch does the same for old checkpoints).
    /// Errors: `num_features == 0` ([`Error::InvalidParam`]); a builder dtype other than f32
    /// or f64 ([`Error::Input`]); a missing variable ([`Error::MissingWeight`]) or one of the
    /// wrong shape ([`Error::WeightShape`]), both naming the variable.
    pub fn new(num_features: usize, vb: VarBuilder) -> Result<Self> {
        if num_features == 0 {
            return Err(Error::InvalidParam {
                name: "num_features",
                value: "0".into(),
                reason: "a batch norm needs at least one channel".into(),
            });
        }
        let dtype = vb.dtype();
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::Input {
                op: "batch_norm3d",
                problem: format!("parameters must be f32 or f64, the builder's dtype is {dtype:?}"),
            });
        }
        let c = [num_features];
        let weight = variable(&vb, &c, "weight", Init::Const(1.0), dtype)?;
        let bias = variable(&vb, &c, "bias", Init::Const(0.0), dtype)?;
        let running_mean = variable(&vb, &c, "running_mean", Init::Const(0.0), dtype)?;
        let running_var = variable(&vb, &c, "running_var", Init::Const(1.0), dtype)?;
        let name = "num_batches_tracked";
        let num_batches_tracked = if vb.contains_tensor(name) {
            variable(&vb, &[], name, Init::Const(0.0), DType::I64)?
        } else {
            match vb.get_with_hints_dtype((), name, Init::Const(0.0), DType::I64) {
                // A VarMap creates it.
                Ok(t) => Var::from_tensor(&t)?,
                // Plain tensors without a counter.
                Err(_) => Var::zeros((), DType::I64, vb.device())?,
            }
        };
        Ok(Self {
            num_features,
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
        })
    }

    /// Number of channels.
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// The scale γ, `(C,)`.
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// The shift β, `(C,)`.
    pub fn bias(&self) -> &Var {
        &self.bias
    }

    /// The running mean, `(C,)`.
    pub fn running_mean(&self) -> &Var {
        &self.running_mean
    }

    /// The running (unbiased) variance, `(C,)`.
    pub fn running_var(&self) -> &Var {
        &self.running_var
    }

    /// How many train-mode forward passes updated the running statistics.
    pub fn num_batches_tracked(&self) -> Result<i64> {
        Ok(self.num_batches_tracked.as_tensor().to_scalar::<i64>()?)
    }

    /// Normalises `x (N, C, D, H, W)`; train mode uses batch statistics and updates the
    /// running ones.
    ///
    /// Errors ([`Error::Input`], naming the shape or dtype): a non-5D input, a channel count
    /// other than [`BatchNorm3d::num_features`], a dtype other than the parameters', and in
    /// train mode a single value per channel (`N·D·H·W < 2`).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, false, x.device().is_cpu())
    }

    /// `relu(self.forward_t(x, train))`, fused (same errors as [`BatchNorm3d::forward_t`]).
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, true, x.device().is_cpu())
    }

    /// The forward pass, through the fused custom op or composed candle ops.
    fn forward_impl(&self, x: &Tensor, train: bool, relu: bool, fused: bool) -> Result<Tensor> {
        let count = self.check(x, train)?;
        if !fused {
            return self.forward_composed(x, train, relu, count);
        }
        let stash = Arc::new(OnceLock::new());
        if !train {
            let mean = to_f64s(self.running_mean.as_tensor())?;
            let var = to_f64s(self.running_var.as_tensor())?;
            let _ = stash.set(ChannelStats::new(mean, var));
        }
        let op = BatchNormOp {
            train,
            relu,
            stats: Arc::clone(&stash),
        };
        let (w, b) = (self.weight.as_tensor(), self.bias.as_tensor());
        let y = x.contiguous()?.apply_op3(w, b, op)?;
        if train {
            let Some(stats) = stash.get() else {
                let msg = "batch_norm3d: the forward pass recorded no statistics";
                return Err(candle_core::Error::Msg(msg.into()).into());
            };
            self.update_running(&stats.mean, &stats.var, count)?;
        }
        Ok(y)
    }

    /// Validates `x` and returns the number of values per channel.
    fn check(&self, x: &Tensor, train: bool) -> Result<usize> {
        let op = "batch_norm3d";
        let [n, c, d, h, w]: [usize; 5] = x.dims().try_into().map_err(|_| Error::Input {
            op,
            problem: format!(
                "expected a 5D input (N, C, D, H, W), got shape {:?}",
                x.dims()
            ),
        })?;
        if c != self.num_features {
            return Err(Error::Input {
                op,
                problem: format!(
                    "expected {} channels, got shape {:?}",
                    self.num_features,
                    x.dims()
                ),
            });
        }
        let dtype = self.weight.dtype();
        if x.dtype() != dtype {
            return Err(Error::Input {
                op,
                problem: format!(
                    "expected a {dtype:?} input (the parameters' dtype), got {:?}",
                    x.dtype()
                ),
            });
        }
        let count = n * d * h * w;
        if train && count < 2 {
            return Err(Error::Input {
                op,
                problem: format!(
                    "expected more than 1 value per channel when training, got shape {:?}",
                    x.dims()
                ),
            });
        }
        Ok(count)
    }

    /// `r ← (1 − m)·r + m·stat` with the unbiased variance, and one more batch tracked.
    fn update_running(&self, mean: &[f64], var: &[f64], count: usize) -> Result<()> {
        let unbias = count as f64 / (count - 1) as f64;
        let old_mean = to_f64s(self.running_mean.as_tensor())?;
        let old_var = to_f64s(self.running_var.as_tensor())?;
        let new_mean: Vec<f64> = old_mean
            .iter()
            .zip(mean)
            .map(|(r, s)| (1.0 - MOMENTUM) * r + MOMENTUM * s)
            .collect();
        let new_var: Vec<f64> = old_var
            .iter()
            .zip(var)
            .map(|(r, s)| (1.0 - MOMENTUM) * r + MOMENTUM * s * unbias)
            .collect();
        let (dtype, dev) = (self.running_mean.dtype(), self.running_mean.device());
        let c = self.num_features;
        self.running_mean
            .set(&Tensor::from_vec(new_mean, c, dev)?.to_dtype(dtype)?)?;
        self.running_var
            .set(&Tensor::from_vec(new_var, c, dev)?.to_dtype(dtype)?)?;
        self.bump_counter()
    }

    fn bump_counter(&self) -> Result<()> {
        let n = self.num_batches_tracked()?;
        let dev = self.num_batches_tracked.device();
        self.num_batches_tracked.set(&Tensor::new(n + 1, dev)?)?;
        Ok(())
    }

    /// The same layer from candle ops (any device; autograd from candle).
    fn forward_composed(
        &self,
        x: &Tensor,
        train: bool,
        relu: bool,
        count: usize,
    ) -> Result<Tensor> {
        let shape = (1, self.num_features, 1, 1, 1);
        let dims = (0, 2, 3, 4);
        let (mean, var) = if train {
            let mean = x.mean_keepdim(dims)?;
            let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(dims)?;
            let unbias = count as f64 / (count - 1) as f64;
            let m = MOMENTUM;
            let new_mean = (self.running_mean.as_tensor().affine(1.0 - m, 0.0)?
                + mean.detach().flatten_all()?.affine(m, 0.0)?)?;
            let new_var = (self.running_var.as_tensor().affine(1.0 - m, 0.0)?
                + var.detach().flatten_all()?.affine(m * unbias, 0.0)?)?;
            self.running_mean.set(&new_mean)?;
            self.running_var.set(&new_var)?;
            self.bump_counter()?;
            (mean, var)
        } else {
            (
                self.running_mean.as_tensor().reshape(shape)?,
                self.running_var.as_tensor().reshape(shape)?,
            )
        };
        let y = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + EPS)?.sqrt()?)?
            .broadcast_mul(&self.weight.as_tensor().reshape(shape)?)?
            .broadcast_add(&self.bias.as_tensor().reshape(shape)?)?;
        Ok(if relu { y.relu()? } else { y })
    }
}

/// Reads (or, in a `VarMap`, creates) the variable `name` and wraps it in a `Var`: the map's
/// own `Var` when there is one, else a copy owned by the layer. Missing or misshapen variables
/// are typed errors naming them.
fn variable(vb: &VarBuilder, shape: &[usize], name: &str, init: Init, dtype: DType) -> Result<Var> {
    match vb.get_with_hints_dtype(shape, name, init, dtype) {
        Ok(t) => Ok(Var::from_tensor(&t)?),
        Err(e) => {
            let prefix = vb.prefix();
            let full = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}.{name}")
            };
            if !vb.contains_tensor(name) {
                return Err(Error::MissingWeight {
                    name: full,
                    expected: shape.to_vec(),
                });
            }
            match vb.get_unchecked_dtype(name, dtype) {
                Ok(t) if t.dims() != shape => Err(Error::WeightShape {
                    name: full,
                    got: t.dims().to_vec(),
                    expected: shape.to_vec(),
                }),
                // A VarMap cannot be read unchecked: candle's message names both shapes.
                _ => Err(e.into()),
            }
        }
    }
}

fn to_f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.to_vec1()?)
}

// ---------------------------------------------------------------------------------------------
// The fused CPU op.

/// Per-channel statistics used to normalise: mean, biased variance and `1/sqrt(var + eps)`.
#[derive(Debug)]
struct ChannelStats {
    mean: Vec<f64>,
    var: Vec<f64>,
    invstd: Vec<f64>,
}

impl ChannelStats {
    fn new(mean: Vec<f64>, var: Vec<f64>) -> Self {
        let invstd = var.iter().map(|v| 1.0 / (v + EPS).sqrt()).collect();
        Self { mean, var, invstd }
    }
}

/// `y = (x − μ)·γ/sqrt(σ² + eps) + β` (then ReLU if `relu`), with batch statistics (`train`,
/// computed by the forward pass and stashed) or fixed ones (stashed before the op runs).
struct BatchNormOp {
    train: bool,
    relu: bool,
    stats: Arc<OnceLock<ChannelStats>>,
}

/// `(N, C, S)` of a 5D shape (`S = D·H·W`).
fn ncs(shape: &Shape) -> (usize, usize, usize) {
    let d = shape.dims();
    (d[0], d[1], d[2..].iter().product())
}

/// `Σ (v − shift)` and `Σ (v − shift)²` in f64 with independent lanes (vectorisable).
#[inline]
fn shifted_sums<T: Real>(xs: &[T], shift: f64) -> (f64, f64) {
    const L: usize = 8;
    let mut s = [0.0f64; L];
    let mut q = [0.0f64; L];
    let chunks = xs.chunks_exact(L);
    let rem = chunks.remainder();
    for c in chunks {
        for i in 0..L {
            let v = c[i].to_f64() - shift;
            s[i] += v;
            q[i] += v * v;
        }
    }
    let (mut s, mut q) = (s.iter().sum::<f64>(), q.iter().sum::<f64>());
    for &v in rem {
        let v = v.to_f64() - shift;
        s += v;
        q += v * v;
    }
    (s, q)
}

/// The `(sample, channel)` planes of channel `ch` in a `(N, C, S)` buffer.
fn planes<T>(buf: &[T], n: usize, c: usize, s: usize, ch: usize) -> impl Iterator<Item = &[T]> {
    (0..n).map(move |b| &buf[(b * c + ch) * s..(b * c + ch + 1) * s])
}

/// The `(sample, channel)` planes of a `(N, C, S)` buffer as disjoint mutable slices, grouped
/// by channel, so one task can own a whole channel.
fn planes_by_channel<T>(buf: &mut [T], c: usize, s: usize) -> Vec<Vec<&mut [T]>> {
    let mut groups: Vec<Vec<&mut [T]>> = (0..c).map(|_| Vec::new()).collect();
    if s > 0 {
        for (i, plane) in buf.chunks_mut(s).enumerate() {
            groups[i % c].push(plane);
        }
    }
    groups
}

/// Mean and biased variance of channel `ch` (shifted by its first value for accuracy).
fn moments<T: Real>(x: &[T], (n, c, s): (usize, usize, usize), ch: usize) -> (f64, f64) {
    let count = (n * s) as f64;
    let shift = x[ch * s].to_f64();
    let (mut sum, mut sq) = (0.0, 0.0);
    for plane in planes(x, n, c, s, ch) {
        let (a, q) = shifted_sums(plane, shift);
        sum += a;
        sq += q;
    }
    let m = sum / count;
    (shift + m, (sq / count - m * m).max(0.0))
}

/// Fewest values per parallel task of the eval-mode forward pass.
const MIN_TASK: usize = 1 << 14;

/// The forward pass. In train mode one task per channel (its statistics, then its output
/// while its values are still in cache); with fixed statistics (eval mode) tasks of whole
/// planes. Returns the output and each channel's (mean, biased variance).
fn forward_kernel<T: Real>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    ncs: (usize, usize, usize),
    fixed: Option<&ChannelStats>,
    relu: bool,
) -> (Vec<T>, Vec<(f64, f64)>) {
    let (n, c, s) = ncs;
    let zero = T::from_f64(0.0);
    if let Some(st) = fixed
        && s > 0
    {
        // Fixed statistics: no pass per channel is needed, so the work is split over planes
        // in blocks of at least `MIN_TASK` values (deep layers have many tiny planes).
        let coef: Vec<(T, T, T)> = (0..c)
            .map(|ch| {
                let a = gamma[ch].to_f64() / (st.var[ch] + EPS).sqrt();
                (T::from_f64(st.mean[ch]), T::from_f64(a), beta[ch])
            })
            .collect();
        // Written once, not zeroed first (a zeroed allocation is a single-threaded `memset`
        // of the whole output when the allocator reuses memory).
        let mut out: Vec<T> = Vec::with_capacity(x.len());
        out.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(s)
            .zip(x.par_chunks(s))
            .enumerate()
            .with_min_len(MIN_TASK.div_ceil(s))
            .for_each(|(plane, (out, x))| {
                let (m, a, b) = coef[plane % c];
                if relu {
                    for (o, &v) in out.iter_mut().zip(x) {
                        let y = (v - m) * a + b;
                        o.write(T::pick(y < zero, zero, y));
                    }
                } else {
                    for (o, &v) in out.iter_mut().zip(x) {
                        o.write((v - m) * a + b);
                    }
                }
            });
        // SAFETY: the planes of `s` values cover all `x.len()` slots (`x.len()` is a multiple
        // of `s`: N·C planes) and each slot was written once.
        unsafe { out.set_len(x.len()) };
        return (
            out,
            st.mean
                .iter()
                .copied()
                .zip(st.var.iter().copied())
                .collect(),
        );
    }
    let mut out = vec![zero; x.len()];
    let stats = planes_by_channel(&mut out, c, s)
        .into_par_iter()
        .enumerate()
        .map(|(ch, outs)| {
            let (mean, var) = match fixed {
                Some(st) => (st.mean[ch], st.var[ch]),
                None => moments(x, ncs, ch),
            };
            let a = gamma[ch].to_f64() / (var + EPS).sqrt();
            let (m, a, b) = (T::from_f64(mean), T::from_f64(a), beta[ch]);
            for (out, x) in outs.into_iter().zip(planes(x, n, c, s, ch)) {
                if relu {
                    for (o, &v) in out.iter_mut().zip(x) {
                        let y = (v - m) * a + b;
                        *o = T::pick(y < zero, zero, y);
                    }
                } else {
                    for (o, &v) in out.iter_mut().zip(x) {
                        *o = (v - m) * a + b;
                    }
                }
            }
            (mean, var)
        })
        .collect();
    (out, stats)
}

/// The backward pass, one task per channel: `Σg` and `Σg·(x − μ)` (g = dy masked by the ReLU
/// output if given), then, if `dx` is wanted, `dx = a·g + k1·(x − μ) + k0` while the channel
/// is still in cache (k1 = k0 = 0 in eval mode). Returns `dx` and the per-channel sums.
#[allow(clippy::too_many_arguments)]
fn backward_kernel<T: Real>(
    x: &[T],
    gamma: &[T],
    res: Option<&[T]>,
    dy: &[T],
    ncs: (usize, usize, usize),
    st: &ChannelStats,
    train: bool,
    need_dx: bool,
) -> (Vec<T>, Vec<(f64, f64)>) {
    let (n, c, s) = ncs;
    let zero = T::from_f64(0.0);
    let count = (n * s) as f64;
    let mut dx = if need_dx {
        vec![zero; x.len()]
    } else {
        Vec::new()
    };
    let groups: Vec<Option<Vec<&mut [T]>>> = if need_dx {
        planes_by_channel(&mut dx, c, s)
            .into_iter()
            .map(Some)
            .collect()
    } else {
        (0..c).map(|_| None).collect()
    };
    let sums = groups
        .into_par_iter()
        .enumerate()
        .map(|(ch, dxs)| {
            let mean = st.mean[ch];
            let (mut sg, mut sgx) = (0.0, 0.0);
            for b in 0..n {
                let r = (b * c + ch) * s..(b * c + ch + 1) * s;
                let res = res.map(|res| &res[r.clone()]);
                let (a, q) = grad_sums(&x[r.clone()], &dy[r], res, mean);
                sg += a;
                sgx += q;
            }
            let Some(dxs) = dxs else {
                return (sg, sgx);
            };
            let inv = st.invstd[ch];
            let a = gamma[ch].to_f64() * inv;
            let (k1, k0) = if train {
                (-a * inv * inv * sgx / count, -a * sg / count)
            } else {
                (0.0, 0.0)
            };
            let [m, a, k1, k0] = [mean, a, k1, k0].map(T::from_f64);
            for (b, dx) in dxs.into_iter().enumerate() {
                let r = (b * c + ch) * s..(b * c + ch + 1) * s;
                let (x, dy) = (&x[r.clone()], &dy[r.clone()]);
                match res {
                    Some(res) => {
                        let res = &res[r];
                        for j in 0..dx.len() {
                            let g = T::pick(res[j] > zero, dy[j], zero);
                            dx[j] = a * g + k1 * (x[j] - m) + k0;
                        }
                    }
                    None => {
                        for j in 0..dx.len() {
                            dx[j] = a * dy[j] + k1 * (x[j] - m) + k0;
                        }
                    }
                }
            }
            (sg, sgx)
        })
        .collect();
    (dx, sums)
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "batch_norm3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s1, self.name(), |T| {
            let x = cpu_slice::<T>(s1, l1, self.name())?;
            let gamma = cpu_slice::<T>(s2, l2, self.name())?;
            let beta = cpu_slice::<T>(s3, l3, self.name())?;
            let fixed = if self.train {
                None
            } else {
                let Some(stats) = self.stats.get() else {
                    candle_core::bail!("batch_norm3d: no statistics to normalise with");
                };
                Some(stats)
            };
            let (out, stats) = forward_kernel(x, gamma, beta, ncs(l1.shape()), fixed, self.relu);
            if self.train {
                let (mean, var) = stats.into_iter().unzip();
                let _ = self.stats.set(ChannelStats::new(mean, var));
            }
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(stats) = self.stats.get() else {
            candle_core::bail!("batch_norm3d: backward before forward");
        };
        match x.dtype() {
            DType::F32 => self.backward::<f32>(x, gamma, res, dy, stats),
            _ => self.backward::<f64>(x, gamma, res, dy, stats),
        }
    }
}

type Grads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

impl BatchNormOp {
    fn backward<T: Real>(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        res: &Tensor,
        dy: &Tensor,
        st: &ChannelStats,
    ) -> candle_core::Result<Grads> {
        let shape = ncs(x.shape());
        let c = shape.1;
        // Without a graph behind it (a constant input), x needs no gradient.
        let need_dx = x.track_op();
        with_cpu_slices::<T, _, 4>([x, gamma, res, dy], self.name(), |[xs, gs, rs, dys]| {
            let res = self.relu.then_some(rs);
            let (dx, sums) = backward_kernel(xs, gs, res, dys, shape, st, self.train, need_dx);
            let dev = x.device();
            let dgamma: Vec<T> = (0..c)
                .map(|ch| T::from_f64(sums[ch].1 * st.invstd[ch]))
                .collect();
            let dbeta: Vec<T> = sums.iter().map(|&(sg, _)| T::from_f64(sg)).collect();
            let dgamma = Tensor::from_vec(dgamma, c, dev)?;
            let dbeta = Tensor::from_vec(dbeta, c, dev)?;
            let dx = if need_dx {
                Some(Tensor::from_vec(dx, x.shape(), dev)?)
            } else {
                None
            };
            Ok((dx, Some(dgamma), Some(dbeta)))
        })
    }
}

/// `Σ g` and `Σ g·(x − mean)` in f64 lanes, with `g = dy` masked by `res > 0` if given.
#[inline]
fn grad_sums<T: Real>(x: &[T], dy: &[T], res: Option<&[T]>, mean: f64) -> (f64, f64) {
    const L: usize = 8;
    let zero = T::from_f64(0.0);
    let mut s = [0.0f64; L];
    let mut q = [0.0f64; L];
    let len = x.len();
    let main = len - len % L;
    let mut j = 0;
    while j < main {
        for i in 0..L {
            let keep = res.is_none_or(|r| r[j + i] > zero);
            let g = f64::pick(keep, dy[j + i].to_f64(), 0.0);
            s[i] += g;
            q[i] += g * (x[j + i].to_f64() - mean);
        }
        j += L;
    }
    let (mut s, mut q) = (s.iter().sum::<f64>(), q.iter().sum::<f64>());
    for j in main..len {
        let keep = res.is_none_or(|r| r[j] > zero);
        let g = f64::pick(keep, dy[j].to_f64(), 0.0);
        s += g;
        q += g * (x[j].to_f64() - mean);
    }
    (s, q)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::BatchNorm3d;

    /// The composed fallback (other devices) and the fused CPU op agree in values, gradients
    /// and running statistics (f64: differences are rounding only, 1e-10).
    #[test]
    fn composed_fallback_matches_fused_op() {
        let dev = Device::Cpu;
        let x: Vec<f64> = (0..2 * 3 * 4 * 3 * 2)
            .map(|i| ((i * 37 % 101) as f64 / 13.0).sin() * 3.0 + 1.0)
            .collect();
        let x = candle_core::Var::from_vec(x, (2, 3, 4, 3, 2), &dev).unwrap();
        let w = Tensor::arange(0.0, 144.0, &dev)
            .unwrap()
            .reshape((2, 3, 4, 3, 2))
            .unwrap();
        for relu in [false, true] {
            for train in [true, false, true] {
                let mut outs = Vec::new();
                let mut states = Vec::new();
                for fused in [true, false] {
                    let vm = VarMap::new();
                    let vb = VarBuilder::from_varmap(&vm, DType::F64, &dev);
                    let bn = BatchNorm3d::new(3, vb).unwrap();
                    bn.running_mean
                        .set(&Tensor::new(&[0.5, -1.0, 2.0], &dev).unwrap())
                        .unwrap();
                    bn.weight
                        .set(&Tensor::new(&[1.5, -0.5, 2.0], &dev).unwrap())
                        .unwrap();
                    let y = bn.forward_impl(&x, train, relu, fused).unwrap();
                    let loss = (&y * &w).unwrap().sum_all().unwrap();
                    let g = loss.backward().unwrap();
                    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                    outs.push([
                        flat(&y),
                        flat(g.get(&x).unwrap()),
                        flat(g.get(&bn.weight).unwrap()),
                        flat(g.get(&bn.bias).unwrap()),
                    ]);
                    states.push((
                        flat(bn.running_mean.as_tensor()),
                        flat(bn.running_var.as_tensor()),
                        bn.num_batches_tracked().unwrap(),
                    ));
                }
                for (k, (fused, composed)) in outs[0].iter().zip(&outs[1]).enumerate() {
                    for (a, b) in fused.iter().zip(composed) {
                        assert!((a - b).abs() < 1e-10, "relu {relu} train {train} {k}");
                    }
                }
                assert_eq!(states[0].2, states[1].2);
                for (a, b) in states[0].0.iter().zip(&states[1].0) {
                    assert!((a - b).abs() < 1e-12);
                }
                for (a, b) in states[0].1.iter().zip(&states[1].1) {
                    assert!((a - b).abs() < 1e-12);
                }
            }
        }
    }
}
