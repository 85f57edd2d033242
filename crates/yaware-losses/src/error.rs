//! The error type of `yaware-losses`.

use candle_core::{DType, Shape};

/// Result alias used throughout `yaware-losses`.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a bandwidth was rejected.
///
/// The messages are the reference implementation's (nidl `KernelMetric`), so users porting code
/// recognise them; the variants carry the offending values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BandwidthError {
    /// A NaN or infinite entry.
    #[error("Input contains NaN or infinity: `bandwidth` entry {value}")]
    NonFinite {
        /// The offending entry.
        value: f64,
    },
    /// A negative scalar, a negative entry of a per-feature bandwidth or a negative diagonal
    /// entry of a matrix.
    #[error("`bandwidth` must be positive, got {value}")]
    Negative {
        /// The offending entry.
        value: f64,
    },
    /// A matrix with rows of different lengths, or more columns than rows.
    #[error("`bandwidth` must be a squared matrix, got {rows} rows with {cols} columns")]
    NotSquare {
        /// Number of rows.
        rows: usize,
        /// Length of the first row that differs from the number of rows.
        cols: usize,
    },
    /// A tensor bandwidth of rank 3 or more.
    #[error("`bandwidth` must be 1d or 2d array, got {rank}d")]
    WrongRank {
        /// The rank that was given.
        rank: usize,
    },
    /// An empty per-feature bandwidth or matrix.
    #[error("`bandwidth` must not be empty")]
    Empty,
    /// The bandwidth's size differs from the number of label features.
    #[error(
        "Length of `bandwidth` must match number of features in X, got {got}, expected {expected}."
    )]
    WrongLength {
        /// Size of the bandwidth.
        got: usize,
        /// Number of features of the data.
        expected: usize,
    },
    /// A matrix bandwidth that is not symmetric (numpy's `allclose(H, Hᵀ)` fails).
    #[error(
        "`bandwidth` is not symmetric: H[{row}][{col}] = {value} but H[{col}][{row}] = {transposed}"
    )]
    NotSymmetric {
        /// Row of the first asymmetric pair.
        row: usize,
        /// Column of the first asymmetric pair.
        col: usize,
        /// `H[row][col]`.
        value: f64,
        /// `H[col][row]`.
        transposed: f64,
    },
    /// A matrix bandwidth with an eigenvalue ≤ 0.
    #[error("`bandwidth` is not positive definite: smallest eigenvalue {eigenvalue}")]
    NotPositiveDefinite {
        /// The smallest eigenvalue found.
        eigenvalue: f64,
    },
    /// A data-driven rule ('scott' / 'silverman') fitted on fewer than two rows, where the
    /// unbiased variance is undefined (the reference silently produces NaN).
    #[error("the '{rule}' bandwidth rule needs at least 2 samples to estimate a variance, got {n}")]
    TooFewSamples {
        /// `scott` or `silverman`.
        rule: &'static str,
        /// Number of rows the metric was fitted on.
        n: usize,
    },
}

/// The error type of `yaware-losses`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kernel name that is none of the five kernels.
    #[error(
        "unknown kernel `{name}`: expected one of 'gaussian', 'epanechnikov', 'exponential', 'linear', 'cosine'"
    )]
    UnknownKernel {
        /// The name that was given.
        name: String,
    },
    /// A bandwidth rule name that is neither 'scott' nor 'silverman'.
    #[error("unknown bandwidth rule `{name}`: expected 'scott' or 'silverman'")]
    UnknownBandwidthRule {
        /// The name that was given.
        name: String,
    },
    /// An invalid bandwidth (see [`BandwidthError`]).
    #[error(transparent)]
    Bandwidth(#[from] BandwidthError),
    /// A `KernelMetric` used before `fit`.
    #[error(
        "This KernelMetric instance is not fitted yet. Call 'fit' with appropriate arguments before using this estimator."
    )]
    NotFitted,
    /// A `KernelMetric` given as the loss's bandwidth without being fitted first.
    #[error("If `bandwidth` is a KernelMetric, it should be already fitted on your training data")]
    UnfittedMetricBandwidth,
    /// Labels whose number of features differs from the one the metric was fitted with.
    #[error("Wrong data dimension, got {got} (expected {expected})")]
    FeatureMismatch {
        /// Number of features of the new labels.
        got: usize,
        /// Number of features the metric was fitted with.
        expected: usize,
    },
    /// A hyper-parameter outside its domain.
    #[error("invalid `{name}` = {value}: {rule}")]
    InvalidParam {
        /// The parameter's name (reference spelling).
        name: &'static str,
        /// The value that was given.
        value: f64,
        /// What the value must satisfy.
        rule: &'static str,
    },
    /// Two views whose shapes differ.
    #[error("Two tensors z1, z2 must have same shape, got {z1:?} != {z2:?}")]
    ViewShapeMismatch {
        /// Shape of the first view.
        z1: Shape,
        /// Shape of the second view.
        z2: Shape,
    },
    /// Labels whose length differs from the batch size.
    #[error("Labels length {labels} != vectors length {vectors}")]
    LabelsLength {
        /// Number of labels.
        labels: usize,
        /// Number of embeddings per view.
        vectors: usize,
    },
    /// A tensor of the wrong rank.
    #[error("`{name}` must have rank {expected}, got shape {shape:?}")]
    Rank {
        /// Which input.
        name: &'static str,
        /// The accepted ranks, in words.
        expected: &'static str,
        /// The shape that was given.
        shape: Shape,
    },
    /// An empty batch or an input with no features.
    #[error("`{name}` is empty (shape {shape:?}): at least one sample and one feature are needed")]
    Empty {
        /// Which input.
        name: &'static str,
        /// The shape that was given.
        shape: Shape,
    },
    /// A NaN or infinite value in the labels.
    #[error("`{name}` contains a non-finite value ({value}) at row {row}")]
    NonFinite {
        /// Which input.
        name: &'static str,
        /// The offending value.
        value: f64,
        /// Its row.
        row: usize,
    },
    /// A dtype the computation does not support.
    #[error("`{name}` has unsupported dtype {dtype:?}: {expected}")]
    Dtype {
        /// Which input.
        name: &'static str,
        /// The dtype that was given.
        dtype: DType,
        /// What is accepted.
        expected: &'static str,
    },
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
