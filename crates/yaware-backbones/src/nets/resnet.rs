//! ResNet-3D (`resnet18`, `resnet34`, `resnet50`, any block/layer combination) and the
//! truncated ResNet that returns a feature map.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::layers::{Conv3d, ConvSpec, Init, Params, check_volume};
use crate::init::FanMode;
use crate::ops::{self, BatchNorm3d};
use crate::{Backbone, Error, Result};

/// The residual block of a [`ResNet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResNetBlock {
    /// Two `3³` convolutions (expansion 1), as in ResNet-18/34.
    Basic,
    /// `1³ → 3³ → 1³` convolutions (expansion 4), as in ResNet-50.
    Bottleneck,
}

impl ResNetBlock {
    /// Output channels per plane.
    pub fn expansion(self) -> usize {
        match self {
            Self::Basic => 1,
            Self::Bottleneck => 4,
        }
    }
}

/// Configuration of a [`ResNet`] (the reference's `ResNet(block, layers, **kwargs)`); the
/// defaults of the optional fields are the reference's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Block type.
    pub block: ResNetBlock,
    /// Number of blocks in each of the four layers.
    pub layers: [usize; 4],
    /// Input channels (default 1).
    #[serde(default = "one")]
    pub in_channels: usize,
    /// Output width of the `embedding` linear layer (default 512).
    #[serde(default = "n512")]
    pub n_embedding: usize,
    /// Zero the weight of the last batch norm of every block (default false).
    #[serde(default)]
    pub zero_init_residual: bool,
    /// Groups of the Bottleneck `3³` convolution (default 1; ResNeXt uses e.g. 32). BasicBlock
    /// refuses anything but 1, as the reference does.
    #[serde(default = "one")]
    pub groups: usize,
    /// The reference's `width_per_group` (torchvision's `base_width`, default 64): the
    /// Bottleneck `3³` convolution has `⌊planes · width_per_group / 64⌋ · groups` channels.
    /// BasicBlock refuses anything but 64.
    #[serde(default = "n64")]
    pub width_per_group: usize,
    /// Replace the stride 2 of layers 2–4 with a dilation (default none).
    #[serde(default)]
    pub replace_stride_with_dilation: [bool; 3],
    /// Stem kernel size (default 7): stride 2 for 7, else 1; padding `(k − stride + 1) / 2`.
    #[serde(default = "n7")]
    pub initial_kernel_size: usize,
}

fn one() -> usize {
    1
}
fn n7() -> usize {
    7
}
fn n64() -> usize {
    64
}
fn n512() -> usize {
    512
}

const PLANES: [usize; 4] = [64, 128, 256, 512];
const STEM_CHANNELS: usize = 64;

/// One block of the plan of a ResNet body.
#[derive(Debug, Clone, Copy)]
struct BlockPlan {
    inplanes: usize,
    planes: usize,
    stride: usize,
    dilation: usize,
    downsample: bool,
}

impl ResNetConfig {
    /// A ResNet with the reference defaults for `block` and `layers`.
    pub fn new(block: ResNetBlock, layers: [usize; 4]) -> Self {
        Self {
            block,
            layers,
            in_channels: 1,
            n_embedding: 512,
            zero_init_residual: false,
            groups: 1,
            width_per_group: 64,
            replace_stride_with_dilation: [false; 3],
            initial_kernel_size: 7,
        }
    }

    /// `resnet18`: BasicBlock, (2, 2, 2, 2).
    pub fn resnet18() -> Self {
        Self::new(ResNetBlock::Basic, [2, 2, 2, 2])
    }

    /// `resnet34`: BasicBlock, (3, 4, 6, 3).
    pub fn resnet34() -> Self {
        Self::new(ResNetBlock::Basic, [3, 4, 6, 3])
    }

    /// `resnet50`: Bottleneck, (3, 4, 6, 3).
    pub fn resnet50() -> Self {
        Self::new(ResNetBlock::Bottleneck, [3, 4, 6, 3])
    }

    /// The same configuration with another `n_embedding`.
    pub fn with_n_embedding(mut self, n_embedding: usize) -> Self {
        self.n_embedding = n_embedding;
        self
    }

    /// The same configuration with another `in_channels`.
    pub fn with_in_channels(mut self, in_channels: usize) -> Self {
        self.in_channels = in_channels;
        self
    }

    /// Output width (`n_embedding`).
    pub fn output_dim(&self) -> usize {
        self.n_embedding
    }

    /// Channels of the feature map after the stem and `depth` layers.
    pub fn feature_channels(&self, depth: usize) -> usize {
        match depth {
            0 => STEM_CHANNELS,
            d => PLANES[d.min(4) - 1] * self.block.expansion(),
        }
    }

    /// Stride and padding of the stem convolution.
    fn stem_stride_padding(&self) -> (usize, usize) {
        let k = self.initial_kernel_size;
        let stride = if k == 7 { 2 } else { 1 };
        (stride, (k + 1 - stride) / 2)
    }

    /// Checks every hyper-parameter, with the reference's messages where it raises.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("in_channels", self.in_channels),
            ("n_embedding", self.n_embedding),
            ("initial_kernel_size", self.initial_kernel_size),
            ("groups", self.groups),
            ("width_per_group", self.width_per_group),
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
        if self.layers.contains(&0) {
            return Err(Error::InvalidParam {
                name: "layers",
                value: format!("{:?}", self.layers),
                reason: "every layer needs at least one block".into(),
            });
        }
        match self.block {
            ResNetBlock::Basic => {
                if self.groups != 1 || self.width_per_group != 64 {
                    let (name, value) = if self.groups != 1 {
                        ("groups", self.groups)
                    } else {
                        ("width_per_group", self.width_per_group)
                    };
                    return Err(Error::InvalidParam {
                        name,
                        value: value.to_string(),
                        reason: "BasicBlock only supports groups=1 and base_width=64".into(),
                    });
                }
                if self.plan().iter().flatten().any(|b| b.dilation > 1) {
                    return Err(Error::InvalidParam {
                        name: "replace_stride_with_dilation",
                        value: format!("{:?}", self.replace_stride_with_dilation),
                        reason: "Dilation > 1 not supported in BasicBlock".into(),
                    });
                }
            }
            // Any groups and width: the 3³ convolution has `bottleneck_width` channels, a
            // multiple of `groups` by construction.
            ResNetBlock::Bottleneck => {}
        }
        Ok(())
    }

    /// `int(planes · width_per_group / 64) · groups`.
    fn bottleneck_width(&self, planes: usize) -> usize {
        (planes as f64 * (self.width_per_group as f64 / 64.0)) as usize * self.groups
    }

    /// Every block of the four layers, as the reference's `_make_layer` builds them.
    fn plan(&self) -> Vec<Vec<BlockPlan>> {
        let exp = self.block.expansion();
        let mut inplanes = STEM_CHANNELS;
        let mut dilation = 1;
        let mut out = Vec::with_capacity(4);
        for (li, (&planes, &blocks)) in PLANES.iter().zip(&self.layers).enumerate() {
            let mut stride = if li == 0 { 1 } else { 2 };
            let previous_dilation = dilation;
            if li > 0 && self.replace_stride_with_dilation[li - 1] {
                dilation *= stride;
                stride = 1;
            }
            let mut layer = vec![BlockPlan {
                inplanes,
                planes,
                stride,
                dilation: previous_dilation,
                downsample: stride != 1 || inplanes != planes * exp,
            }];
            inplanes = planes * exp;
            for _ in 1..blocks {
                layer.push(BlockPlan {
                    inplanes,
                    planes,
                    stride: 1,
                    dilation,
                    downsample: false,
                });
            }
            out.push(layer);
        }
        out
    }
}

/// One residual block.
#[derive(Debug)]
struct Block {
    /// `conv1, conv2[, conv3]` with their batch norms.
    convs: Vec<(Conv3d, BatchNorm3d)>,
    downsample: Option<(Conv3d, BatchNorm3d)>,
}

impl Block {
    fn build(p: &mut Params, prefix: &str, cfg: &ResNetConfig, plan: BlockPlan) -> Result<Self> {
        let exp = cfg.block.expansion();
        let kaiming = Init::KaimingNormal(FanMode::FanOut);
        let last_bn = if cfg.zero_init_residual { 0.0 } else { 1.0 };
        let specs: Vec<ConvSpec> = match cfg.block {
            ResNetBlock::Basic => vec![
                ConvSpec::new(plan.inplanes, plan.planes, 3, plan.stride, 1),
                ConvSpec::new(plan.planes, plan.planes, 3, 1, 1),
            ],
            ResNetBlock::Bottleneck => {
                let width = cfg.bottleneck_width(plan.planes);
                vec![
                    ConvSpec::new(plan.inplanes, width, 1, 1, 0),
                    ConvSpec {
                        dilation: plan.dilation,
                        groups: cfg.groups,
                        ..ConvSpec::new(width, width, 3, plan.stride, plan.dilation)
                    },
                    ConvSpec::new(width, plan.planes * exp, 1, 1, 0),
                ]
            }
        };
        let n = specs.len();
        let mut convs = Vec::with_capacity(n);
        for (k, spec) in specs.into_iter().enumerate() {
            let conv = p.conv(&format!("{prefix}.conv{}", k + 1), spec, kaiming, None)?;
            let w = if k + 1 == n { last_bn } else { 1.0 };
            let bn = p.batch_norm(&format!("{prefix}.bn{}", k + 1), spec.cout, w)?;
            convs.push((conv, bn));
        }
        let downsample = if plan.downsample {
            let spec = ConvSpec::new(plan.inplanes, plan.planes * exp, 1, plan.stride, 0);
            let conv = p.conv(&format!("{prefix}.downsample.0"), spec, kaiming, None)?;
            let bn = p.batch_norm(&format!("{prefix}.downsample.1"), spec.cout, 1.0)?;
            Some((conv, bn))
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let last = self.convs.len() - 1;
        let mut h = x.clone();
        for (k, (conv, bn)) in self.convs.iter().enumerate() {
            h = conv.forward(&h)?;
            h = if k < last {
                bn.forward_relu_t(&h, train)?
            } else {
                bn.forward_t(&h, train)?
            };
        }
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        ops::add_relu(&h, &identity)
    }
}

/// Stem and the first `depth` layers, shared by [`ResNet`] and [`ResNetTruncated`].
#[derive(Debug)]
struct Body {
    conv1: Conv3d,
    bn1: BatchNorm3d,
    layers: Vec<Vec<Block>>,
}

impl Body {
    fn build(p: &mut Params, cfg: &ResNetConfig, depth: usize) -> Result<Self> {
        let (stride, padding) = cfg.stem_stride_padding();
        let spec = ConvSpec::new(
            cfg.in_channels,
            STEM_CHANNELS,
            cfg.initial_kernel_size,
            stride,
            padding,
        );
        let conv1 = p.conv("conv1", spec, Init::KaimingNormal(FanMode::FanOut), None)?;
        let bn1 = p.batch_norm("bn1", STEM_CHANNELS, 1.0)?;
        let mut layers = Vec::with_capacity(depth);
        for (li, layer) in cfg.plan().into_iter().take(depth).enumerate() {
            let blocks = layer
                .into_iter()
                .enumerate()
                .map(|(bi, plan)| Block::build(p, &format!("layer{}.{bi}", li + 1), cfg, plan))
                .collect::<Result<Vec<_>>>()?;
            layers.push(blocks);
        }
        Ok(Self { conv1, bn1, layers })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.conv1.forward(x)?;
        let h = self.bn1.forward_relu_t(&h, train)?;
        let mut h = ops::max_pool3d(&h, [3; 3], [2; 3], [1; 3])?;
        for block in self.layers.iter().flatten() {
            h = block.forward_t(&h, train)?;
        }
        Ok(h)
    }
}

/// ResNet-3D: `(N, in_channels, D, H, W) → (N, n_embedding)`.
///
/// Stem `conv1` (no bias) → `bn1` → ReLU → max pool (3, 2, 1) → `layer1`…`layer4` → global
/// average pool → `embedding` (linear). Parameter names are the reference `state_dict` keys
/// (`conv1.weight`, `layer2.0.downsample.0.weight`, `embedding.bias`, …) and the map also
/// holds every batch norm's `running_mean`, `running_var` and `num_batches_tracked`.
///
/// Initialisation (from our seeded generator): convolutions `kaiming_normal(fan_out, relu)`
/// = `N(0, 2/fan_out)`, batch norms weight 1 and bias 0 (the last one of each block 0 with
/// `zero_init_residual`), `embedding` weight `N(0, 0.01²)` and bias 0.
///
/// Every convolution computes its input gradient only when its input tracks a graph: the stem
/// on a plain data tensor skips it (a design choice that saves the costliest product of the
/// stem's backward pass), while a variable input (saliency maps) still gets its gradient.
pub struct ResNet {
    config: ResNetConfig,
    body: Body,
    embedding: Linear,
    varmap: VarMap,
}

impl ResNet {
    /// A freshly initialised network whose variables are added to `varmap`.
    pub fn new(
        config: ResNetConfig,
        varmap: &VarMap,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::build(config, Params::init(varmap, seed, dtype, device))
    }

    /// A network whose weights come from `vb` by their reference names (converted PyTorch
    /// weights); a missing or mis-shaped weight is an error naming it. The returned network's
    /// [`Backbone::varmap`] is a fresh map holding the loaded tensors.
    pub fn load(config: ResNetConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(config, Params::load(vb))
    }

    fn build(config: ResNetConfig, mut p: Params) -> Result<Self> {
        config.validate()?;
        let body = Body::build(&mut p, &config, 4)?;
        let embedding = p.linear(
            "embedding",
            config.feature_channels(4),
            config.n_embedding,
            Init::Normal(0.01),
            Init::Const(0.0),
        )?;
        Ok(Self {
            varmap: p.varmap().clone(),
            config,
            body,
            embedding,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }
}

impl std::fmt::Debug for ResNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResNet")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Backbone for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_volume("ResNet", x, self.config.in_channels)?;
        let h = self.body.forward_t(x, train)?;
        let h = ops::adaptive_avg_pool3d_1(&h)?.flatten_from(1)?;
        Ok(self.embedding.forward(&h)?)
    }

    fn output_dim(&self) -> usize {
        self.config.n_embedding
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }
}

/// A ResNet-3D cut after the stem and `depth` ∈ 0..=4 layers: `(N, C, D, H, W) → (N, C', D',
/// H', W')`, the feature map, with no pooling and no embedding (the reference's
/// `ResNetTruncated` / `resnet18_trunc`).
///
/// Only the used part is built: its variables have the canonical names (`conv1.*`, `bn1.*`,
/// `layer1.*` … `layer{depth}.*`). The reference module also owns the unused layers and the
/// embedding, and aliases (`first_conv.*`, `layers.*`); those names are ignored when
/// loading. [`Backbone::output_dim`] is the number of channels `C'` of the feature map.
pub struct ResNetTruncated {
    config: ResNetConfig,
    depth: usize,
    body: Body,
    varmap: VarMap,
}

/// Configuration of a [`ResNetTruncated`] (the reference's
/// `ResNetTruncated(block, layers, depth, **kwargs)`): a [`ResNetConfig`], whose
/// `n_embedding` is unused, and the number of layers kept after the stem. Serialised flat:
/// the ResNet's arguments beside `depth`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetTruncatedConfig {
    /// The network's configuration.
    #[serde(flatten)]
    pub resnet: ResNetConfig,
    /// Layers kept after the stem, 0..=4.
    pub depth: usize,
}

impl ResNetTruncatedConfig {
    /// `resnet` cut after the stem and `depth` layers.
    pub fn new(resnet: ResNetConfig, depth: usize) -> Self {
        Self { resnet, depth }
    }

    /// Channels of the output feature map.
    pub fn output_dim(&self) -> usize {
        self.resnet.feature_channels(self.depth)
    }

    /// Checks the depth (0..=4, the reference's message) and the ResNet's hyper-parameters.
    pub fn validate(&self) -> Result<()> {
        ResNetTruncated::check_depth(self.depth)?;
        self.resnet.validate()
    }
}

impl ResNetTruncated {
    fn check_depth(depth: usize) -> Result<()> {
        if depth > 4 {
            return Err(Error::InvalidParam {
                name: "depth",
                value: depth.to_string(),
                reason: "'depth' must be between 0 and 4 (included)".into(),
            });
        }
        Ok(())
    }

    /// A freshly initialised truncated network whose variables are added to `varmap`
    /// (`config.n_embedding` is unused).
    pub fn new(
        config: ResNetConfig,
        depth: usize,
        varmap: &VarMap,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::build(config, depth, Params::init(varmap, seed, dtype, device))
    }

    /// A truncated network whose weights come from `vb` by their reference names; a missing
    /// or mis-shaped weight is an error naming it.
    pub fn load(config: ResNetConfig, depth: usize, vb: VarBuilder) -> Result<Self> {
        Self::build(config, depth, Params::load(vb))
    }

    fn build(config: ResNetConfig, depth: usize, mut p: Params) -> Result<Self> {
        Self::check_depth(depth)?;
        config.validate()?;
        let body = Body::build(&mut p, &config, depth)?;
        Ok(Self {
            varmap: p.varmap().clone(),
            config,
            depth,
            body,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// Number of layers kept after the stem.
    pub fn depth(&self) -> usize {
        self.depth
    }
}

impl std::fmt::Debug for ResNetTruncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResNetTruncated")
            .field("config", &self.config)
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

impl Backbone for ResNetTruncated {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_volume("ResNetTruncated", x, self.config.in_channels)?;
        self.body.forward_t(x, train)
    }

    fn output_dim(&self) -> usize {
        self.config.feature_channels(self.depth)
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }
}
