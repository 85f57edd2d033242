//! The error type of `yaware-backbones`.

/// Result alias used throughout `yaware-backbones`.
pub type Result<T> = std::result::Result<T, Error>;

/// The error type of `yaware-backbones`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input tensor of the wrong rank, dtype or size for an op or a network.
    #[error("{op}: {problem}")]
    Input {
        /// The op or layer that refused the input.
        op: &'static str,
        /// What was wrong, with the offending shape or dtype.
        problem: String,
    },
    /// An invalid hyper-parameter (kernel size, stride, depth, …).
    #[error("invalid `{name}` = {value}: {reason}")]
    InvalidParam {
        /// The parameter's name, as in the reference API.
        name: &'static str,
        /// The value given, formatted.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A weight missing from a file being loaded.
    #[error("missing weight `{name}` (expected shape {expected:?})")]
    MissingWeight {
        /// The reference `state_dict` name.
        name: String,
        /// The shape the network expects.
        expected: Vec<usize>,
    },
    /// A weight whose shape differs from the network's.
    #[error("weight `{name}` has shape {got:?}, expected {expected:?}")]
    WeightShape {
        /// The reference `state_dict` name.
        name: String,
        /// The shape found in the file.
        got: Vec<usize>,
        /// The shape the network expects.
        expected: Vec<usize>,
    },
    /// A backbone name that [`crate::BackboneConfig::from_name`] does not know.
    #[error("unknown backbone `{name}`; known names: {known}")]
    UnknownBackbone {
        /// The name given.
        name: String,
        /// Every accepted name, comma-separated.
        known: String,
    },
    /// Keyword arguments a backbone cannot take: of the wrong type, missing, unexpected, or
    /// fixed by a factory (`block` for `resnet18`, …).
    #[error("invalid arguments for backbone `{name}`: {problem}")]
    BackboneKwargs {
        /// The backbone's name, as given.
        name: String,
        /// What was wrong, naming the argument.
        problem: String,
    },
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
