//! Batches as a loader yields them, possibly nested like Python's lists and tuples, and the
//! parser that finds the two views and the auxiliary variables in them
//! (the reference's `parse_two_views_batch`, with stricter checks on `y`).

use std::fmt;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::two_view::TwoViewBatch;

/// One element of a batch: a tensor, a sequence of elements, or something else (described).
#[derive(Debug, Clone)]
pub enum BatchItem {
    /// A tensor.
    Tensor(Tensor),
    /// A list or tuple of elements.
    Seq(Vec<BatchItem>),
    /// Anything else a loader may yield (a file name, a number…), by its description.
    Other(String),
}

impl From<Tensor> for BatchItem {
    fn from(t: Tensor) -> Self {
        BatchItem::Tensor(t)
    }
}

impl From<Vec<BatchItem>> for BatchItem {
    fn from(v: Vec<BatchItem>) -> Self {
        BatchItem::Seq(v)
    }
}

impl BatchItem {
    /// `[a, b]`.
    pub fn pair(a: impl Into<BatchItem>, b: impl Into<BatchItem>) -> Self {
        BatchItem::Seq(vec![a.into(), b.into()])
    }

    fn describe_into(&self, path: &str, depth: usize, out: &mut String) {
        let indent = "  ".repeat(depth);
        match self {
            BatchItem::Tensor(t) => out.push_str(&format!(
                "{indent}{path}: Tensor shape={:?} dtype={:?}\n",
                t.dims(),
                t.dtype()
            )),
            BatchItem::Seq(items) => {
                out.push_str(&format!("{indent}{path}: list len={}\n", items.len()));
                for (i, item) in items.iter().enumerate() {
                    item.describe_into(&format!("{path}[{i}]"), depth + 1, out);
                }
            }
            BatchItem::Other(d) => out.push_str(&format!("{indent}{path}: {d}\n")),
        }
    }

    /// A tree dump of the batch, one line per element with the shapes and dtypes of tensors.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        self.describe_into("batch", 0, &mut out);
        out
    }
}

/// What is wrong with a batch given to [`parse_two_views_batch`].
#[derive(Debug, Clone, PartialEq)]
pub enum BatchProblem {
    /// Neither `[X1, X2]` nor `([X1, X2], y)`.
    Structure,
    /// A view is not a tensor.
    ViewNotTensor,
    /// A view has no batch dimension.
    ViewRank,
    /// The views' shapes differ.
    ViewShapes,
    /// The views' dtypes differ.
    ViewDtypes,
    /// `y` is neither a tensor nor absent.
    LabelsNotTensor,
    /// `y` has another number of rows than the views.
    LabelsLength {
        /// Rows of `y`.
        got: usize,
        /// Samples in the views.
        expected: usize,
    },
    /// `y` has rank 0 or more than 2.
    LabelsRank {
        /// The rank of `y`.
        rank: usize,
    },
    /// `y` holds a NaN or an infinity.
    LabelsNonFinite,
}

impl fmt::Display for BatchProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchProblem::Structure => f.write_str(
                "batch should be `[X1, X2]` or `([X1, X2], y)` where `X1` and `X2` are tensors representing two views of the same samples.",
            ),
            BatchProblem::ViewNotTensor => f.write_str("`X1` and `X2` should be tensors."),
            BatchProblem::ViewRank => f.write_str("`X1` and `X2` should have a batch dimension."),
            BatchProblem::ViewShapes => f.write_str("`X1` and `X2` should have same shape."),
            BatchProblem::ViewDtypes => f.write_str("`X1` and `X2` should have the same dtype."),
            BatchProblem::LabelsNotTensor => f.write_str("`y` must be a tensor or None."),
            BatchProblem::LabelsLength { got, expected } => {
                write!(f, "`y` has {got} rows but the views have {expected} samples.")
            }
            BatchProblem::LabelsRank { rank } => {
                write!(f, "`y` must have shape (N,) or (N, F), got rank {rank}.")
            }
            BatchProblem::LabelsNonFinite => f.write_str("`y` contains NaN or infinite values."),
        }
    }
}

fn invalid(problem: BatchProblem, batch: &BatchItem) -> Error {
    Error::InvalidBatch {
        problem,
        got: batch.describe(),
    }
}

/// Finds the two views and the optional auxiliary variables in a batch, accepting the
/// reference's two shapes, `[X1, X2]` and `([X1, X2], y)`, and nothing else.
///
/// Checks, in the reference's order and then ours: the structure, that the views are tensors
/// with a batch dimension, the same shape and dtype, that `y` is a tensor of shape `(N,)` or
/// `(N, F)` with finite values. Every error is [`Error::InvalidBatch`], whose message ends with
/// a dump of what was given.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use yaware_data::{BatchItem, parse_two_views_batch};
///
/// let v = Tensor::zeros((4, 25), DType::F32, &Device::Cpu)?;
/// let y = Tensor::new(&[20f32, 30., 40., 50.], &Device::Cpu)?;
/// let batch = BatchItem::pair(BatchItem::pair(v.clone(), v.clone()), y);
/// let parsed = parse_two_views_batch(&batch)?;
/// assert_eq!(parsed.len(), 4);
/// assert!(parsed.y().is_some());
///
/// let three_views = BatchItem::Seq(vec![v.clone().into(), v.clone().into(), v.into()]);
/// let err = parse_two_views_batch(&three_views).unwrap_err().to_string();
/// assert!(err.contains("batch: list len=3"));
/// # Ok::<(), yaware_data::Error>(())
/// ```
pub fn parse_two_views_batch(batch: &BatchItem) -> Result<TwoViewBatch> {
    let (x1, x2, y) = match batch {
        BatchItem::Seq(items) if items.len() == 2 => match &items[0] {
            BatchItem::Seq(views) if views.len() == 2 => (&views[0], &views[1], Some(&items[1])),
            BatchItem::Seq(_) => return Err(invalid(BatchProblem::Structure, batch)),
            _ => (&items[0], &items[1], None),
        },
        _ => return Err(invalid(BatchProblem::Structure, batch)),
    };
    let (BatchItem::Tensor(x1), BatchItem::Tensor(x2)) = (x1, x2) else {
        return Err(invalid(BatchProblem::ViewNotTensor, batch));
    };
    if x1.rank() == 0 || x2.rank() == 0 {
        return Err(invalid(BatchProblem::ViewRank, batch));
    }
    if x1.shape() != x2.shape() {
        return Err(invalid(BatchProblem::ViewShapes, batch));
    }
    if x1.dtype() != x2.dtype() {
        return Err(invalid(BatchProblem::ViewDtypes, batch));
    }
    let n = x1.dims()[0];
    let y = match y {
        None => None,
        Some(BatchItem::Tensor(y)) => {
            if y.rank() == 0 || y.rank() > 2 {
                return Err(invalid(BatchProblem::LabelsRank { rank: y.rank() }, batch));
            }
            if y.dims()[0] != n {
                return Err(invalid(
                    BatchProblem::LabelsLength {
                        got: y.dims()[0],
                        expected: n,
                    },
                    batch,
                ));
            }
            let values = y.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            if values.iter().any(|v| !v.is_finite()) {
                return Err(invalid(BatchProblem::LabelsNonFinite, batch));
            }
            Some(y.clone())
        }
        Some(_) => return Err(invalid(BatchProblem::LabelsNotTensor, batch)),
    };
    TwoViewBatch::new(x1.clone(), x2.clone(), y)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn t(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
    }

    fn problem(batch: &BatchItem) -> BatchProblem {
        match parse_two_views_batch(batch) {
            Err(Error::InvalidBatch { problem, .. }) => problem,
            other => panic!("expected InvalidBatch, got {other:?}"),
        }
    }

    #[test]
    fn both_reference_shapes_are_accepted() {
        let b = parse_two_views_batch(&BatchItem::pair(t(&[4, 25]), t(&[4, 25]))).unwrap();
        assert!(b.y().is_none());
        let labelled = BatchItem::pair(BatchItem::pair(t(&[4, 25]), t(&[4, 25])), t(&[4, 2]));
        let b = parse_two_views_batch(&labelled).unwrap();
        assert_eq!(b.y().unwrap().dims(), &[4, 2]);
    }

    #[test]
    fn structure_errors_dump_the_batch() {
        assert_eq!(problem(&t(&[4, 25]).into()), BatchProblem::Structure);
        let three = BatchItem::Seq(vec![t(&[2]).into(), t(&[2]).into(), t(&[2]).into()]);
        assert_eq!(problem(&three), BatchProblem::Structure);
        assert_eq!(
            problem(&BatchItem::Seq(vec![t(&[2]).into()])),
            BatchProblem::Structure
        );
        let nested3 = BatchItem::pair(BatchItem::Seq(vec![t(&[2]).into(); 3]), t(&[2]));
        assert_eq!(problem(&nested3), BatchProblem::Structure);
        let msg = parse_two_views_batch(&three).unwrap_err().to_string();
        assert!(
            msg.starts_with("batch should be `[X1, X2]` or `([X1, X2], y)`"),
            "{msg}"
        );
        assert!(
            msg.contains("Got\nbatch: list len=3\n  batch[0]: Tensor shape=[2] dtype=F32"),
            "{msg}"
        );
    }

    #[test]
    fn views_must_be_tensors_with_a_batch_dimension_and_one_shape_and_dtype() {
        let other = BatchItem::pair(BatchItem::Other("str 'a.nii'".into()), t(&[2]));
        assert_eq!(problem(&other), BatchProblem::ViewNotTensor);
        assert_eq!(
            problem(&BatchItem::pair(t(&[]), t(&[]))),
            BatchProblem::ViewRank
        );
        assert_eq!(
            problem(&BatchItem::pair(t(&[4, 25]), t(&[4, 24]))),
            BatchProblem::ViewShapes
        );
        let f64v = Tensor::zeros((4, 25), DType::F64, &Device::Cpu).unwrap();
        assert_eq!(
            problem(&BatchItem::pair(t(&[4, 25]), f64v)),
            BatchProblem::ViewDtypes
        );
        // As in the reference, a single-view labelled batch `(X, y)` reads as two views and
        // fails on their shapes.
        assert_eq!(
            problem(&BatchItem::pair(t(&[4, 25]), t(&[4]))),
            BatchProblem::ViewShapes
        );
    }

    #[test]
    fn labels_are_checked() {
        let views = || BatchItem::pair(t(&[4, 3]), t(&[4, 3]));
        let with = |y: BatchItem| BatchItem::pair(views(), y);
        assert_eq!(
            problem(&with(BatchItem::Other("None-like".into()))),
            BatchProblem::LabelsNotTensor
        );
        assert_eq!(
            problem(&with(t(&[3]).into())),
            BatchProblem::LabelsLength {
                got: 3,
                expected: 4
            }
        );
        assert_eq!(
            problem(&with(t(&[4, 1, 1]).into())),
            BatchProblem::LabelsRank { rank: 3 }
        );
        assert_eq!(
            problem(&with(t(&[]).into())),
            BatchProblem::LabelsRank { rank: 0 }
        );
        let nan = Tensor::new(&[1f32, f32::NAN, 3., 4.], &Device::Cpu).unwrap();
        assert_eq!(problem(&with(nan.into())), BatchProblem::LabelsNonFinite);
        let ints = Tensor::new(&[1u32, 2, 3, 4], &Device::Cpu).unwrap();
        assert!(parse_two_views_batch(&with(ints.into())).is_ok());
    }
}
