//! The error type of `yaware-estimator`.

use std::path::PathBuf;

/// Result alias used throughout `yaware-estimator`.
pub type Result<T> = std::result::Result<T, Error>;

/// The error type of `yaware-estimator`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid configuration value, named, with the value given and the rule it breaks.
    #[error("invalid `{name}` = {value}: {reason}")]
    InvalidConfig {
        /// The argument's name (the reference's spelling).
        name: &'static str,
        /// The value given, formatted.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The projection head's `input_dim` differs from the encoder's output width.
    #[error(
        "projection head input_dim ({head_input_dim}) must equal the encoder output dim ({encoder_output_dim})"
    )]
    HeadInputDim {
        /// The head's `input_dim`.
        head_input_dim: usize,
        /// The encoder's output width.
        encoder_output_dim: usize,
    },
    /// `transform` (or another fitted-only method) called before `fit`.
    #[error(
        "This YAwareContrastiveLearning instance is not fitted yet. Call 'fit' with appropriate arguments before using this estimator."
    )]
    NotFitted,
    /// A training step whose loss is NaN or infinite; training stopped before the update.
    #[error(
        "non-finite training loss {value} at global step {step} (epoch {epoch}, batch {batch})"
    )]
    NonFiniteLoss {
        /// The loss value.
        value: f64,
        /// Global (optimizer) step at which it happened.
        step: u64,
        /// Epoch.
        epoch: u64,
        /// Batch index in the epoch.
        batch: usize,
    },
    /// A step method that needs an optimizer called before `configure_optimizers`.
    #[error("no optimizer: call `configure_optimizers` (or `fit`) first")]
    NoOptimizer,
    /// A monitored metric (early stopping, checkpointing, plateau scheduling) that was never
    /// logged.
    #[error("monitored metric `{monitor}` was not logged; logged metrics: {available:?}")]
    MissingMetric {
        /// The metric asked for.
        monitor: String,
        /// The metrics that were logged.
        available: Vec<String>,
    },
    /// A checkpoint that cannot be used (missing or mis-shaped tensors, bad trainer state).
    #[error("checkpoint {}: {problem}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A state dict whose names or shapes do not match the model.
    #[error("state dict: {0}")]
    StateDict(String),
    /// A file-system error, with the path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A JSON (de)serialisation error.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// An error of the encoder.
    #[error(transparent)]
    Backbone(#[from] yaware_backbones::Error),
    /// An error of the projection head.
    #[error(transparent)]
    Head(#[from] yaware_heads::Error),
    /// An error of the loss.
    #[error(transparent)]
    Loss(#[from] yaware_losses::Error),
    /// An error of the optimizer or the scheduler.
    #[error(transparent)]
    Optim(#[from] yaware_optim::Error),
    /// An error of the data pipeline (batch parsing, loading).
    #[error(transparent)]
    Data(#[from] yaware_data::Error),
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub(crate) fn invalid(
    name: &'static str,
    value: impl ToString,
    reason: impl Into<String>,
) -> Error {
    Error::InvalidConfig {
        name,
        value: value.to_string(),
        reason: reason.into(),
    }
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
