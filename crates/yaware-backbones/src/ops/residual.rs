//! The end of a residual block, `relu(h + identity)`, as one op.
//!
//! On the CPU (f32, f64) it is one custom op: one parallel pass reads both inputs and writes the
//! output, and its backward passes the output gradient to both inputs where the output is
//! positive, as PyTorch's ReLU does: at an output of exactly 0 the gradient is 0. candle's own
//! `relu` passes it there (its mask is `x ≥ 0`). The difference matters in residual blocks:
//! with `zero_init_residual` the block's last batch norm starts at exactly 0, so
//! `h + identity` is exactly 0 wherever the (post-ReLU) identity is. (Speed is not the point:
//! ResNet-18's eval forward measured the same as with candle's `add` and `relu`.)
//!
//! Other devices and dtypes use candle's ops (`(h + identity).relu()`).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::elem::{Real, cpu_slice, dispatch};
use crate::{Error, Result};

/// Elements per parallel task.
const TASK: usize = 1 << 14;

/// `max(h + identity, 0)` for two tensors of the same shape, dtype and device: the end of a
/// ResNet block.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use yaware_backbones::ops::add_relu;
///
/// let dev = Device::Cpu;
/// let h = Tensor::new(&[1f32, -2.0, 0.5], &dev)?;
/// let identity = Tensor::new(&[1f32, 1.0, -0.5], &dev)?;
/// assert_eq!(add_relu(&h, &identity)?.to_vec1::<f32>()?, [2.0, 0.0, 0.0]);
/// # Ok::<(), yaware_backbones::Error>(())
/// ```
///
/// Its gradient reaches both inputs where the output is positive (0 elsewhere, PyTorch's
/// convention at exactly 0).
///
/// Errors ([`Error::Input`], naming both): different shapes, dtypes or devices.
pub fn add_relu(h: &Tensor, identity: &Tensor) -> Result<Tensor> {
    let fused = h.device().is_cpu() && matches!(h.dtype(), DType::F32 | DType::F64);
    add_relu_impl(h, identity, fused)
}

/// [`add_relu`] through the fused op (`fused`) or candle's ops.
fn add_relu_impl(h: &Tensor, identity: &Tensor, fused: bool) -> Result<Tensor> {
    if h.dims() != identity.dims()
        || h.dtype() != identity.dtype()
        || !h.device().same_device(identity.device())
    {
        return Err(Error::Input {
            op: "add_relu",
            problem: format!(
                "the two inputs differ: {:?} {:?} on {:?} and {:?} {:?} on {:?}",
                h.dims(),
                h.dtype(),
                h.device(),
                identity.dims(),
                identity.dtype(),
                identity.device()
            ),
        });
    }
    if !fused {
        return Ok((h + identity)?.relu()?);
    }
    Ok(h.contiguous()?
        .apply_op2(&identity.contiguous()?, AddReluOp)?)
}

/// The fused CPU op; see the module docs.
struct AddReluOp;

impl AddReluOp {
    fn run<T: Real + PartialOrd>(a: &[T], b: &[T]) -> Vec<T> {
        let zero = T::from_f64(0.0);
        let mut out = vec![zero; a.len()];
        out.par_chunks_mut(TASK)
            .zip(a.par_chunks(TASK).zip(b.par_chunks(TASK)))
            .for_each(|(o, (a, b))| {
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    let s = a + b;
                    // `s > 0` keeps NaN (as PyTorch's ReLU); max(NaN, 0) would drop it.
                    *o = T::pick(s > zero || s.is_nan(), s, zero);
                }
            });
        out
    }
}

impl CustomOp2 for AddReluOp {
    fn name(&self) -> &'static str {
        "add_relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = dispatch!(s1, "add_relu", |T| {
            let a = cpu_slice::<T>(s1, l1, "add_relu")?;
            let b = cpu_slice::<T>(s2, l2, "add_relu")?;
            if a.len() != b.len() {
                candle_core::bail!("add_relu: {} and {} elements", a.len(), b.len());
            }
            T::to_cpu_storage_owned(Self::run(a, b))
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _h: &Tensor,
        _identity: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let mask = res.gt(&res.zeros_like()?)?.to_dtype(grad.dtype())?;
        let g = (grad * mask)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::add_relu_impl;
    use crate::Error;
    use crate::init::SeededRng;

    /// Values with exact zeros in both inputs and sums of exactly 0 (the zero-init residual
    /// case), in f64 or f32.
    fn inputs(dtype: DType) -> (Var, Var) {
        let mut rng = SeededRng::new(7);
        let shape = [2, 3, 5, 4, 37];
        let h = rng
            .normal_tensor(&shape, 0.0, 1.0, DType::F64, &Device::Cpu)
            .unwrap();
        let i = rng
            .normal_tensor(&shape, 0.0, 1.0, DType::F64, &Device::Cpu)
            .unwrap();
        let mut hv = h.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let mut iv = i.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for k in (0..hv.len()).step_by(3) {
            hv[k] = 0.0;
            if k % 2 == 0 {
                iv[k] = iv[k].max(0.0) * 0.0;
            }
        }
        let h = Tensor::from_vec(hv, &shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let i = Tensor::from_vec(iv, &shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        (Var::from_tensor(&h).unwrap(), Var::from_tensor(&i).unwrap())
    }

    /// The fused op's output and both gradients against direct formulas: `max(a + b, 0)` and
    /// `dy` where `a + b > 0`, 0 elsewhere (also at exactly 0), in f64 and f32.
    #[test]
    fn fused_matches_direct_formulas() {
        for dtype in [DType::F64, DType::F32] {
            let (h, i) = inputs(dtype);
            let y = add_relu_impl(&h, &i, true).unwrap();
            let dy = SeededRng::new(9)
                .normal_tensor(h.dims(), 0.0, 1.0, dtype, &Device::Cpu)
                .unwrap();
            let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            let f = yaware_golden::to_f64s;
            let (a, b, y, dy) = (f(&h), f(&i), f(&y), f(&dy));
            let (gh, gi) = (f(grads.get(&h).unwrap()), f(grads.get(&i).unwrap()));
            let mut zeros = 0;
            for k in 0..a.len() {
                let s = if dtype == DType::F32 {
                    f64::from((a[k] as f32) + (b[k] as f32))
                } else {
                    a[k] + b[k]
                };
                zeros += usize::from(s == 0.0);
                assert_eq!(y[k], s.max(0.0), "{dtype:?} output {k}");
                let g = if s > 0.0 { dy[k] } else { 0.0 };
                assert_eq!(gh[k], g, "{dtype:?} dh {k}");
                assert_eq!(gi[k], g, "{dtype:?} didentity {k}");
            }
            assert!(
                zeros > 50,
                "the data must contain exact zero sums ({zeros})"
            );
        }
    }

    /// The composed path gives the same output (its gradient differs only at exact zeros).
    #[test]
    fn composed_path_gives_the_same_output() {
        let (h, i) = inputs(DType::F32);
        let fused = add_relu_impl(&h, &i, true).unwrap();
        let composed = add_relu_impl(&h, &i, false).unwrap();
        let diff = (fused - composed)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    /// NaN propagates, as through PyTorch's ReLU.
    #[test]
    fn nan_propagates() {
        let h = Tensor::new(&[f32::NAN, 1.0], &Device::Cpu).unwrap();
        let i = Tensor::new(&[0f32, f32::NAN], &Device::Cpu).unwrap();
        let y = add_relu_impl(&h, &i, true)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
    }

    /// Inputs that differ in shape or dtype are a typed error naming both.
    #[test]
    fn mismatched_inputs_are_errors() {
        let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let c = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
        for (x, y, want) in [(&a, &b, "[3, 2]"), (&a, &c, "F64")] {
            match add_relu_impl(x, y, true) {
                Err(Error::Input { op, problem }) => {
                    assert_eq!(op, "add_relu");
                    assert!(
                        problem.contains(want) && problem.contains("[2, 3]"),
                        "{problem}"
                    );
                }
                other => panic!("expected an input error, got {other:?}"),
            }
        }
    }
}
