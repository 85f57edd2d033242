//! DenseNet-3D (`densenet121` and the general `DenseNet`).

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::layers::{Conv3d, ConvSpec, Init, Params, check_volume, default_bound};
use crate::init::FanMode;
use crate::ops::{self, BatchNorm3d};
use crate::{Backbone, Error, Result};

/// Configuration of a [`DenseNet`]; the defaults are the reference class's (note its
/// `block_config` default `[3, 12, 24, 16]`; only [`DenseNetConfig::densenet121`] uses
/// `[6, 12, 24, 16]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseNetConfig {
    /// Channels added by every dense layer (`k`, default 32).
    #[serde(default = "n32")]
    pub growth_rate: usize,
    /// Dense layers per block (default `[3, 12, 24, 16]`).
    #[serde(default = "default_blocks")]
    pub block_config: Vec<usize>,
    /// Channels of the stem convolution (default 64).
    #[serde(default = "n64")]
    pub num_init_features: usize,
    /// Bottleneck width factor: the `1³` convolution has `bn_size · k` channels (default 4).
    #[serde(default = "n4")]
    pub bn_size: usize,
    /// Input channels (default 1).
    #[serde(default = "one")]
    pub in_channels: usize,
    /// Output width of the `embedding` linear layer (default 512).
    #[serde(default = "n512")]
    pub n_embedding: usize,
    /// The reference's gradient checkpointing switch; accepted for compatibility, it changes
    /// no result and is not implemented (no effect on memory).
    #[serde(default)]
    pub memory_efficient: bool,
}

fn one() -> usize {
    1
}
fn n4() -> usize {
    4
}
fn n32() -> usize {
    32
}
fn n64() -> usize {
    64
}
fn n512() -> usize {
    512
}
fn default_blocks() -> Vec<usize> {
    vec![3, 12, 24, 16]
}

impl Default for DenseNetConfig {
    fn default() -> Self {
        Self {
            growth_rate: 32,
            block_config: default_blocks(),
            num_init_features: 64,
            bn_size: 4,
            in_channels: 1,
            n_embedding: 512,
            memory_efficient: false,
        }
    }
}

impl DenseNetConfig {
    /// `densenet121`: growth 32, blocks `[6, 12, 24, 16]`, 64 initial features.
    pub fn densenet121() -> Self {
        Self {
            block_config: vec![6, 12, 24, 16],
            ..Self::default()
        }
    }

    /// The same configuration with another `n_embedding`.
    pub fn with_n_embedding(mut self, n_embedding: usize) -> Self {
        self.n_embedding = n_embedding;
        self
    }

    /// Output width (`n_embedding`).
    pub fn output_dim(&self) -> usize {
        self.n_embedding
    }

    /// Channels of the feature map before the head (1024 for densenet121).
    pub fn feature_channels(&self) -> usize {
        let mut c = self.num_init_features;
        for (i, &n) in self.block_config.iter().enumerate() {
            c += n * self.growth_rate;
            if i + 1 != self.block_config.len() {
                c /= 2;
            }
        }
        c
    }

    /// Checks every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("growth_rate", self.growth_rate),
            ("num_init_features", self.num_init_features),
            ("bn_size", self.bn_size),
            ("in_channels", self.in_channels),
            ("n_embedding", self.n_embedding),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::InvalidParam {
                    name,
                    value: "0".into(),
                    reason: "must be > 0".into(),
                });
            }
        }
        if self.block_config.is_empty() || self.block_config.contains(&0) {
            return Err(Error::InvalidParam {
                name: "block_config",
                value: format!("{:?}", self.block_config),
                reason: "must be a non-empty list of block sizes > 0".into(),
            });
        }
        Ok(())
    }
}

/// `norm1 → ReLU → conv1 (1³, bn_size·k) → norm2 → ReLU → conv2 (3³, k)`.
#[derive(Debug)]
struct DenseLayer {
    norm1: BatchNorm3d,
    conv1: Conv3d,
    norm2: BatchNorm3d,
    conv2: Conv3d,
}

/// `norm → ReLU → conv (1³, C/2) → average pool (2, 2)`.
#[derive(Debug)]
struct Transition {
    norm: BatchNorm3d,
    conv: Conv3d,
}

/// DenseNet-3D: `(N, in_channels, D, H, W) → (N, n_embedding)`.
///
/// `features.conv0` (7³, stride 2, padding 3, no bias) → `features.norm0` → ReLU → max pool
/// (3, 2, 1) → `features.denseblock{i}` (dense layers `denselayer{j}` with `norm1`, `conv1`,
/// `norm2`, `conv2`) separated by `features.transition{i}` (`norm`, `conv`, average pool 2)
/// → ReLU (no final batch norm) → global average pool → `embedding` (linear). Names are the
/// reference `state_dict` keys.
///
/// Initialisation (from our seeded generator): convolutions `kaiming_normal(fan_in)` =
/// `N(0, 2/fan_in)`, batch norms 1 / 0, `embedding` weight PyTorch's default
/// `U(±1/√fan_in)` and bias 0. As in [`super::ResNet`], the stem computes no input gradient
/// for a data input.
pub struct DenseNet {
    config: DenseNetConfig,
    conv0: Conv3d,
    norm0: BatchNorm3d,
    blocks: Vec<(Vec<DenseLayer>, Option<Transition>)>,
    embedding: Linear,
    varmap: VarMap,
}

impl DenseNet {
    /// A freshly initialised network whose variables are added to `varmap`.
    pub fn new(
        config: DenseNetConfig,
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
    pub fn load(config: DenseNetConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(config, Params::load(vb))
    }

    fn build(config: DenseNetConfig, mut p: Params) -> Result<Self> {
        config.validate()?;
        let kaiming = Init::KaimingNormal(FanMode::FanIn);
        let (k, bn) = (config.growth_rate, config.bn_size);
        let spec = ConvSpec::new(config.in_channels, config.num_init_features, 7, 2, 3);
        let conv0 = p.conv("features.conv0", spec, kaiming, None)?;
        let norm0 = p.batch_norm("features.norm0", config.num_init_features, 1.0)?;
        let mut c = config.num_init_features;
        let mut blocks = Vec::with_capacity(config.block_config.len());
        for (i, &n_layers) in config.block_config.iter().enumerate() {
            let mut layers = Vec::with_capacity(n_layers);
            for j in 0..n_layers {
                let prefix = format!("features.denseblock{}.denselayer{}", i + 1, j + 1);
                let cin = c + j * k;
                let norm1 = p.batch_norm(&format!("{prefix}.norm1"), cin, 1.0)?;
                let spec = ConvSpec::new(cin, bn * k, 1, 1, 0);
                let conv1 = p.conv(&format!("{prefix}.conv1"), spec, kaiming, None)?;
                let norm2 = p.batch_norm(&format!("{prefix}.norm2"), bn * k, 1.0)?;
                let spec = ConvSpec::new(bn * k, k, 3, 1, 1);
                let conv2 = p.conv(&format!("{prefix}.conv2"), spec, kaiming, None)?;
                layers.push(DenseLayer {
                    norm1,
                    conv1,
                    norm2,
                    conv2,
                });
            }
            c += n_layers * k;
            let transition = if i + 1 != config.block_config.len() {
                let prefix = format!("features.transition{}", i + 1);
                let norm = p.batch_norm(&format!("{prefix}.norm"), c, 1.0)?;
                let spec = ConvSpec::new(c, c / 2, 1, 1, 0);
                let conv = p.conv(&format!("{prefix}.conv"), spec, kaiming, None)?;
                c /= 2;
                Some(Transition { norm, conv })
            } else {
                None
            };
            blocks.push((layers, transition));
        }
        let bound = default_bound(&[config.n_embedding, c]);
        let embedding = p.linear(
            "embedding",
            c,
            config.n_embedding,
            Init::Uniform(bound),
            Init::Const(0.0),
        )?;
        Ok(Self {
            varmap: p.varmap().clone(),
            config,
            conv0,
            norm0,
            blocks,
            embedding,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DenseNetConfig {
        &self.config
    }
}

impl std::fmt::Debug for DenseNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenseNet")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Backbone for DenseNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_volume("DenseNet", x, self.config.in_channels)?;
        let h = self.conv0.forward(x)?;
        let h = self.norm0.forward_relu_t(&h, train)?;
        let mut h = ops::max_pool3d(&h, [3; 3], [2; 3], [1; 3])?;
        for (layers, transition) in &self.blocks {
            let mut features = vec![h];
            for layer in layers {
                let cat = Tensor::cat(&features, 1)?;
                let b = layer.norm1.forward_relu_t(&cat, train)?;
                let b = layer.conv1.forward(&b)?;
                let b = layer.norm2.forward_relu_t(&b, train)?;
                features.push(layer.conv2.forward(&b)?);
            }
            h = Tensor::cat(&features, 1)?;
            if let Some(t) = transition {
                let y = t.norm.forward_relu_t(&h, train)?;
                let y = t.conv.forward(&y)?;
                h = ops::avg_pool3d(&y, [2; 3], [2; 3], [0; 3])?;
            }
        }
        let h = ops::adaptive_avg_pool3d_1(&h.relu()?)?.flatten_from(1)?;
        Ok(self.embedding.forward(&h)?)
    }

    fn output_dim(&self) -> usize {
        self.config.n_embedding
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }
}
