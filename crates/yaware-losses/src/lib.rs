//! # yaware-losses
//!
//! The losses of y-Aware contrastive learning (Dufumier et al., MICCAI 2021) over candle
//! tensors, with autograd through the embeddings:
//!
//! - [`YAwareInfoNce`]: the y-Aware InfoNCE loss, where a continuous auxiliary variable `y`
//!   (age, …) weights which samples count as positives, through a [`Kernel`] on label
//!   distances with a [`Bandwidth`];
//! - [`InfoNce`]: the plain InfoNCE / NT-Xent loss of SimCLR (what y-Aware falls back to
//!   without labels);
//! - [`KernelMetric`]: a kernel with a fitted bandwidth (including Scott's and Silverman's
//!   rules), giving the pairwise weight matrix between label vectors.
//!
//! Numbers follow the reference implementation (nidl 0.0.2) bit for bit where it is right:
//! the 2N × 2N logits with a −1e8 diagonal, f64 weights with the reference's column
//! normalisation, the lazy fit on the first labelled batch. Where it is wrong, this crate
//! fixes it; `docs/PARITY.md` lists each difference.
//!
//! This crate sits at the bottom of the workspace: it depends on candle only and knows nothing
//! about models, optimisers or data loading.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use yaware_losses::{Bandwidth, Kernel, YAwareInfoNce};
//!
//! let dev = Device::Cpu;
//! let z1 = Var::from_tensor(&Tensor::randn(0f32, 1., (8, 16), &dev)?)?;
//! let z2 = Var::from_tensor(&Tensor::randn(0f32, 1., (8, 16), &dev)?)?;
//! let age = Tensor::new(&[21f32, 35., 42., 58., 63., 70., 24., 49.], &dev)?;
//!
//! // Gaussian kernel with σ = 5 years (bandwidth = σ² = 25), τ = 0.1.
//! let loss_fn = YAwareInfoNce::new(Kernel::Gaussian, Bandwidth::Scalar(25.0), 0.1)?;
//! let loss = loss_fn.forward(&z1, &z2, Some(&age))?;
//! let grads = loss.backward()?;
//! assert_eq!(grads.get(&z1).unwrap().dims(), &[8, 16]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bandwidth;
mod error;
mod fused;
mod infonce;
mod kernel;
mod labels;
mod linalg;
mod logits;
mod yaware;

pub use bandwidth::{Bandwidth, KernelMetric};
pub use error::{BandwidthError, Error, Result};
pub use infonce::InfoNce;
pub use kernel::Kernel;
pub use logits::{DIAGONAL_MASK, NORMALIZE_EPS, normalize_rows};
pub use yaware::{WeightNormalization, YAwareInfoNce, YAwareInfoNceConfig};
