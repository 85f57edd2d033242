//! AlexNet-3D (Abrol et al. 2021, as adapted by the reference for representation learning).

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::layers::{Conv3d, ConvSpec, Init, Params, check_volume, default_bound};
use crate::ops::{self, BatchNorm3d};
use crate::{Backbone, Error, Result};

/// Configuration of an [`AlexNet`] (reference defaults: `n_embedding` 128, one input
/// channel; `n_channels`, the reference's older keyword, is accepted for `in_channels`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlexNetConfig {
    /// Output width of the `regressor` linear layer (default 128).
    #[serde(default = "n128")]
    pub n_embedding: usize,
    /// Input channels (default 1).
    #[serde(default = "one", alias = "n_channels")]
    pub in_channels: usize,
}

fn one() -> usize {
    1
}
fn n128() -> usize {
    128
}

impl Default for AlexNetConfig {
    fn default() -> Self {
        Self {
            n_embedding: 128,
            in_channels: 1,
        }
    }
}

/// `(module index in features, spec, max pool after it)` of the five convolutions.
fn stages(in_channels: usize) -> [(usize, ConvSpec, bool); 5] {
    [
        (0, ConvSpec::new(in_channels, 64, 5, 2, 0), true),
        (4, ConvSpec::new(64, 128, 3, 1, 0), true),
        (8, ConvSpec::new(128, 192, 3, 1, 1), false),
        (11, ConvSpec::new(192, 192, 3, 1, 1), false),
        (14, ConvSpec::new(192, 128, 3, 1, 1), false),
    ]
}

const FEATURES: usize = 128;

impl AlexNetConfig {
    /// Output width (`n_embedding`).
    pub fn output_dim(&self) -> usize {
        self.n_embedding
    }

    /// Checks every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("n_embedding", self.n_embedding),
            ("in_channels", self.in_channels),
        ] {
            if value == 0 {
                return Err(Error::InvalidParam {
                    name,
                    value: "0".into(),
                    reason: "must be > 0".into(),
                });
            }
        }
        Ok(())
    }
}

/// AlexNet-3D: `(N, in_channels, D, H, W) → (N, n_embedding)`.
///
/// `features`: Conv(5³, stride 2, 64) → BN → ReLU → max pool (3, 3) → Conv(3³, 128) → BN →
/// ReLU → max pool (3, 3) → Conv(3³, pad 1, 192) → BN → ReLU → Conv(3³, pad 1, 192) → BN →
/// ReLU → Conv(3³, pad 1, 128) → BN → ReLU → global max pool; then `regressor` (linear).
/// Names are the reference `state_dict` keys: the `nn.Sequential` indices `features.0`,
/// `features.1`, `features.4`, `features.5`, `features.8`, `features.9`, `features.11`,
/// `features.12`, `features.14`, `features.15`, and `regressor`. The convolutions have biases.
///
/// Initialisation (from our seeded generator): PyTorch's defaults for convolutions and the
/// linear layer (weight and bias `U(±1/√fan_in)`), batch norms 1 / 0. As in
/// [`super::ResNet`], the first convolution computes no input gradient for a data input.
///
/// The input must be large enough for the two valid convolutions and pools (at least 33
/// voxels per axis).
pub struct AlexNet {
    config: AlexNetConfig,
    stages: Vec<(Conv3d, BatchNorm3d, bool)>,
    regressor: Linear,
    varmap: VarMap,
}

impl AlexNet {
    /// A freshly initialised network whose variables are added to `varmap`.
    pub fn new(
        config: AlexNetConfig,
        varmap: &VarMap,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::build(config, Params::init(varmap, seed, dtype, device))
    }

    /// A network whose weights come from `vb` by their reference names; a missing or
    /// mis-shaped weight is an error naming it. The returned network's [`Backbone::varmap`]
    /// is a fresh map holding the loaded tensors.
    pub fn load(config: AlexNetConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(config, Params::load(vb))
    }

    fn build(config: AlexNetConfig, mut p: Params) -> Result<Self> {
        config.validate()?;
        let mut out = Vec::with_capacity(5);
        for (index, spec, pool) in stages(config.in_channels) {
            let bound = default_bound(&spec.weight_shape());
            let conv = p.conv(
                &format!("features.{index}"),
                spec,
                Init::Uniform(bound),
                Some(Init::Uniform(bound)),
            )?;
            let bn = p.batch_norm(&format!("features.{}", index + 1), spec.cout, 1.0)?;
            out.push((conv, bn, pool));
        }
        let bound = default_bound(&[config.n_embedding, FEATURES]);
        let regressor = p.linear(
            "regressor",
            FEATURES,
            config.n_embedding,
            Init::Uniform(bound),
            Init::Uniform(bound),
        )?;
        Ok(Self {
            varmap: p.varmap().clone(),
            config,
            stages: out,
            regressor,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AlexNetConfig {
        &self.config
    }
}

impl std::fmt::Debug for AlexNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlexNet")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Backbone for AlexNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_volume("AlexNet", x, self.config.in_channels)?;
        let mut h = x.clone();
        for (conv, bn, pool) in &self.stages {
            h = bn.forward_relu_t(&conv.forward(&h)?, train)?;
            if *pool {
                h = ops::max_pool3d(&h, [3; 3], [3; 3], [0; 3])?;
            }
        }
        let h = ops::adaptive_max_pool3d_1(&h)?.flatten_from(1)?;
        Ok(self.regressor.forward(&h)?)
    }

    fn output_dim(&self) -> usize {
        self.config.n_embedding
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }
}
