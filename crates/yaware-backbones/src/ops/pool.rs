//! 3D pooling with PyTorch's semantics.

use candle_core::Tensor;

use crate::{Error, Result};

fn unimplemented(op: &'static str) -> Error {
    Error::Input {
        op,
        problem: "not implemented yet".into(),
    }
}

/// Max pooling of `x (N, C, D, H, W)` with −∞ padding; in backward the first maximum of each
/// window receives the gradient (PyTorch's rule).
pub fn max_pool3d(
    x: &Tensor,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<Tensor> {
    let _ = (x, kernel, stride, padding);
    Err(unimplemented("max_pool3d"))
}

/// Average pooling of `x (N, C, D, H, W)` (zero padding counted in the average, PyTorch's
/// default `count_include_pad = true`).
pub fn avg_pool3d(
    x: &Tensor,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<Tensor> {
    let _ = (x, kernel, stride, padding);
    Err(unimplemented("avg_pool3d"))
}

/// Adaptive average pooling to `1³`: `(N, C, D, H, W) → (N, C, 1, 1, 1)`.
pub fn adaptive_avg_pool3d_1(x: &Tensor) -> Result<Tensor> {
    let _ = x;
    Err(unimplemented("adaptive_avg_pool3d"))
}

/// Adaptive max pooling to `1³`: `(N, C, D, H, W) → (N, C, 1, 1, 1)`.
pub fn adaptive_max_pool3d_1(x: &Tensor) -> Result<Tensor> {
    let _ = x;
    Err(unimplemented("adaptive_max_pool3d"))
}
