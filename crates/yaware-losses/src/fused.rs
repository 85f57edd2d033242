//! The fused CPU kernel of the contrastive loss on the stacked embeddings `z = [z1; z2]`:
//! row normalisation, the `2N × 2N` cosine similarities (one matmul), temperature, −1e8
//! diagonal, row-wise log-softmax and the weighted sum, with a hand-written backward (one more
//! matmul). Rows run in parallel; the logits, the log-softmax and the `2N × 2N` weight matrix
//! are never materialised.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::logits::{DIAGONAL_MASK, NORMALIZE_EPS};

/// Which entries of each row are positives, and with which weight.
#[derive(Debug, Clone)]
pub(crate) enum Targets {
    /// Plain InfoNCE: row `a`'s positive is the other view of the same sample, weight 1.
    Pairs,
    /// y-Aware: `W̃_ab = weights[a % N][b % N]` for `b ≠ a` (0 on the diagonal): the
    /// normalised `N × N` block that repeats in the tiled `2N × 2N` matrix.
    Kernel {
        /// `K_ij / r_j` (column normalisation) or `K_ij / r_i` (row normalisation), `r` the
        /// row sums of the tiled matrix with a zero diagonal (equal in both halves).
        weights: Vec<f64>,
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
            Targets::Kernel { weights } => {
                // Both views of sample j have the weight of column j of row a % n; the
                // diagonal entry a is skipped.
                let k = &weights[(a % n) * n..(a % n + 1) * n];
                for half in 0..2 {
                    let skip = if a / n == half { a % n } else { n };
                    for (j, &w) in k.iter().enumerate() {
                        if j != skip {
                            f(half * n + j, w);
                        }
                    }
                }
            }
        }
    }
}

/// The loss `−scale · Σ_ab W̃_ab · log_softmax(ẑẑᵀ/τ − 1e8·I)_ab`, `ẑ = normalize(z)`, as a
/// custom op on `z = [z1; z2]` (`2N × D`).
#[derive(Debug)]
pub(crate) struct ContrastiveLoss {
    pub(crate) n: usize,
    pub(crate) temperature: f64,
    pub(crate) scale: f64,
    pub(crate) targets: Targets,
    /// Dtype of the scalar result (f64 for y-Aware, the embeddings' dtype for InfoNCE).
    pub(crate) out_dtype: DType,
    /// What the forward computed and the backward reuses: `ẑ`, the clamped row norms, and the
    /// softmax of the logits.
    cache: Mutex<Option<Cache>>,
}

#[derive(Debug, Clone)]
struct Cache {
    /// Width of the embeddings.
    d: usize,
    norms: Vec<f64>,
    buffers: Buffers,
}

/// `ẑ` (`2N × D`) and the row-wise softmax of the logits (`2N × 2N`), in the embeddings'
/// dtype.
#[derive(Debug, Clone)]
enum Buffers {
    F32 {
        zhat: Arc<Vec<f32>>,
        probs: Arc<Vec<f32>>,
    },
    F64 {
        zhat: Arc<Vec<f64>>,
        probs: Arc<Vec<f64>>,
    },
}

impl ContrastiveLoss {
    pub(crate) fn new(
        n: usize,
        temperature: f64,
        scale: f64,
        targets: Targets,
        out_dtype: DType,
    ) -> Self {
        Self {
            n,
            temperature,
            scale,
            targets,
            out_dtype,
            cache: Mutex::new(None),
        }
    }
}

macro_rules! kernels {
    ($t:ty, $normalize:ident, $logits:ident, $loss:ident, $grad_sim:ident, $grad_z:ident) => {
        /// `ẑ = z / max(‖z‖, eps)` row-wise; returns `ẑ` and the clamped norms.
        fn $normalize(z: &[$t], d: usize) -> (Vec<$t>, Vec<f64>) {
            let mut zhat = vec![0.0 as $t; z.len()];
            let norms = zhat
                .par_chunks_mut(d)
                .zip(z.par_chunks(d))
                .map(|(out, row)| {
                    let ss: $t = row.iter().map(|v| v * v).sum();
                    let c = ss.sqrt().max(NORMALIZE_EPS as $t);
                    for (o, v) in out.iter_mut().zip(row) {
                        *o = v / c;
                    }
                    c as f64
                })
                .collect();
            (zhat, norms)
        }

        /// Logits of row `a` into `row`; returns their maximum.
        fn $logits(op: &ContrastiveLoss, sim: &[$t], a: usize, row: &mut [$t]) -> $t {
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
            max
        }

        /// The loss from the similarities, and the softmax of every row (kept for the
        /// backward, so it needs no exponential).
        fn $loss(op: &ContrastiveLoss, sim: &[$t]) -> (f64, Vec<$t>) {
            let m = 2 * op.n;
            let mut probs = vec![0.0 as $t; m * m];
            let per_row: Vec<f64> = probs
                .par_chunks_mut(m)
                .enumerate()
                .map(|(a, p)| {
                    let mut row = vec![0.0 as $t; m];
                    let max = $logits(op, sim, a, &mut row);
                    let mut sum: $t = 0.0;
                    for (pb, &v) in p.iter_mut().zip(&row) {
                        *pb = (v - max).exp();
                        sum += *pb;
                    }
                    let lse = sum.ln();
                    p.iter_mut().for_each(|pb| *pb /= sum);
                    let mut acc = 0.0f64;
                    op.targets.for_row(a, op.n, |b, w| {
                        // log_softmax in the embeddings' dtype, weighted in f64.
                        acc += w * (((row[b] - max) - lse) as f64);
                    });
                    acc
                })
                .collect();
            (-op.scale * per_row.iter().sum::<f64>(), probs)
        }

        /// `dL/dS` (`2N × 2N`, S the similarities) for an upstream gradient `upstream`, from
        /// the rows' softmax.
        fn $grad_sim(op: &ContrastiveLoss, probs: &[$t], upstream: f64) -> Vec<$t> {
            let m = 2 * op.n;
            let tau = op.temperature as $t;
            let mut grad = vec![0.0 as $t; m * m];
            grad.par_chunks_mut(m)
                .zip(probs.par_chunks(m))
                .enumerate()
                .for_each(|(a, (g, p))| {
                    // dL/dLS_ab = −scale·upstream·W̃_ab, in the embeddings' dtype; then the
                    // log-softmax backward `g − softmax·Σg`, then the temperature.
                    let mut total: $t = 0.0;
                    op.targets.for_row(a, op.n, |b, w| {
                        let gl = (-op.scale * upstream * w) as $t;
                        g[b] = gl;
                        total += gl;
                    });
                    for (gb, &pb) in g.iter_mut().zip(p) {
                        *gb = (*gb - pb * total) / tau;
                    }
                });
            grad
        }

        /// `dL/dz` from `dL/dẑ` through the row normalisation.
        fn $grad_z(zhat: &[$t], dzhat: &[$t], norms: &[f64], d: usize) -> Vec<$t> {
            let mut out = vec![0.0 as $t; zhat.len()];
            out.par_chunks_mut(d)
                .zip(zhat.par_chunks(d).zip(dzhat.par_chunks(d)))
                .zip(norms.par_iter())
                .for_each(|((o, (zh, dz)), &c)| {
                    let c = c as $t;
                    if c > NORMALIZE_EPS as $t {
                        // ẑ = z/‖z‖: dz = (dẑ − ẑ (ẑ·dẑ)) / ‖z‖
                        let dot: $t = zh.iter().zip(dz).map(|(a, b)| a * b).sum();
                        for ((o, &a), &b) in o.iter_mut().zip(zh).zip(dz) {
                            *o = (b - a * dot) / c;
                        }
                    } else {
                        // The norm is clamped at eps: a constant divisor.
                        for (o, &b) in o.iter_mut().zip(dz) {
                            *o = b / c;
                        }
                    }
                });
            out
        }
    };
}

kernels!(
    f32,
    normalize_f32,
    row_logits_f32,
    loss_f32,
    grad_sim_f32,
    grad_z_f32
);
kernels!(
    f64,
    normalize_f64,
    row_logits_f64,
    loss_f64,
    grad_sim_f64,
    grad_z_f64
);

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("contrastive-loss: the embeddings must be contiguous"),
    }
}

fn scalar_storage(v: f64, dtype: DType) -> CpuStorage {
    match dtype {
        DType::F32 => CpuStorage::F32(vec![v as f32]),
        _ => CpuStorage::F64(vec![v]),
    }
}

/// The number of threads candle gives its matmuls, read once (candle reads
/// `/proc/cpuinfo` on every call).
fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| candle_core::utils::get_num_threads().max(1))
}

/// `lhs (m, k) · rhs (k, n)` into a new row-major `m × n` buffer, the operands given by their
/// (column, row) strides: the very `gemm` call of candle's CPU matmul (same results), without
/// copying the operands into tensors and the product out of one.
fn matmul<T: candle_core::WithDType>(
    dims: [usize; 3],
    lhs: &[T],
    lhs_strides: [usize; 2],
    rhs: &[T],
    rhs_strides: [usize; 2],
) -> Vec<T> {
    let [m, n, _] = dims;
    let mut dst = vec![T::zero(); m * n];
    matmul_into(&mut dst, false, dims, lhs, lhs_strides, rhs, rhs_strides);
    dst
}

/// `dst (m, n) = [dst +] lhs (m, k) · rhs (k, n)`, `dst` row-major, the operands given by
/// their (column, row) strides.
fn matmul_into<T: candle_core::WithDType>(
    dst: &mut [T],
    accumulate: bool,
    [m, n, k]: [usize; 3],
    lhs: &[T],
    [lhs_cs, lhs_rs]: [usize; 2],
    rhs: &[T],
    [rhs_cs, rhs_rs]: [usize; 2],
) {
    let span = |rows: usize, cols: usize, cs: usize, rs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    assert!(
        lhs.len() >= span(m, k, lhs_cs, lhs_rs),
        "contrastive-loss: lhs too small"
    );
    assert!(
        rhs.len() >= span(k, n, rhs_cs, rhs_rs),
        "contrastive-loss: rhs too small"
    );
    assert_eq!(dst.len(), m * n, "contrastive-loss: dst size");
    if m == 0 || n == 0 {
        return;
    }
    let parallelism = match threads() {
        1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // SAFETY: the asserts keep every element the strides address inside its slice, and `dst`
    // is an exclusive `m × n` buffer, so it overlaps neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { T::one() } else { T::zero() },
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `a · aᵀ` (`m × m`) for row-major `a` (`m × d`).
fn gram<T: candle_core::WithDType>(a: &[T], m: usize, d: usize) -> Vec<T> {
    // aᵀ (d × m) is `a` read with column stride d and row stride 1.
    matmul([m, m, d], a, [1, d], a, [d, 1])
}

impl CustomOp1 for ContrastiveLoss {
    fn name(&self) -> &'static str {
        "contrastive-loss"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, d) = layout.shape().dims2()?;
        if m != 2 * self.n {
            candle_core::bail!("contrastive-loss: expected {} rows, got {m}", 2 * self.n);
        }
        let (loss, buffers, norms) = match storage {
            CpuStorage::F32(z) => {
                let (zhat, norms) = normalize_f32(contiguous(z, layout)?, d);
                let (loss, probs) = loss_f32(self, &gram(&zhat, m, d));
                let (zhat, probs) = (Arc::new(zhat), Arc::new(probs));
                (loss, Buffers::F32 { zhat, probs }, norms)
            }
            CpuStorage::F64(z) => {
                let (zhat, norms) = normalize_f64(contiguous(z, layout)?, d);
                let (loss, probs) = loss_f64(self, &gram(&zhat, m, d));
                let (zhat, probs) = (Arc::new(zhat), Arc::new(probs));
                (loss, Buffers::F64 { zhat, probs }, norms)
            }
            _ => candle_core::bail!("contrastive-loss: f32 or f64 embeddings expected"),
        };
        let cache = Cache { d, norms, buffers };
        *self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cache);
        Ok((scalar_storage(loss, self.out_dtype), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let upstream = grad_res.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(Cache { d, norms, buffers }) = cache else {
            candle_core::bail!("contrastive-loss: backward before forward");
        };
        macro_rules! backward {
            ($zhat:expr, $probs:expr, $grad_sim:ident, $grad_z:ident) => {{
                let m = $zhat.len() / d.max(1);
                let g = $grad_sim(self, $probs, upstream);
                // S = ẑẑᵀ: dL/dẑ = (G + Gᵀ) ẑ = Gẑ + Gᵀẑ (two products, no transposed copy).
                let mut dzhat = matmul([m, d, m], &g, [1, m], $zhat, [1, d]);
                matmul_into(&mut dzhat, true, [m, d, m], &g, [m, 1], $zhat, [1, d]);
                let dz = $grad_z($zhat, &dzhat, &norms, d);
                Tensor::from_vec(dz, (m, d), arg.device())?
            }};
        }
        let grad = match &buffers {
            Buffers::F32 { zhat, probs } => backward!(zhat, probs, grad_sim_f32, grad_z_f32),
            Buffers::F64 { zhat, probs } => backward!(zhat, probs, grad_sim_f64, grad_z_f64),
        };
        Ok(Some(grad))
    }
}
