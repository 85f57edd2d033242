//! The error type of `yaware-optim`.

/// Result alias used throughout `yaware-optim`.
pub type Result<T> = std::result::Result<T, Error>;

/// The error type of `yaware-optim`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hyper-parameter outside its domain.
    #[error("invalid `{name}` = {value}: {rule}")]
    InvalidParam {
        /// The parameter's name (PyTorch spelling).
        name: &'static str,
        /// The value that was given.
        value: f64,
        /// What the value must satisfy.
        rule: &'static str,
    },
    /// A combination of hyper-parameters that does not make sense.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A parameter group index that does not exist.
    #[error("no parameter group {index}: the optimizer has {count}")]
    NoSuchGroup {
        /// The index asked for.
        index: usize,
        /// Number of groups.
        count: usize,
    },
    /// A scheduler that needs a metric was stepped without one.
    #[error(
        "the scheduler monitors `{monitor}`, which was not logged; logged metrics: [{}]",
        available.join(", ")
    )]
    MissingMetric {
        /// The monitored metric.
        monitor: String,
        /// The metrics that exist.
        available: Vec<String>,
    },
    /// Saved optimizer or scheduler state that does not fit the object it is loaded into.
    #[error("cannot load state: {0}")]
    State(String),
    /// An error raised by candle (tensor ops, safetensors I/O).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Checks `value` with `ok`, or returns `InvalidParam { name, value, rule }`.
pub(crate) fn check(name: &'static str, value: f64, ok: bool, rule: &'static str) -> Result<()> {
    if ok && !value.is_nan() {
        Ok(())
    } else {
        Err(Error::InvalidParam { name, value, rule })
    }
}

/// Checks that `value` is finite and ≥ 0.
pub(crate) fn check_non_negative(name: &'static str, value: f64) -> Result<()> {
    check(
        name,
        value,
        value >= 0.0 && value.is_finite(),
        "must be finite and >= 0",
    )
}
