//! The error type of `yaware-heads`.

/// Result alias used throughout `yaware-heads`.
pub type Result<T> = std::result::Result<T, Error>;

/// The error type of `yaware-heads`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The encoder output is not at least 2-D (the reference's message).
    #[error("Encoder output must be at least a 2D tensor, got shape {shape:?}.")]
    Rank {
        /// The shape that was given.
        shape: candle_core::Shape,
    },
    /// The encoder output width differs from the head's input width (the reference's message).
    #[error(
        "Encoder output dim ({got}) does not match proj_input_dim ({expected}). Either set proj_input_dim correctly or use an encoder whose output dimension matches."
    )]
    InputDim {
        /// Width of the encoder output.
        got: usize,
        /// The head's `input_dim`.
        expected: usize,
    },
    /// A zero dimension in a head configuration.
    #[error("invalid `{name}` = {value}: must be > 0")]
    ZeroDim {
        /// Which dimension.
        name: &'static str,
        /// The value given.
        value: usize,
    },
    /// An error raised by candle (including a missing or mis-shaped weight when loading).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An input refused by a layer op (a dtype or device that differs from the weights').
    #[error(transparent)]
    Op(#[from] yaware_backbones::Error),
}
