//! # yaware-estimator
//!
//! [`YAwareContrastiveLearning`]: the y-Aware estimator composing an encoder, a projection head,
//! the y-Aware InfoNCE loss, an optimizer and a scheduler, built from one serialisable
//! [`YAwareConfig`], with a small Lightning-like trainer ([`fit`](YAwareContrastiveLearning::fit),
//! hooks and [`Callback`]s, checkpoints and resume) and
//! [`transform`](YAwareContrastiveLearning::transform) (encoder features).
//!
//! Place in the workspace: the top library crate; it depends on every other `yaware-*` crate
//! and is the only one that knows about epochs, callbacks, checkpoints and logging.

mod callbacks;
mod config;
mod error;
pub mod metrics;
mod model;
pub mod probing;
mod source;
pub mod trainer;

pub use callbacks::{
    Callback, Control, CsvLogger, EarlyStopping, LearningRateMonitor, Mode, ModelCheckpoint,
    ProgressBar,
};
pub use config::{
    BandwidthSpec, HeadKind, HeadKwargs, IntervalSpec, LrSchedulerKwargs, LrSchedulerSpec,
    OptimizerKwargs, OptimizerName, PlateauModeSpec, Precision, YAwareConfig,
};
pub use error::{Error, Result};
pub use metrics::{Metric, MetricsCallback};
pub use model::{
    ConfiguredScheduler, ProjectionModule, StepOutput, YAwareBuilder, YAwareContrastiveLearning,
};
pub use probing::{ModelProbing, ModelProbingCallback, Probe};
pub use source::BatchSource;
pub use trainer::{History, MetricRecord, TrainerState};
