//! The networks: [`ResNet`] (and [`ResNetTruncated`]), [`DenseNet`], [`AlexNet`], [`Mlp`],
//! and [`BackboneConfig`], the serialisable "class + kwargs" form the estimator builds from.

mod alexnet;
mod densenet;
mod layers;
mod mlp;
mod named;
mod resnet;

pub use alexnet::{AlexNet, AlexNetConfig};
pub use densenet::{DenseNet, DenseNetConfig};
pub use mlp::{Activation, Mlp, MlpConfig};
pub use resnet::{ResNet, ResNetBlock, ResNetConfig, ResNetTruncated, ResNetTruncatedConfig};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;

use crate::{Backbone, Result};

/// A backbone by name and keyword arguments, as the reference's `encoder` + `encoder_kwargs`.
///
/// Serialised with a `name` tag and the keyword arguments beside it, unset ones taking the
/// reference defaults. Deserialisation also accepts the reference's class and factory names
/// (`resnet18`, `resnet50_trunc`, `densenet121`, `ResNet`, …: see
/// [`BackboneConfig::from_name`]); an unknown name, an unexpected keyword or one a factory
/// fixes is an error naming it. Serialisation always writes the canonical tag (`mlp`,
/// `resnet`, `resnet_truncated`, `densenet`, `alexnet`) with every argument.
///
/// ```
/// use yaware_backbones::{BackboneConfig, ResNetConfig};
///
/// let c: BackboneConfig = serde_json::from_str(
///     r#"{"name": "resnet", "block": "basic", "layers": [2, 2, 2, 2], "n_embedding": 128}"#,
/// )?;
/// assert_eq!(c, BackboneConfig::ResNet(ResNetConfig::resnet18().with_n_embedding(128)));
/// let f: BackboneConfig = serde_json::from_str(r#"{"name": "resnet18", "n_embedding": 128}"#)?;
/// assert_eq!(f, c);
/// let c: BackboneConfig = serde_json::from_str(r#"{"name": "densenet"}"#)?;
/// assert_eq!(c.output_dim(), 512);
/// assert!(serde_json::from_str::<BackboneConfig>(r#"{"name": "resnet101"}"#).is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum BackboneConfig {
    /// A multi-layer perceptron ([`Mlp`]).
    Mlp(MlpConfig),
    /// A ResNet-3D ([`ResNet`]), tag `resnet`.
    #[serde(rename = "resnet")]
    ResNet(ResNetConfig),
    /// A truncated ResNet-3D returning a feature map ([`ResNetTruncated`]), tag
    /// `resnet_truncated`.
    #[serde(rename = "resnet_truncated")]
    ResNetTruncated(ResNetTruncatedConfig),
    /// A DenseNet-3D ([`DenseNet`]), tag `densenet`.
    #[serde(rename = "densenet")]
    DenseNet(DenseNetConfig),
    /// An AlexNet-3D ([`AlexNet`]), tag `alexnet`.
    #[serde(rename = "alexnet")]
    AlexNet(AlexNetConfig),
}

impl BackboneConfig {
    /// Width of the network's output (for [`BackboneConfig::ResNetTruncated`], the channels
    /// of its feature map).
    pub fn output_dim(&self) -> usize {
        match self {
            Self::Mlp(c) => c.output_dim(),
            Self::ResNet(c) => c.output_dim(),
            Self::ResNetTruncated(c) => c.output_dim(),
            Self::DenseNet(c) => c.output_dim(),
            Self::AlexNet(c) => c.output_dim(),
        }
    }

    /// Checks every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Mlp(c) => c.validate(),
            Self::ResNet(c) => c.validate(),
            Self::ResNetTruncated(c) => c.validate(),
            Self::DenseNet(c) => c.validate(),
            Self::AlexNet(c) => c.validate(),
        }
    }

    /// Builds a freshly initialised network from `seed`, its variables added to `varmap` under
    /// their reference names.
    pub fn build(
        &self,
        varmap: &VarMap,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Box<dyn Backbone>> {
        Ok(match self {
            Self::Mlp(c) => Box::new(Mlp::new(c.clone(), varmap, seed, dtype, device)?),
            Self::ResNet(c) => Box::new(ResNet::new(c.clone(), varmap, seed, dtype, device)?),
            Self::ResNetTruncated(c) => Box::new(ResNetTruncated::new(
                c.resnet.clone(),
                c.depth,
                varmap,
                seed,
                dtype,
                device,
            )?),
            Self::DenseNet(c) => Box::new(DenseNet::new(c.clone(), varmap, seed, dtype, device)?),
            Self::AlexNet(c) => Box::new(AlexNet::new(c.clone(), varmap, seed, dtype, device)?),
        })
    }

    /// Builds the network from weights read by name from `vb` (converted PyTorch weights,
    /// e.g. `VarBuilder::from_mmaped_safetensors`); a missing or mis-shaped weight is an
    /// error naming it. The network's [`Backbone::varmap`] is a fresh map holding the loaded
    /// tensors.
    pub fn load(&self, vb: VarBuilder) -> Result<Box<dyn Backbone>> {
        Ok(match self {
            Self::Mlp(c) => Box::new(Mlp::load(c.clone(), vb)?),
            Self::ResNet(c) => Box::new(ResNet::load(c.clone(), vb)?),
            Self::ResNetTruncated(c) => {
                Box::new(ResNetTruncated::load(c.resnet.clone(), c.depth, vb)?)
            }
            Self::DenseNet(c) => Box::new(DenseNet::load(c.clone(), vb)?),
            Self::AlexNet(c) => Box::new(AlexNet::load(c.clone(), vb)?),
        })
    }
}
