//! Cosine-similarity logits shared by InfoNCE and y-Aware InfoNCE.

use candle_core::{D, DType, Tensor};

use crate::error::{Error, Result};
use crate::fused::{ContrastiveLoss, Targets};

/// The value subtracted from the self-similarity logits (the reference uses a large finite
/// number, not −∞, so that `0 · logit` stays 0).
pub const DIAGONAL_MASK: f64 = 1e8;

/// `F.normalize`'s epsilon: rows are divided by `max(‖z‖₂, 1e-12)`.
pub const NORMALIZE_EPS: f64 = 1e-12;

/// Row-wise L2 normalisation `z / max(‖z‖₂, 1e-12)`, differentiable.
///
/// A zero row stays zero (and gets the finite gradient `g / 1e-12`, as in PyTorch), rows with a
/// norm below `1e-12` are divided by `1e-12` rather than scaled to unit length.
pub fn normalize_rows(z: &Tensor) -> Result<Tensor> {
    // sqrt(max(‖z‖², eps²)) == max(‖z‖, eps), but its gradient is finite at a zero row.
    let norm = z
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .maximum(NORMALIZE_EPS * NORMALIZE_EPS)?
        .sqrt()?;
    Ok(z.broadcast_div(&norm)?)
}

/// Checks the two views and returns `(n, computation dtype)`: f32 and f64 are used as they
/// are, f16 and bf16 are computed in f32.
pub(crate) fn check_views(z1: &Tensor, z2: &Tensor) -> Result<(usize, DType)> {
    for (name, z) in [("z1", z1), ("z2", z2)] {
        if z.rank() != 2 {
            return Err(Error::Rank {
                name,
                expected: "2 (n, dim)",
                shape: z.shape().clone(),
            });
        }
    }
    if z1.shape() != z2.shape() {
        return Err(Error::ViewShapeMismatch {
            z1: z1.shape().clone(),
            z2: z2.shape().clone(),
        });
    }
    let (n, d) = z1.dims2()?;
    if n == 0 || d == 0 {
        return Err(Error::Empty {
            name: "z1",
            shape: z1.shape().clone(),
        });
    }
    if z1.dtype() != z2.dtype() {
        return Err(Error::Dtype {
            name: "z2",
            dtype: z2.dtype(),
            expected: "the same dtype as z1",
        });
    }
    let dtype = match z1.dtype() {
        DType::F32 | DType::F64 => z1.dtype(),
        DType::F16 | DType::BF16 => DType::F32,
        dtype => {
            return Err(Error::Dtype {
                name: "z1",
                dtype,
                expected: "a float dtype",
            });
        }
    };
    Ok((n, dtype))
}

/// The contrastive loss `−scale · Σ_ab W̃_ab · log_softmax(S)_ab` over the `2N × 2N` logits
/// `S = [[S11, S12], [S12ᵀ, S22]]`, `S_ab = ẑ_a·ẑ_b / τ − 1e8·δ_ab`, `ẑ = normalize([z1; z2])`,
/// returned as a scalar of `out_dtype`.
///
/// With `fused`, on the CPU, everything after stacking the views is one op with a hand-written
/// backward ([`ContrastiveLoss`]); otherwise (and on other devices) it is composed of candle
/// ops. Both
/// compute the log-softmax in the embeddings' dtype and weight it in f64.
#[allow(clippy::too_many_arguments)] // internal: each argument is one setting of the loss
pub(crate) fn contrastive_loss(
    z1: &Tensor,
    z2: &Tensor,
    temperature: f64,
    dtype: DType,
    targets: Targets,
    scale: f64,
    out_dtype: DType,
    fused: bool,
) -> Result<Tensor> {
    let z = Tensor::cat(&[z1, z2], 0)?.to_dtype(dtype)?;
    let n = z1.dim(0)?;
    if fused && z.device().is_cpu() {
        let op = ContrastiveLoss::new(n, temperature, scale, targets, out_dtype);
        return Ok(z.apply_op1(op)?);
    }
    let zn = normalize_rows(&z)?;
    let sim = zn.matmul(&zn.t()?)?;
    let ls = log_softmax_logits(&sim, temperature)?;
    let loss = match targets {
        Targets::Pairs => {
            let positives: Vec<u32> = (0..2 * n).map(|a| ((a + n) % (2 * n)) as u32).collect();
            let idx = Tensor::from_vec(positives, (2 * n, 1), ls.device())?;
            ls.gather(&idx, 1)?.to_dtype(DType::F64)?.sum_all()?
        }
        targets @ Targets::Kernel { .. } => {
            let w = Tensor::from_vec(targets.dense(n), (2 * n, 2 * n), ls.device())?;
            ls.to_dtype(DType::F64)?.mul(&w)?.sum_all()?
        }
    };
    Ok(loss.affine(-scale, 0.0)?.to_dtype(out_dtype)?)
}

/// Row-wise log-softmax of the logits `sim / τ − 1e8·I`, composed of candle ops.
fn log_softmax_logits(sim: &Tensor, temperature: f64) -> Result<Tensor> {
    let two_n = sim.dim(0)?;
    let mask = (Tensor::eye(two_n, sim.dtype(), sim.device())? * DIAGONAL_MASK)?;
    let logits = ((sim / temperature)? - mask)?;
    // The row maximum only shifts the logits: it is detached (log-softmax is invariant to it).
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

pub(crate) fn check_temperature(temperature: f64) -> Result<()> {
    if temperature.is_finite() && temperature > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidParam {
            name: "temperature",
            value: temperature,
            rule: "must be finite and > 0",
        })
    }
}
