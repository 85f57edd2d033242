//! Auxiliary variables (labels) read from a tensor into a host f64 matrix.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// An `n × d` row-major f64 matrix of label vectors, finite by construction.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Labels {
    pub(crate) n: usize,
    pub(crate) d: usize,
    pub(crate) data: Vec<f64>,
}

impl Labels {
    /// Reads a `(n,)` or `(n, d)` tensor of any numeric dtype; a 1-D tensor is one feature.
    pub(crate) fn from_tensor(y: &Tensor, name: &'static str) -> Result<Self> {
        let (n, d) = match *y.dims() {
            [n] => (n, 1),
            [n, d] => (n, d),
            _ => {
                return Err(Error::Rank {
                    name,
                    expected: "1 (n,) or 2 (n, n_features)",
                    shape: y.shape().clone(),
                });
            }
        };
        if n == 0 || d == 0 {
            return Err(Error::Empty {
                name,
                shape: y.shape().clone(),
            });
        }
        let data = y.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        Self::from_vec(n, d, data, name)
    }

    /// Wraps row-major data, rejecting non-finite values.
    pub(crate) fn from_vec(n: usize, d: usize, data: Vec<f64>, name: &'static str) -> Result<Self> {
        debug_assert_eq!(data.len(), n * d, "label buffer size");
        if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                name,
                value: data[pos],
                row: pos / d,
            });
        }
        Ok(Self { n, d, data })
    }

    #[inline]
    pub(crate) fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.d..(i + 1) * self.d]
    }
}
