//! # yaware-backbones
//!
//! 3D convolutional encoders for brain MRI volumes `(N, C, D, H, W) → (N, n_embedding)`:
//! ResNet-3D (18/34/50 and truncated), DenseNet121-3D, AlexNet-3D and an MLP for tabular
//! features, with parameter names equal to the reference `state_dict` keys, plus the 3D ops
//! candle lacks (conv3d, 3D pooling, a fused 3D batch norm) as custom ops with hand-written
//! backward passes.
//!
//! Place in the workspace: depends on candle only; `yaware-heads` and `yaware-estimator`
//! depend on it.
//!
//! **Status: started.** Only the seeded initialisation ([`init`]) exists; the 3D ops and
//! networks come with the backbones issue.

pub mod init;
