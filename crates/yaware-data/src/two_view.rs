//! Two augmented views of a batch, with optional auxiliary variables.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// A batch of two augmented views `x1`, `x2` (same shape, batch first) and optional auxiliary
/// variables `y` (`(N,)` or `(N, F)`).
#[derive(Debug, Clone)]
pub struct TwoViewBatch {
    x1: Tensor,
    x2: Tensor,
    y: Option<Tensor>,
}

impl TwoViewBatch {
    /// Checks that the views have the same shape with a batch dimension, and that `y` has one
    /// row per sample.
    pub fn new(x1: Tensor, x2: Tensor, y: Option<Tensor>) -> Result<Self> {
        if x1.shape() != x2.shape() {
            return Err(Error::ViewShapeMismatch {
                x1: x1.shape().clone(),
                x2: x2.shape().clone(),
            });
        }
        let n = *x1.dims().first().ok_or(Error::NoBatchDimension)?;
        if let Some(y) = &y {
            let got = y.dims().first().copied().unwrap_or(0);
            if got != n {
                return Err(Error::LabelsLength {
                    got,
                    expected: n,
                    shape: y.shape().clone(),
                });
            }
        }
        Ok(Self { x1, x2, y })
    }

    /// The first view.
    pub fn x1(&self) -> &Tensor {
        &self.x1
    }

    /// The second view.
    pub fn x2(&self) -> &Tensor {
        &self.x2
    }

    /// The auxiliary variables, if any.
    pub fn y(&self) -> Option<&Tensor> {
        self.y.as_ref()
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.x1.dims()[0]
    }

    /// Whether the batch has no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parts `(x1, x2, y)`.
    pub fn into_parts(self) -> (Tensor, Tensor, Option<Tensor>) {
        (self.x1, self.x2, self.y)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    fn zeros(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn accepts_matching_views_and_labels() {
        let b = TwoViewBatch::new(
            zeros(&[3, 1, 4, 4, 4]),
            zeros(&[3, 1, 4, 4, 4]),
            Some(zeros(&[3, 2])),
        )
        .unwrap();
        assert_eq!(b.len(), 3);
        assert!(!b.is_empty());
        assert_eq!(b.y().unwrap().dims(), &[3, 2]);
    }

    #[test]
    fn rejects_views_of_different_shapes() {
        let e = TwoViewBatch::new(zeros(&[3, 4]), zeros(&[2, 4]), None).unwrap_err();
        assert!(matches!(e, Error::ViewShapeMismatch { .. }));
    }

    #[test]
    fn rejects_scalar_views() {
        let e = TwoViewBatch::new(zeros(&[]), zeros(&[]), None).unwrap_err();
        assert!(matches!(e, Error::NoBatchDimension));
    }

    #[test]
    fn rejects_labels_of_another_length() {
        let e = TwoViewBatch::new(zeros(&[3, 4]), zeros(&[3, 4]), Some(zeros(&[2]))).unwrap_err();
        assert!(matches!(
            e,
            Error::LabelsLength {
                got: 2,
                expected: 3,
                ..
            }
        ));
        let e = TwoViewBatch::new(zeros(&[3, 4]), zeros(&[3, 4]), Some(zeros(&[]))).unwrap_err();
        assert!(matches!(e, Error::LabelsLength { got: 0, .. }));
    }
}
