//! Bandwidths `H` and the fitted [`KernelMetric`] that turns labels into kernel weights.

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::{BandwidthError, Error, Result};
use crate::kernel::Kernel;
use crate::labels::Labels;
use crate::linalg::{SquareMatrix, spectral_map, symmetric_eigen};

/// The bandwidth `H` of the label kernel ("sigma²" in the paper): distances between labels are
/// `‖H^{-1/2}(y_a − y_b)‖`.
///
/// With one label feature and a scalar `b`, the Gaussian kernel is `exp(−Δy²/(2b))`, so `b = σ²`
/// (the paper's σ = 5 is `Scalar(25.0)`).
///
/// ```
/// use yaware_losses::Bandwidth;
/// assert_eq!("scott".parse::<Bandwidth>()?, Bandwidth::Scott);
/// assert_eq!("2.5".parse::<Bandwidth>()?, Bandwidth::Scalar(2.5));
/// assert!(Bandwidth::Scalar(-1.0).validate().is_err());
/// # Ok::<(), yaware_losses::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Bandwidth {
    /// `H = b·I` (the loss's default is `Scalar(1.0)`).
    Scalar(f64),
    /// `H = diag(v)`, one entry per label feature. A zero entry makes that feature ignored.
    Diagonal(Vec<f64>),
    /// A full symmetric positive-definite `F × F` matrix (rows).
    Full(Vec<Vec<f64>>),
    /// Scott's rule: `H^{1/2} = diag(std)·n^{−1/(d+4)}`, estimated from the data at fit time.
    Scott,
    /// Silverman's rule: `H^{1/2} = diag(std)·(n(d+2)/4)^{−1/(d+4)}`, estimated at fit time.
    Silverman,
}

impl Default for Bandwidth {
    /// `Scalar(1.0)`, the default of `YAwareInfoNCE`.
    fn default() -> Self {
        Bandwidth::Scalar(1.0)
    }
}

impl From<f64> for Bandwidth {
    fn from(b: f64) -> Self {
        Bandwidth::Scalar(b)
    }
}

impl From<Vec<f64>> for Bandwidth {
    fn from(v: Vec<f64>) -> Self {
        Bandwidth::Diagonal(v)
    }
}

impl From<Vec<Vec<f64>>> for Bandwidth {
    fn from(m: Vec<Vec<f64>>) -> Self {
        Bandwidth::Full(m)
    }
}

impl FromStr for Bandwidth {
    type Err = Error;

    /// Parses `"scott"`, `"silverman"` (any case) or a number.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scott" => Ok(Bandwidth::Scott),
            "silverman" => Ok(Bandwidth::Silverman),
            other => other.parse::<f64>().map(Bandwidth::Scalar).map_err(|_| {
                Error::UnknownBandwidthRule {
                    name: s.to_string(),
                }
            }),
        }
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bandwidth::Scalar(b) => write!(f, "{b:?}"),
            Bandwidth::Diagonal(v) => write!(f, "{v:?}"),
            Bandwidth::Full(m) => write!(f, "{m:?}"),
            Bandwidth::Scott => f.write_str("scott"),
            Bandwidth::Silverman => f.write_str("silverman"),
        }
    }
}

impl Bandwidth {
    /// Reads a bandwidth from a tensor: rank 0 is a scalar, rank 1 a diagonal, rank 2 a full
    /// matrix. Any numeric dtype is accepted.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let t = t.to_dtype(candle_core::DType::F64)?;
        match t.rank() {
            0 => Ok(Bandwidth::Scalar(t.to_scalar::<f64>()?)),
            1 => Ok(Bandwidth::Diagonal(t.to_vec1::<f64>()?)),
            2 => Ok(Bandwidth::Full(t.to_vec2::<f64>()?)),
            rank => Err(BandwidthError::WrongRank { rank }.into()),
        }
    }

    /// Checks every rule that does not depend on the data: finite entries, no negative scalar,
    /// entry or diagonal entry, a square, symmetric, positive-definite matrix.
    ///
    /// Unlike the reference, negative *off-diagonal* entries of a positive-definite matrix are
    /// accepted (a negative covariance is legitimate).
    pub fn validate(&self) -> Result<()> {
        let check = |v: f64| -> Result<()> {
            if !v.is_finite() {
                Err(BandwidthError::NonFinite { value: v }.into())
            } else {
                Ok(())
            }
        };
        let non_negative = |v: f64| -> Result<()> {
            if v < 0.0 {
                Err(BandwidthError::Negative { value: v }.into())
            } else {
                Ok(())
            }
        };
        match self {
            Bandwidth::Scott | Bandwidth::Silverman => Ok(()),
            Bandwidth::Scalar(b) => {
                check(*b)?;
                non_negative(*b)
            }
            Bandwidth::Diagonal(v) => {
                if v.is_empty() {
                    return Err(BandwidthError::Empty.into());
                }
                v.iter().try_for_each(|&x| check(x))?;
                v.iter().try_for_each(|&x| non_negative(x))
            }
            Bandwidth::Full(rows) => {
                let m = full_matrix(rows)?;
                for i in 0..m.n {
                    non_negative(m.get(i, i))?;
                }
                if m.is_numerically_diagonal() {
                    return Ok(());
                }
                if let Some((row, col)) = m.first_asymmetry() {
                    return Err(BandwidthError::NotSymmetric {
                        row,
                        col,
                        value: m.get(row, col),
                        transposed: m.get(col, row),
                    }
                    .into());
                }
                let (eigenvalues, _) = symmetric_eigen(&m.symmetrized_from_lower());
                let min = eigenvalues.iter().copied().fold(f64::INFINITY, f64::min);
                if min <= 0.0 {
                    return Err(BandwidthError::NotPositiveDefinite { eigenvalue: min }.into());
                }
                Ok(())
            }
        }
    }

    /// `(H^{1/2}, H^{-1/2})` for labels with `d` features (`data` is needed by the rules).
    fn square_roots(&self, data: &Labels) -> Result<(SquareMatrix, SquareMatrix)> {
        let d = data.d;
        let diagonal_roots = |diag: &[f64]| {
            let sqr: Vec<f64> = diag.iter().map(|v| v.sqrt()).collect();
            // A zero variance ignores that feature (inverse 0), as in the reference.
            let inv: Vec<f64> = sqr
                .iter()
                .map(|&s| if s != 0.0 { 1.0 / s } else { 0.0 })
                .collect();
            (SquareMatrix::diagonal(&sqr), SquareMatrix::diagonal(&inv))
        };
        let check_len = |got: usize| -> Result<()> {
            if got != d {
                Err(BandwidthError::WrongLength { got, expected: d }.into())
            } else {
                Ok(())
            }
        };
        match self {
            Bandwidth::Scalar(b) => Ok(diagonal_roots(&vec![*b; d])),
            Bandwidth::Diagonal(v) => {
                check_len(v.len())?;
                Ok(diagonal_roots(v))
            }
            Bandwidth::Full(rows) => {
                check_len(rows.len())?;
                let m = full_matrix(rows)?;
                if m.is_numerically_diagonal() {
                    let diag: Vec<f64> = (0..m.n).map(|i| m.get(i, i)).collect();
                    return Ok(diagonal_roots(&diag));
                }
                let (l, v) = symmetric_eigen(&m.symmetrized_from_lower());
                Ok((
                    spectral_map(&l, &v, f64::sqrt),
                    spectral_map(&l, &v, |x| 1.0 / x.sqrt()),
                ))
            }
            Bandwidth::Scott | Bandwidth::Silverman => {
                let (n, rule) = (data.n, self.rule_name());
                if n < 2 {
                    return Err(BandwidthError::TooFewSamples { rule, n }.into());
                }
                let (nf, df) = (n as f64, d as f64);
                let factor = match self {
                    Bandwidth::Scott => nf.powf(-1.0 / (df + 4.0)),
                    _ => (nf * (df + 2.0) / 4.0).powf(-1.0 / (df + 4.0)),
                };
                let std: Vec<f64> = (0..d)
                    .map(|j| {
                        let mean = (0..n).map(|i| data.row(i)[j]).sum::<f64>() / nf;
                        let ss: f64 = (0..n).map(|i| (data.row(i)[j] - mean).powi(2)).sum();
                        (ss / (nf - 1.0)).sqrt()
                    })
                    .collect();
                let sqr: Vec<f64> = std.iter().map(|s| s * factor).collect();
                let inv: Vec<f64> = std
                    .iter()
                    .map(|&s| if s != 0.0 { (1.0 / s) / factor } else { 0.0 })
                    .collect();
                Ok((SquareMatrix::diagonal(&sqr), SquareMatrix::diagonal(&inv)))
            }
        }
    }

    fn rule_name(&self) -> &'static str {
        match self {
            Bandwidth::Scott => "scott",
            Bandwidth::Silverman => "silverman",
            _ => "numeric",
        }
    }
}

/// Builds a square matrix from rows, checking finiteness and shape.
fn full_matrix(rows: &[Vec<f64>]) -> Result<SquareMatrix> {
    let n = rows.len();
    if n == 0 {
        return Err(BandwidthError::Empty.into());
    }
    if let Some(row) = rows.iter().find(|r| r.len() != n) {
        return Err(BandwidthError::NotSquare {
            rows: n,
            cols: row.len(),
        }
        .into());
    }
    if let Some(&value) = rows.iter().flatten().find(|v| !v.is_finite()) {
        return Err(BandwidthError::NonFinite { value }.into());
    }
    Ok(SquareMatrix {
        n,
        data: rows.concat(),
    })
}

/// What fitting a [`KernelMetric`] fixed.
#[derive(Debug, Clone, PartialEq)]
struct Fitted {
    n_samples: usize,
    n_features: usize,
    sqr_bandwidth: SquareMatrix,
    inv_sqr_bandwidth: SquareMatrix,
}

/// A kernel with its bandwidth, fitted on label data: computes the pairwise similarity matrix
/// `K_ab = k(‖H^{-1/2}(y_a − y_b)‖)` between label vectors.
///
/// Fitting fixes the number of features (and, for the Scott and Silverman rules, estimates
/// `H` from the data). Distances are computed as scikit-learn's `pairwise_distances` does,
/// `sqrt(max(0, ‖a‖² + ‖b‖² − 2a·b))` with an exact zero diagonal, so weights match the
/// reference to rounding.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use yaware_losses::{Bandwidth, Kernel, KernelMetric};
///
/// let y = Tensor::new(&[20f64, 25., 40., 60.], &Device::Cpu)?;
/// let mut metric = KernelMetric::new(Kernel::Gaussian, Bandwidth::Scott)?;
/// let k = metric.fit_pairwise(&y)?;               // (4, 4), f64
/// assert_eq!(k.dims(), &[4, 4]);
/// let sigma = metric.sqr_bandwidth()?.to_vec2::<f64>()?[0][0];
/// assert!((sigma - 13.6186241).abs() < 1e-6);     // Scott's rule on these ages
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct KernelMetric {
    kernel: Kernel,
    bandwidth: Bandwidth,
    fitted: Option<Fitted>,
}

impl Default for KernelMetric {
    /// Gaussian kernel with Scott's rule (the reference's standalone defaults), unfitted.
    fn default() -> Self {
        Self {
            kernel: Kernel::Gaussian,
            bandwidth: Bandwidth::Scott,
            fitted: None,
        }
    }
}

impl KernelMetric {
    /// An unfitted metric; the bandwidth is validated now (everything but its size).
    pub fn new(kernel: Kernel, bandwidth: Bandwidth) -> Result<Self> {
        bandwidth.validate()?;
        Ok(Self {
            kernel,
            bandwidth,
            fitted: None,
        })
    }

    /// The kernel.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The bandwidth as configured.
    pub fn bandwidth(&self) -> &Bandwidth {
        &self.bandwidth
    }

    /// Whether [`fit`](Self::fit) has been called.
    pub fn is_fitted(&self) -> bool {
        self.fitted.is_some()
    }

    /// Number of label features fixed by `fit`.
    pub fn n_features(&self) -> Option<usize> {
        self.fitted.as_ref().map(|f| f.n_features)
    }

    /// Number of rows `fit` saw.
    pub fn n_samples(&self) -> Option<usize> {
        self.fitted.as_ref().map(|f| f.n_samples)
    }

    /// Fits the metric on labels `x` of shape `(n,)` or `(n, n_features)`.
    pub fn fit(&mut self, x: &Tensor) -> Result<&mut Self> {
        self.fit_labels(&Labels::from_tensor(x, "X")?)?;
        Ok(self)
    }

    pub(crate) fn fit_labels(&mut self, x: &Labels) -> Result<()> {
        let (sqr_bandwidth, inv_sqr_bandwidth) = self.bandwidth.square_roots(x)?;
        self.fitted = Some(Fitted {
            n_samples: x.n,
            n_features: x.d,
            sqr_bandwidth,
            inv_sqr_bandwidth,
        });
        Ok(())
    }

    /// The `(n, n)` f64 kernel matrix between the rows of `x`, on `x`'s device.
    pub fn pairwise(&self, x: &Tensor) -> Result<Tensor> {
        let labels = Labels::from_tensor(x, "X")?;
        let k = self.pairwise_labels(&labels)?;
        Ok(Tensor::from_vec(k, (labels.n, labels.n), x.device())?)
    }

    /// [`fit`](Self::fit) then [`pairwise`](Self::pairwise) on the same data.
    pub fn fit_pairwise(&mut self, x: &Tensor) -> Result<Tensor> {
        self.fit(x)?;
        self.pairwise(x)
    }

    /// `H^{1/2}` (`F × F`, f64, CPU): what the reference calls `sqr_bandwidth_`.
    pub fn sqr_bandwidth(&self) -> Result<Tensor> {
        let f = self.fitted.as_ref().ok_or(Error::NotFitted)?;
        square_to_tensor(&f.sqr_bandwidth)
    }

    /// `H^{-1/2}` (`F × F`, f64, CPU): what the reference calls `inv_sqr_bandwidth_`.
    pub fn inv_sqr_bandwidth(&self) -> Result<Tensor> {
        let f = self.fitted.as_ref().ok_or(Error::NotFitted)?;
        square_to_tensor(&f.inv_sqr_bandwidth)
    }

    /// The `(n, n)` kernel matrix with an exact `k(0)` diagonal (scikit-learn forces the
    /// distance of a row to itself to 0).
    pub(crate) fn pairwise_labels(&self, x: &Labels) -> Result<Vec<f64>> {
        let mut k = self.kernel_block(x)?;
        for i in 0..x.n {
            k[i * x.n + i] = self.kernel.eval(0.0);
        }
        Ok(k)
    }

    /// The `(n, n)` kernel matrix with every entry, the diagonal included, computed by the
    /// `‖a‖² + ‖b‖² − 2a·b` expansion: the block that repeats in the y-Aware `[y; y]` matrix.
    ///
    /// The expansion cancels for nearby labels, so its rounding shows in the kernels that are
    /// linear in the distance (a label and its copy can be ~1e-7 apart instead of 0). To match
    /// the reference to 1e-10 and not just 1e-7, the operations are ordered as its libraries
    /// order them: `Y·(H^{-1/2})ᵀ` and `a·b` as BLAS does (fused multiply-adds, in order), the
    /// squared norms as numpy's `einsum` does (see [`simd_sum_of_squares`]).
    pub(crate) fn kernel_block(&self, x: &Labels) -> Result<Vec<f64>> {
        let f = self.fitted.as_ref().ok_or(Error::NotFitted)?;
        if x.d != f.n_features {
            return Err(Error::FeatureMismatch {
                got: x.d,
                expected: f.n_features,
            });
        }
        let (n, d) = (x.n, x.d);
        let inv = &f.inv_sqr_bandwidth;
        // Xt = Y · (H^{-1/2})ᵀ
        let mut xt = vec![0.0; n * d];
        for i in 0..n {
            let row = x.row(i);
            for k in 0..d {
                xt[i * d + k] = (0..d).fold(0.0, |acc, j| row[j].mul_add(inv.get(k, j), acc));
            }
        }
        let norms: Vec<f64> = xt.chunks_exact(d).map(simd_sum_of_squares).collect();
        let kernel = self.kernel;
        let mut out = vec![0.0; n * n];
        let fill_row = |(i, out_row): (usize, &mut [f64])| {
            let a = &xt[i * d..(i + 1) * d];
            for (j, o) in out_row.iter_mut().enumerate() {
                let b = &xt[j * d..(j + 1) * d];
                // BLAS accumulates with fused multiply-adds in order.
                let dot = a
                    .iter()
                    .zip(b)
                    .fold(0.0_f64, |acc, (u, v)| u.mul_add(*v, acc));
                let sq = (-2.0 * dot + norms[i]) + norms[j];
                *o = kernel.eval(sq.max(0.0).sqrt());
            }
        };
        if n >= 256 {
            out.par_chunks_mut(n).enumerate().for_each(fill_row);
        } else {
            out.chunks_mut(n).enumerate().for_each(fill_row);
        }
        Ok(out)
    }
}

/// `Σ x²` summed as numpy's `einsum("ij,ij->i")` does on a 4-lane f64 SIMD machine (AVX2):
/// lane `l` accumulates `x[4c + l]²` with fused multiply-adds (in blocks of 16 for long rows,
/// last sub-vector first), and the lanes are added as `(l0 + l2) + (l1 + l3)`.
fn simd_sum_of_squares(x: &[f64]) -> f64 {
    let mut lanes = [0.0_f64; 4];
    let mut blocks = x.chunks_exact(16);
    for block in &mut blocks {
        for sub in block.chunks_exact(4).rev() {
            for (lane, v) in lanes.iter_mut().zip(sub) {
                *lane = v.mul_add(*v, *lane);
            }
        }
    }
    for sub in blocks.remainder().chunks(4) {
        for (lane, v) in lanes.iter_mut().zip(sub) {
            *lane = v.mul_add(*v, *lane);
        }
    }
    (lanes[0] + lanes[2]) + (lanes[1] + lanes[3])
}

fn square_to_tensor(m: &SquareMatrix) -> Result<Tensor> {
    Ok(Tensor::from_vec(m.data.clone(), (m.n, m.n), &Device::Cpu)?)
}
