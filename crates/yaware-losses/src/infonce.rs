//! InfoNCE (NT-Xent), the SimCLR loss.

use std::fmt;

use candle_core::Tensor;

use crate::error::Result;
use crate::fused::Targets;
use crate::logits::{check_temperature, check_views, contrastive_loss};

/// The InfoNCE (NT-Xent) loss of SimCLR.
///
/// For `2N` anchors (both views), the loss is the mean of `−log softmax` at the other view of
/// the same sample, over the `2N − 1` other embeddings (the self-similarity is masked). This is
/// the mean of the two cross-entropies `CE([S12 | S11], i)` and `CE([S12ᵀ | S22], i)` of the
/// reference. The result has the embeddings' dtype (f32 for f16/bf16 inputs).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use yaware_losses::InfoNce;
///
/// let z1 = Tensor::new(&[[1f32, 0., 0.], [0., 1., 0.], [0., 0., 1.], [1., 1., 0.]], &Device::Cpu)?;
/// let z2 = Tensor::new(
///     &[[0.9f32, 0.1, 0.], [0.1, 0.8, 0.2], [0., 0.3, 1.], [1., 0.5, 0.5]],
///     &Device::Cpu,
/// )?;
/// let loss = InfoNce::new(0.1)?.forward(&z1, &z2)?.to_scalar::<f32>()?;
/// assert!((loss - 0.3186781).abs() < 1e-6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InfoNce {
    temperature: f64,
    fused: bool,
}

impl Default for InfoNce {
    /// Temperature 0.1.
    fn default() -> Self {
        Self {
            temperature: 0.1,
            fused: true,
        }
    }
}

impl InfoNce {
    /// A loss with the given temperature (finite and > 0).
    pub fn new(temperature: f64) -> Result<Self> {
        check_temperature(temperature)?;
        Ok(Self {
            temperature,
            fused: true,
        })
    }

    /// Chooses the fused CPU kernel (the default) or the composition of candle ops (what other
    /// devices use). Both agree to rounding.
    pub fn with_fused_kernel(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// The temperature τ.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The loss of two views `(N, D)`; differentiable with respect to both.
    pub fn forward(&self, z1: &Tensor, z2: &Tensor) -> Result<Tensor> {
        let (n, dtype) = check_views(z1, z2)?;
        let scale = 1.0 / (2 * n) as f64;
        contrastive_loss(
            z1,
            z2,
            self.temperature,
            dtype,
            Targets::Pairs,
            scale,
            dtype,
            self.fused,
        )
    }
}

impl fmt::Display for InfoNce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoNCE(temp={:?})", self.temperature)
    }
}
