//! The fused CPU kernel of Adam / AdamW: one pass over `θ`, `g`, `m`, `v` (and `v̂`), in
//! parallel, with exactly the operations and rounding of the tensor-op path (so both paths give
//! bit-identical results; the tensor-op path remains for other devices and dtypes).
//!
//! One difference: a moment that falls below the smallest normal number of its type
//! (`f32::MIN_POSITIVE` ≈ 1.2e-38) is stored as zero. The moments of a parameter whose gradient
//! stays zero (a dead ReLU unit) decay geometrically through the subnormal range, and
//! arithmetic on subnormals takes a microcode assist on Intel CPUs: the step over a small
//! network ran 4–10× slower for thousands of steps. The update such a moment gives,
//! `lr · m̂ / (√v̂ + ε)`, is below 1e-30 and rounds away against any normal parameter, so the
//! parameters stay the same in practice (docs/PARITY.md).

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// Host-side moment buffer of a CPU parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HostVec {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl HostVec {
    pub(crate) fn zeros(dtype: DType, len: usize) -> Option<Self> {
        match dtype {
            DType::F32 => Some(HostVec::F32(vec![0.0; len])),
            DType::F64 => Some(HostVec::F64(vec![0.0; len])),
            _ => None,
        }
    }

    pub(crate) fn from_tensor(t: &Tensor) -> Result<Self> {
        let flat = t.flatten_all()?;
        match t.dtype() {
            DType::F32 => Ok(HostVec::F32(flat.to_vec1()?)),
            _ => Ok(HostVec::F64(flat.to_dtype(DType::F64)?.to_vec1()?)),
        }
    }

    pub(crate) fn to_tensor(&self, like: &Tensor) -> Result<Tensor> {
        let t = match self {
            HostVec::F32(v) => Tensor::from_slice(v, like.shape(), like.device())?,
            HostVec::F64(v) => Tensor::from_slice(v, like.shape(), like.device())?,
        };
        t.to_dtype(like.dtype())
    }
}

/// The scalars of one Adam step for one parameter group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamStep {
    pub(crate) weight_decay: f64,
    pub(crate) decoupled: bool,
    /// `1 − lr·wd` (AdamW).
    pub(crate) decay: f64,
    /// `1 − β1`, the lerp weight.
    pub(crate) lerp_w: f64,
    pub(crate) beta2: f64,
    pub(crate) step_size: f64,
    pub(crate) bc2_sqrt: f64,
    pub(crate) eps: f64,
}

/// The in-place op: updates `θ` (the destination) from `g` (the source), and the moments it
/// borrows.
pub(crate) struct FusedAdam<'a> {
    pub(crate) s: AdamStep,
    pub(crate) m: RefCell<&'a mut HostVec>,
    pub(crate) v: RefCell<&'a mut HostVec>,
    pub(crate) vmax: RefCell<Option<&'a mut HostVec>>,
}

macro_rules! adam_kernel {
    ($name:ident, $t:ty) => {
        #[allow(clippy::too_many_arguments)]
        fn $name(
            s: AdamStep,
            theta: &mut [$t],
            grad: &[$t],
            m: &mut [$t],
            v: &mut [$t],
            vmax: Option<&mut [$t]>,
        ) {
            // Scalars are cast to the element type, as candle's `affine` and scalar tensors do.
            let (wd, decay, w, beta2) = (
                s.weight_decay as $t,
                s.decay as $t,
                s.lerp_w as $t,
                s.beta2 as $t,
            );
            let (one_m_w, one_m_b2) = ((1.0 - s.lerp_w) as $t, (1.0 - s.beta2) as $t);
            let (bc2, eps, neg_step) = (s.bc2_sqrt as $t, s.eps as $t, (-s.step_size) as $t);
            let lerp_low = s.lerp_w < 0.5;
            let elem = |th: &mut $t, g: $t, m: &mut $t, v: &mut $t, vmax: Option<&mut $t>| {
                let (mut t, mut g) = (*th, g);
                if s.weight_decay != 0.0 {
                    if s.decoupled {
                        t = t * decay + 0.0;
                    } else {
                        g += t * wd + 0.0;
                    }
                }
                let diff = g - *m;
                *m = flush(if lerp_low {
                    *m + (diff * w + 0.0)
                } else {
                    g - (diff * one_m_w + 0.0)
                });
                *v = flush((*v * beta2 + 0.0) + ((g * one_m_b2 + 0.0) * g));
                let v_used = match vmax {
                    Some(x) => {
                        *x = if *x >= *v { *x } else { *v };
                        *x
                    }
                    None => *v,
                };
                let denom = (v_used.sqrt() / bc2) * 1.0 + eps;
                *th = t + ((*m * neg_step + 0.0) / denom);
            };
            match vmax {
                // The common case, specialised on the loop-invariant choices so the loop has no
                // branch and vectorises.
                None => {
                    let k = (wd, decay, w, one_m_w, beta2, one_m_b2, bc2, eps, neg_step);
                    let mode = match (s.weight_decay != 0.0, s.decoupled) {
                        (false, _) => 0,
                        (true, false) => 1,
                        (true, true) => 2,
                    };
                    theta
                        .par_chunks_mut(CHUNK)
                        .zip(grad.par_chunks(CHUNK))
                        .zip(m.par_chunks_mut(CHUNK))
                        .zip(v.par_chunks_mut(CHUNK))
                        .for_each(|(((th, g), m), v)| match (mode, lerp_low) {
                            (0, true) => chunk::<0, true>(k, th, g, m, v),
                            (0, false) => chunk::<0, false>(k, th, g, m, v),
                            (1, true) => chunk::<1, true>(k, th, g, m, v),
                            (1, false) => chunk::<1, false>(k, th, g, m, v),
                            (_, true) => chunk::<2, true>(k, th, g, m, v),
                            (_, false) => chunk::<2, false>(k, th, g, m, v),
                        })
                }
                Some(vmax) => theta
                    .par_chunks_mut(CHUNK)
                    .zip(grad.par_chunks(CHUNK))
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK))
                    .zip(vmax.par_chunks_mut(CHUNK))
                    .for_each(|((((th, g), m), v), x)| {
                        for i in 0..th.len() {
                            elem(&mut th[i], g[i], &mut m[i], &mut v[i], Some(&mut x[i]));
                        }
                    }),
            }

            /// A moment below the smallest normal number, set to zero (see the module docs).
            #[inline(always)]
            fn flush(x: $t) -> $t {
                if x.abs() < <$t>::MIN_POSITIVE { 0.0 } else { x }
            }

            /// One chunk without amsgrad: `MODE` 0 no weight decay, 1 L2, 2 decoupled.
            #[inline(always)]
            #[allow(clippy::type_complexity)]
            fn chunk<const MODE: u8, const LOW: bool>(
                k: ($t, $t, $t, $t, $t, $t, $t, $t, $t),
                th: &mut [$t],
                g: &[$t],
                m: &mut [$t],
                v: &mut [$t],
            ) {
                let (wd, decay, w, one_m_w, beta2, one_m_b2, bc2, eps, neg_step) = k;
                for (((th, &g), m), v) in th.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let (mut t, mut g) = (*th, g);
                    if MODE == 2 {
                        t = t * decay + 0.0;
                    } else if MODE == 1 {
                        g += t * wd + 0.0;
                    }
                    let diff = g - *m;
                    *m = flush(if LOW {
                        *m + (diff * w + 0.0)
                    } else {
                        g - (diff * one_m_w + 0.0)
                    });
                    *v = flush((*v * beta2 + 0.0) + ((g * one_m_b2 + 0.0) * g));
                    let denom = (v.sqrt() / bc2) * 1.0 + eps;
                    *th = t + ((*m * neg_step + 0.0) / denom);
                }
            }
        }
    };
}

adam_kernel!(adam_f32, f32);
adam_kernel!(adam_f64, f64);

impl InplaceOp2 for FusedAdam<'_> {
    fn name(&self) -> &'static str {
        "fused-adam"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("fused-adam: parameter and gradient must be contiguous");
        };
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        let mut vmax = self.vmax.borrow_mut();
        match (s1, s2, &mut **m, &mut **v) {
            (CpuStorage::F32(th), CpuStorage::F32(g), HostVec::F32(m), HostVec::F32(v)) => {
                let x = match vmax.as_deref_mut() {
                    Some(HostVec::F32(x)) => Some(x.as_mut_slice()),
                    Some(_) => candle_core::bail!("fused-adam: mixed dtypes"),
                    None => None,
                };
                adam_f32(self.s, &mut th[a0..a1], &g[b0..b1], m, v, x);
            }
            (CpuStorage::F64(th), CpuStorage::F64(g), HostVec::F64(m), HostVec::F64(v)) => {
                let x = match vmax.as_deref_mut() {
                    Some(HostVec::F64(x)) => Some(x.as_mut_slice()),
                    Some(_) => candle_core::bail!("fused-adam: mixed dtypes"),
                    None => None,
                };
                adam_f64(self.s, &mut th[a0..a1], &g[b0..b1], m, v, x);
            }
            _ => candle_core::bail!(
                "fused-adam: parameter, gradient and moments must share an f32 or f64 dtype"
            ),
        }
        Ok(())
    }
}
