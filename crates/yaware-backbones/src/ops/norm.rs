//! `BatchNorm3d` with a fused forward and backward.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::{Error, Result};

/// 3D batch normalisation over `(N, D, H, W)` per channel: eps 1e-5, momentum 0.1, running
/// variance updated with the unbiased batch variance, `num_batches_tracked` counted. Its
/// variables are `weight`, `bias`, `running_mean`, `running_var` and `num_batches_tracked`
/// (an I64 scalar) under the builder's prefix.
#[derive(Debug, Clone)]
pub struct BatchNorm3d {
    num_features: usize,
}

impl BatchNorm3d {
    /// Creates (weight 1, bias 0, running mean 0, running variance 1) or loads the variables of
    /// a batch norm over `num_features` channels.
    pub fn new(num_features: usize, vb: VarBuilder) -> Result<Self> {
        let _ = vb;
        Ok(Self { num_features })
    }

    /// Number of channels.
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// Normalises `x (N, C, D, H, W)`; train mode uses batch statistics and updates the
    /// running ones.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let _ = (x, train);
        Err(Error::Input {
            op: "batch_norm3d",
            problem: "not implemented yet".into(),
        })
    }

    /// `relu(self.forward_t(x, train))`, fused.
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let _ = (x, train);
        Err(Error::Input {
            op: "batch_norm3d",
            problem: "not implemented yet".into(),
        })
    }
}
