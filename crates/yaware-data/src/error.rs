//! The error type of `yaware-data`.

use candle_core::Shape;

/// Result alias used throughout `yaware-data`.
pub type Result<T> = std::result::Result<T, Error>;

/// The error type of `yaware-data`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The two views of a batch have different shapes.
    #[error("the two views must have the same shape, got {x1:?} and {x2:?}")]
    ViewShapeMismatch {
        /// Shape of the first view.
        x1: Shape,
        /// Shape of the second view.
        x2: Shape,
    },
    /// A batch with no sample dimension.
    #[error("a view must have a batch dimension, got a scalar")]
    NoBatchDimension,
    /// Auxiliary variables whose length differs from the batch size.
    #[error("y has {got} rows but the batch has {expected} samples (y shape {shape:?})")]
    LabelsLength {
        /// Rows of `y`.
        got: usize,
        /// Samples in the views.
        expected: usize,
        /// Shape of `y`.
        shape: Shape,
    },
    /// A batch that is not `[X1, X2]` or `([X1, X2], y)` with valid parts; the message ends
    /// with a dump of what was given.
    #[error("{problem} Got\n{got}")]
    InvalidBatch {
        /// What is wrong.
        problem: crate::batch::BatchProblem,
        /// A tree dump of the batch (shapes and dtypes of every part).
        got: String,
    },
    /// A transform hyper-parameter outside its domain.
    #[error("invalid `{name}` = {value}: {rule}")]
    InvalidParam {
        /// The parameter's name (the reference's spelling).
        name: &'static str,
        /// The value given, formatted.
        value: String,
        /// What it must satisfy.
        rule: &'static str,
    },
    /// Volume data that does not fit its shape, or a tensor that is not a volume.
    #[error("invalid volume: {0}")]
    Volume(String),
    /// A file that cannot be used, named with what is wrong.
    #[error("{}: {problem}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong (unreadable, truncated, wrong dimensionality, missing column, …).
        problem: String,
    },
    /// A NIfTI volume whose voxel-to-world affine differs from the dataset's (the first file
    /// kept), by more than `AFFINE_TOLERANCE` in some element: the volumes are not on one grid.
    #[error(
        "{}: voxel-to-world affine {affine:?} differs from {expected:?} of {} (by more than 1e-4 in some element; the volumes must share one grid)",
        path.display(),
        reference.display()
    )]
    AffineMismatch {
        /// The file whose affine differs.
        path: std::path::PathBuf,
        /// The file whose affine the dataset keeps.
        reference: std::path::PathBuf,
        /// The file's affine (row-major, voxel to world).
        affine: Box<[[f64; 4]; 4]>,
        /// The dataset's affine.
        expected: Box<[[f64; 4]; 4]>,
    },
    /// A delimited table (`participants.tsv`, CSV) that cannot be parsed.
    #[error("{}: line {line}: {kind}", path.display())]
    TableSyntax {
        /// The table.
        path: std::path::PathBuf,
        /// The line (1-based) where the problem is: for an unterminated quote, where it opened.
        line: usize,
        /// What is wrong.
        kind: TableSyntax,
    },
    /// A dataset that cannot give its samples (bad targets, index out of range, …).
    #[error("dataset: {0}")]
    Dataset(String),
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A syntax error in a delimited table (see [`Error::TableSyntax`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSyntax {
    /// A quoted field whose closing `"` never comes.
    UnterminatedQuote,
    /// Something other than blanks, the separator or the end of the line after the closing
    /// `"` of a quoted field (a `"` inside a quoted field is written `""`).
    TextAfterQuote(char),
}

impl std::fmt::Display for TableSyntax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableSyntax::UnterminatedQuote => {
                write!(
                    f,
                    "a quoted field opened on this line is never closed (missing `\"`)"
                )
            }
            TableSyntax::TextAfterQuote(c) => write!(
                f,
                "`{c}` after the closing quote of a quoted field (write a quote inside one as `\"\"`)"
            ),
        }
    }
}
