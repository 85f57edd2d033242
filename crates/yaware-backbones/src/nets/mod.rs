//! The networks: [`Mlp`] (and, with the backbones issue, ResNet-3D, DenseNet121-3D, AlexNet-3D),
//! and [`BackboneConfig`], the serialisable "class + kwargs" form the estimator builds from.

mod mlp;

pub use mlp::{Activation, Mlp, MlpConfig};

use candle_core::{DType, Device};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::{Backbone, Result};

/// A backbone by name and keyword arguments, as the reference's `encoder` + `encoder_kwargs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum BackboneConfig {
    /// A multi-layer perceptron ([`Mlp`]).
    Mlp(MlpConfig),
}

impl BackboneConfig {
    /// Width of the network's output.
    pub fn output_dim(&self) -> usize {
        match self {
            Self::Mlp(c) => c.output_dim(),
        }
    }

    /// Checks every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Mlp(c) => c.validate(),
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
        })
    }
}
