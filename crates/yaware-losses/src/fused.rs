//! The fused CPU kernel of the contrastive loss on the `2N × 2N` cosine-similarity matrix:
//! temperature, −1e8 diagonal, row-wise log-softmax and the weighted sum in one pass per row
//! (rows in parallel), with a hand-written backward. It never materialises the logits, the
//! log-softmax or the `2N × 2N` weight matrix.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::logits::DIAGONAL_MASK;
use crate::yaware::WeightNormalization;

/// Which entries of each row are positives, and with which weight.
#[derive(Debug, Clone)]
pub(crate) enum Targets {
    /// Plain InfoNCE: row `a`'s positive is the other view of the same sample, weight 1.
    Pairs,
    /// y-Aware: `W̃_ab` from the `N × N` kernel block `K` (tiled over the views, zero diagonal)
    /// and the row sums `r` of the tiled matrix.
    Kernel {
        block: Vec<f64>,
        row_sums: Vec<f64>,
        normalization: WeightNormalization,
    },
}

impl Targets {
    /// The dense `2N × 2N` row-major weight matrix `W̃`.
    pub(crate) fn dense(&self, n: usize) -> Vec<f64> {
        let m = 2 * n;
        let mut w = vec![0.0; m * m];
        for (a, row) in w.chunks_exact_mut(m).enumerate() {
            self.for_row(a, n, |b, v| row[b] = v);
        }
        w
    }

    /// Calls `f(b, w)` for every non-zero weight of row `a` (`n` samples per view).
    #[inline]
    fn for_row(&self, a: usize, n: usize, mut f: impl FnMut(usize, f64)) {
        match self {
            Targets::Pairs => f((a + n) % (2 * n), 1.0),
            Targets::Kernel {
                block,
                row_sums,
                normalization,
            } => {
                let k = &block[(a % n) * n..(a % n + 1) * n];
                for b in 0..2 * n {
                    if b == a {
                        continue;
                    }
                    let w = k[b % n];
                    let w = match normalization {
                        WeightNormalization::Column => w / row_sums[b],
                        WeightNormalization::Row => w / row_sums[a],
                    };
                    f(b, w);
                }
            }
        }
    }
}

/// The loss `−scale · Σ_ab W̃_ab · log_softmax(sim/τ − 1e8·I)_ab` as a custom op on `sim`.
#[derive(Debug, Clone)]
pub(crate) struct ContrastiveLoss {
    pub(crate) n: usize,
    pub(crate) temperature: f64,
    pub(crate) scale: f64,
    pub(crate) targets: Targets,
    /// Dtype of the scalar result (f64 for y-Aware, the embeddings' dtype for InfoNCE).
    pub(crate) out_dtype: DType,
}

macro_rules! kernels {
    ($fwd:ident, $bwd:ident, $t:ty) => {
        /// Logits of row `a` into `row`; returns `(max, ln Σ exp(s − max))`.
        fn $fwd(op: &ContrastiveLoss, sim: &[$t], a: usize, row: &mut [$t]) -> ($t, $t) {
            let m = 2 * op.n;
            let tau = op.temperature as $t;
            let mut max = <$t>::NEG_INFINITY;
            for (b, (r, &s)) in row.iter_mut().zip(&sim[a * m..(a + 1) * m]).enumerate() {
                let mut v = s / tau;
                if b == a {
                    v -= DIAGONAL_MASK as $t;
                }
                *r = v;
                max = max.max(v);
            }
            let sum: $t = row.iter().map(|&v| (v - max).exp()).sum();
            (max, sum.ln())
        }

        impl ContrastiveLoss {
            fn $bwd(&self, sim: &[$t], upstream: f64) -> Vec<$t> {
                let m = 2 * self.n;
                let tau = self.temperature as $t;
                let mut grad = vec![0.0 as $t; m * m];
                grad.par_chunks_mut(m).enumerate().for_each(|(a, g)| {
                    let mut row = vec![0.0 as $t; m];
                    let (max, lse) = $fwd(self, sim, a, &mut row);
                    // dL/dLS_ab = −scale·upstream·W̃_ab, in the embeddings' dtype.
                    let mut total: $t = 0.0;
                    self.targets.for_row(a, self.n, |b, w| {
                        let gl = (-self.scale * upstream * w) as $t;
                        g[b] = gl;
                        total += gl;
                    });
                    for (gb, &v) in g.iter_mut().zip(&row) {
                        let p = ((v - max) - lse).exp();
                        *gb = (*gb - p * total) / tau;
                    }
                });
                grad
            }
        }
    };
}

kernels!(row_logits_f32, backward_f32, f32);
kernels!(row_logits_f64, backward_f64, f64);

impl ContrastiveLoss {
    fn forward_rows<T, F>(&self, sim: &[T], logits: F) -> f64
    where
        T: Copy + Send + Sync + Default + Into<f64> + std::ops::Sub<Output = T>,
        F: Fn(&ContrastiveLoss, &[T], usize, &mut [T]) -> (T, T) + Sync,
    {
        let m = 2 * self.n;
        let per_row: Vec<f64> = (0..m)
            .into_par_iter()
            .map(|a| {
                let mut row = vec![T::default(); m];
                let (max, lse) = logits(self, sim, a, &mut row);
                let mut acc = 0.0f64;
                self.targets.for_row(a, self.n, |b, w| {
                    // log_softmax in the embeddings' dtype, weighted in f64.
                    let ls: f64 = ((row[b] - max) - lse).into();
                    acc += w * ls;
                });
                acc
            })
            .collect();
        -self.scale * per_row.iter().sum::<f64>()
    }
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("contrastive-loss: the similarity matrix must be contiguous"),
    }
}

fn scalar_storage(v: f64, dtype: DType) -> CpuStorage {
    match dtype {
        DType::F32 => CpuStorage::F32(vec![v as f32]),
        _ => CpuStorage::F64(vec![v]),
    }
}

impl CustomOp1 for ContrastiveLoss {
    fn name(&self) -> &'static str {
        "contrastive-loss"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let loss = match storage {
            CpuStorage::F32(d) => self.forward_rows(contiguous(d, layout)?, row_logits_f32),
            CpuStorage::F64(d) => self.forward_rows(contiguous(d, layout)?, row_logits_f64),
            _ => candle_core::bail!("contrastive-loss: f32 or f64 similarities expected"),
        };
        Ok((scalar_storage(loss, self.out_dtype), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let upstream = grad_res.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let m = 2 * self.n;
        let sim = arg.contiguous()?;
        let grad = match sim.dtype() {
            DType::F32 => {
                let g = self.backward_f32(&sim.flatten_all()?.to_vec1::<f32>()?, upstream);
                Tensor::from_vec(g, (m, m), arg.device())?
            }
            _ => {
                let g = self.backward_f64(&sim.flatten_all()?.to_vec1::<f64>()?, upstream);
                Tensor::from_vec(g, (m, m), arg.device())?
            }
        };
        Ok(Some(grad))
    }
}
