//! # yaware-heads
//!
//! Projection heads that map encoder features to the space where the contrastive loss is
//! computed: the y-Aware default (Linear 2048 → 512, ReLU, Linear 512 → 128), the SimCLR and
//! Barlow Twins heads ([`HeadConfig`], [`ProjectionHead`]), and "no head" ([`Head::Identity`]).
//! Parameter names are the reference's (`layers.0.weight`, …) so converted PyTorch weights load
//! by name; fresh heads use PyTorch's default initialisation from a seeded generator.
//!
//! Place in the workspace: depends on candle and `yaware-backbones` (seeded initialisation);
//! `yaware-estimator` depends on it.

mod error;
mod head;

pub use error::{Error, Result};
pub use head::{Head, HeadConfig, ProjectionHead};
