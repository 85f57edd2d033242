//! `conv3d`: tiled im2col + gemm custom op with a hand-written backward.

use candle_core::Tensor;

use crate::{Error, Result};

/// Per-axis (D, H, W) hyper-parameters of a 3D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dParams {
    /// Stride per axis.
    pub stride: [usize; 3],
    /// Zero padding per axis (both sides).
    pub padding: [usize; 3],
    /// Dilation per axis.
    pub dilation: [usize; 3],
    /// Whether the backward pass computes the input gradient (false for a stem on raw volumes).
    pub input_grad: bool,
}

impl Default for Conv3dParams {
    fn default() -> Self {
        Self {
            stride: [1; 3],
            padding: [0; 3],
            dilation: [1; 3],
            input_grad: true,
        }
    }
}

/// 3D convolution of `x (N, C_in, D, H, W)` with `w (C_out, C_in, kD, kH, kW)`, no bias
/// (add one with `broadcast_add`), groups = 1.
pub fn conv3d(x: &Tensor, w: &Tensor, params: &Conv3dParams) -> Result<Tensor> {
    let _ = (x, w, params);
    Err(Error::Input {
        op: "conv3d",
        problem: "not implemented yet".into(),
    })
}
