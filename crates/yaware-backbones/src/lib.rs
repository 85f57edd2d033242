//! # yaware-backbones
//!
//! 3D convolutional encoders for brain MRI volumes `(N, C, D, H, W) → (N, n_embedding)`:
//! ResNet-3D (18/34/50 and truncated), DenseNet121-3D, AlexNet-3D and an MLP for tabular
//! features, with parameter names equal to the reference `state_dict` keys, plus the 3D ops
//! candle lacks (conv3d, 3D pooling, a fused 3D batch norm) as custom ops with hand-written
//! backward passes.
//!
//! Every network implements [`Backbone`] and keeps its parameters and batch-norm buffers in a
//! `candle_nn::VarMap` under the reference names.
//!
//! Place in the workspace: depends on candle (plus `gemm` and `rayon` for the kernels, `serde`
//! and `serde_json` for configurations by name); `yaware-heads` and `yaware-estimator`
//! depend on it.
//!
//! **Status:** seeded initialisation ([`init`]), the [`Backbone`] trait, [`Mlp`], the 3D ops
//! ([`ops`]) and the networks ([`ResNet`], [`ResNetTruncated`], [`DenseNet`], [`AlexNet`]),
//! ResNet-18 checked against the reference's golden outputs; grouped convolutions
//! (ResNeXt-style Bottlenecks), the pooling options of PyTorch ([`ops::Pool3dParams`]) and
//! backbones by the reference's class and factory names ([`BackboneConfig::from_name`]).

mod backbone;
mod error;
pub mod init;
mod nets;
pub mod ops;

pub use backbone::{Backbone, buffer_vars, is_buffer_name, trainable_vars};
pub use error::{Error, Result};
pub use nets::{
    Activation, AlexNet, AlexNetConfig, BackboneConfig, DenseNet, DenseNetConfig, Mlp, MlpConfig,
    ResNet, ResNetBlock, ResNetConfig, ResNetTruncated, ResNetTruncatedConfig,
};
