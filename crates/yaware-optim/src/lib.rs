//! # yaware-optim
//!
//! Optimizers over candle [`Var`](candle_core::Var)s with PyTorch's exact update rules and
//! parameter groups ([`Sgd`] with momentum / Nesterov, [`Adam`] with coupled L2, [`AdamW`]),
//! behind one object-safe [`Optimizer`] trait, with state save/load for bit-exact resume.
//!
//! Place in the workspace: depends on candle only; it never sees a batch or an epoch, only
//! gradients, a learning rate and (for plateau scheduling) a metric. `yaware-estimator`
//! depends on it.
//!
//! Learning-rate schedulers own the learning rate ([`LrScheduler`]): PyTorch's StepLR,
//! MultiStepLR, ExponentialLR, CosineAnnealingLR, LinearLR, OneCycleLR, nidl's linear-warmup
//! cosine ([`Schedule`]) and [`ReduceLrOnPlateau`], with Lightning's scheduler contract as data
//! ([`LrSchedulerConfig`]: interval, frequency, monitor, strict).
//!
//! ```
//! use candle_core::{DType, Device, Var};
//! use yaware_optim::{AdamW, AdamWConfig, Optimizer, split_decay_groups};
//!
//! let w = Var::ones((2, 3), DType::F32, &Device::Cpu)?;
//! let b = Var::zeros(2, DType::F32, &Device::Cpu)?;
//! let groups = split_decay_groups(vec![("fc.weight".into(), w.clone()), ("fc.bias".into(), b)]);
//! let mut opt: Box<dyn Optimizer> =
//!     Box::new(AdamW::new(groups.into(), AdamWConfig { lr: 3e-4, ..Default::default() })?);
//! let loss = w.sqr()?.sum_all()?;
//! opt.step(&loss.backward()?)?;
//! assert_eq!(opt.lrs(), [3e-4, 3e-4]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod group;
mod optimizer;
mod scheduler;

pub use error::{Error, Result};
pub use group::{ParamGroup, split_decay_groups};
pub use optimizer::{Adam, AdamConfig, AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
pub use scheduler::{
    Interval, LrScheduler, LrSchedulerConfig, PlateauMode, ReduceLrOnPlateau,
    ReduceLrOnPlateauConfig, Schedule, Scheduler, ThresholdMode,
};
