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
//!
//! # CPU threads
//!
//! candle 0.11 runs element-wise ops of 64 Ki elements or more on its own spinning thread
//! pool (`candle-bp-*`, sized by `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the
//! physical cores) while matrix products run on rayon. Between ops the pool's workers spin
//! (25 000 iterations, `CANDLE_BARRIER_POOL_SPIN_LIMIT`) and take the cores that gemm's rayon
//! threads need: on a small or busy machine set `CANDLE_NUM_THREADS=1` (element-wise ops on the
//! calling thread, matrix products still parallel). Measured on the 2-core reference machine
//! with other jobs running, runs back to back, one step of the `train_step` MLP bench (batch
//! 256, Adam; PyTorch ≈ 27 ms): at load ≈ 3.5–4, 180 / 84 ms by default and 25–30 ms with
//! `CANDLE_NUM_THREADS=1`; at load ≈ 5.5, 78 / 183 ms by default, 39 / 31 ms with
//! `CANDLE_NUM_THREADS=1`, 42 ms with `RAYON_NUM_THREADS=1`, 51 ms with
//! `CANDLE_BARRIER_POOL_SPIN_LIMIT=0`. The ResNet-18-3D step (batch 8 of `1×32³`; PyTorch
//! ≈ 1.06 s) at load ≈ 4.5: 1.63 s by default, 1.30 s with `CANDLE_NUM_THREADS=1`. Setting
//! `RAYON_NUM_THREADS` too (e.g. to the core count) also spares candle a `/proc/cpuinfo`
//! parse per matrix product (≈ 1 ms of the MLP step, within the noise).
//!
//! # Parity with the reference (nidl 0.0.2, API page 0.0.1)
//!
//! Reproduced: the 0.0.1 API defaults (τ 0.1, Gaussian kernel, bandwidth 1.0, optimizer
//! `"adam"` with `{betas: (0.9, 0.99), weight_decay: 5e-5}`, lr 1e-4, no scheduler, head
//! 2048 → 512 → 128); two separate encoder passes per step (per-view batch-norm statistics);
//! nidl 0.0.2's parameter groups (`backbone`, `backbone_no_decay`, `head`, `head_no_decay`
//! with `exclude_bias_and_norm_wd`); `warmup_cosine` with the warmup converted to steps
//! (`warmup_epochs × T / max_epochs`, a float, with the reference's recursion); `transform`
//! returns encoder features only, eval mode; logged `loss/train` (per step) and `loss/val`
//! (batch-size weighted epoch mean); Lightning's limits (1000 epochs without limits), sanity
//! check (2 batches), `check_val_every_n_epoch`, gradient clipping by norm
//! (`max_norm/(norm + 1e-6)`), gradient accumulation (loss divided by the factor). Whole
//! training steps match the reference's golden runs to 1e-9 (`tests/parity_train.rs`).
//!
//! Deliberate differences:
//! - `optimizer = "sgd"` with the default kwargs trains (`weight_decay` 5e-5 only); the
//!   reference crashes on `betas`. A keyword the optimizer does not have is a typed error.
//! - An optimizer instance with `optimizer_kwargs = None` works (the reference raises
//!   `TypeError` on `len(None)`); the "ignoring kwargs" warnings appear only when kwargs were
//!   given.
//! - `ReduceLROnPlateau` is supported, with `monitor` (checked when the estimator is built).
//! - The head's `input_dim` is checked against the encoder when the estimator is built, not at
//!   the first forward.
//! - Step methods work without a trainer; `fit` keeps the history on error; a non-finite
//!   training loss is a typed error ([`Error::NonFiniteLoss`]) raised before the update.
//! - Epoch-interval schedulers step before `on_train_epoch_end` (Lightning: after), so
//!   checkpoints written there resume exactly.
//! - Checkpoints are safetensors: the `state_dict` names plus `optimizer.*`, `lr_scheduler.*`
//!   and the trainer state as JSON bytes (`trainer_state_json`). The metrics file is
//!   Lightning's wide `CSVLogger` layout (`epoch,step,<metric>...`). Resuming is exact for
//!   data sources whose batches are a function of the epoch (the data crate's loader). A lazily fitted kernel metric (Scott,
//!   Silverman) is saved as the labels that fitted it (`loss.metric_labels`) and refitted on
//!   resume, bit for bit; an encoder's own generator (the dropout masks of an MLP) is saved
//!   as `encoder_rng.state`, so a resumed run draws the masks the uninterrupted one draws.
//! - `exclude_bias_and_norm_wd` defaults to false (the 0.0.1 API has one group per module).
//! - Probes (ridge, logistic, kNN) are our own small implementations: logistic regression is
//!   one-vs-rest for more than two classes (scikit-learn's default is multinomial).

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
