//! The y-Aware InfoNCE loss (Dufumier et al., MICCAI 2021), exactly as the reference computes it.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use candle_core::{DType, Tensor};

use crate::bandwidth::{Bandwidth, KernelMetric};
use crate::error::{Error, Result};
use crate::fused::Targets;
use crate::infonce::InfoNce;
use crate::kernel::Kernel;
use crate::labels::Labels;
use crate::logits::{check_temperature, check_views, contrastive_loss};

/// How the kernel weight matrix `W` (zero diagonal) is normalised before it multiplies the
/// log-softmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightNormalization {
    /// `W̃_ab = W_ab / Σ_c W_bc`: every **column** sums to 1. This is what the reference code
    /// (nidl, and the original y-Aware code) computes, through numpy broadcasting of
    /// `weights /= weights.sum(axis=1)`. The default, for parity.
    #[default]
    Column,
    /// `W̃_ab = W_ab / Σ_c W_ac`: every **row** sums to 1, as the paper's formula reads. The
    /// two agree only when all row sums are equal.
    Row,
}

/// Configuration of [`YAwareInfoNce`], with the reference's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct YAwareInfoNceConfig {
    /// Temperature τ of the logits (default 0.1).
    pub temperature: f64,
    /// Kernel on label distances (default Gaussian).
    pub kernel: Kernel,
    /// Bandwidth `H` (default `Scalar(1.0)`). `Scott` / `Silverman` are estimated from the first
    /// labelled batch (the reference cannot take a rule here).
    pub bandwidth: Bandwidth,
    /// Weight normalisation (default `Column`, the reference's).
    pub normalization: WeightNormalization,
}

impl Default for YAwareInfoNceConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            kernel: Kernel::Gaussian,
            bandwidth: Bandwidth::Scalar(1.0),
            normalization: WeightNormalization::Column,
        }
    }
}

impl YAwareInfoNceConfig {
    /// Validates the configuration into a loss.
    pub fn build(&self) -> Result<YAwareInfoNce> {
        check_temperature(self.temperature)?;
        self.bandwidth.validate()?;
        Ok(YAwareInfoNce {
            temperature: self.temperature,
            normalization: self.normalization,
            metric: MetricSource::Lazy {
                kernel: self.kernel,
                bandwidth: self.bandwidth.clone(),
                fitted: Mutex::new(None),
            },
            fused: true,
        })
    }
}

/// Where the loss gets its fitted [`KernelMetric`].
#[derive(Debug)]
enum MetricSource {
    /// Fitted on the first labelled batch (`[y; y]`) and kept afterwards, as the reference does.
    Lazy {
        kernel: Kernel,
        bandwidth: Bandwidth,
        fitted: Mutex<Option<KernelMetric>>,
    },
    /// Given by the user, already fitted.
    Given(KernelMetric),
}

/// The y-Aware InfoNCE loss.
///
/// With `2N` embeddings `[z1; z2]` and labels `Ŷ = [y; y]`:
///
/// `L = −(1/N) Σ_ab W̃_ab · log_softmax(S)_ab`, with `S_ab = ẑ_a·ẑ_b/τ − 1e8·δ_ab` and
/// `W̃` the normalised kernel weights `k(‖H^{-1/2}(ŷ_a − ŷ_b)‖)` with a zero diagonal.
///
/// This is the reference's 2N × 2N formulation bit for bit: f64 weights (so the loss is f64
/// even for f32 embeddings, gradients keep the embeddings' dtype), column normalisation by
/// default (see [`WeightNormalization`]), the internal metric fitted once, on the first
/// labelled batch. Without labels it is the plain [`InfoNce`] (note the factor 2: when `H → 0`
/// with distinct labels, the y-Aware value tends to twice the InfoNCE value, as in the
/// reference).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use yaware_losses::{Bandwidth, Kernel, YAwareInfoNce};
///
/// let dev = Device::Cpu;
/// let z1 = Tensor::new(&[[1f32, 0., 0.], [0., 1., 0.], [0., 0., 1.], [1., 1., 0.]], &dev)?;
/// let z2 = Tensor::new(&[[0.9f32, 0.1, 0.], [0.1, 0.8, 0.2], [0., 0.3, 1.], [1., 0.5, 0.5]], &dev)?;
/// let age = Tensor::new(&[20f32, 25., 40., 60.], &dev)?;
/// let loss = YAwareInfoNce::new(Kernel::Gaussian, Bandwidth::Scalar(100.0), 0.1)?;
/// let value = loss.forward(&z1, &z2, Some(&age))?.to_scalar::<f64>()?;
/// assert!((value - 9.170748928251665).abs() < 1e-6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct YAwareInfoNce {
    temperature: f64,
    normalization: WeightNormalization,
    metric: MetricSource,
    fused: bool,
}

impl Clone for YAwareInfoNce {
    fn clone(&self) -> Self {
        let metric = match &self.metric {
            MetricSource::Lazy {
                kernel,
                bandwidth,
                fitted,
            } => MetricSource::Lazy {
                kernel: *kernel,
                bandwidth: bandwidth.clone(),
                fitted: Mutex::new(lock(fitted).clone()),
            },
            MetricSource::Given(m) => MetricSource::Given(m.clone()),
        };
        Self {
            temperature: self.temperature,
            normalization: self.normalization,
            metric,
            fused: self.fused,
        }
    }
}

impl Default for YAwareInfoNce {
    /// τ = 0.1, Gaussian kernel, bandwidth 1.0, column normalisation.
    fn default() -> Self {
        YAwareInfoNceConfig::default()
            .build()
            .expect("the default configuration is valid")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a half-written metric: assignment is atomic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl YAwareInfoNce {
    /// A loss with the given kernel, bandwidth and temperature, column normalisation.
    pub fn new(kernel: Kernel, bandwidth: Bandwidth, temperature: f64) -> Result<Self> {
        YAwareInfoNceConfig {
            temperature,
            kernel,
            bandwidth,
            ..Default::default()
        }
        .build()
    }

    /// A loss that uses a user-fitted [`KernelMetric`] (its own kernel and bandwidth) instead of
    /// fitting one on the first batch. The metric must be fitted.
    pub fn with_metric(metric: KernelMetric, temperature: f64) -> Result<Self> {
        check_temperature(temperature)?;
        if !metric.is_fitted() {
            return Err(Error::UnfittedMetricBandwidth);
        }
        Ok(Self {
            temperature,
            normalization: WeightNormalization::Column,
            metric: MetricSource::Given(metric),
            fused: true,
        })
    }

    /// The same loss with another weight normalisation.
    pub fn with_normalization(mut self, normalization: WeightNormalization) -> Self {
        self.normalization = normalization;
        self
    }

    /// Chooses the fused CPU kernel (the default) or the composition of candle ops (what other
    /// devices use). Both agree to rounding.
    pub fn with_fused_kernel(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// The temperature τ.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The kernel in use (the metric's own one when a metric was given).
    pub fn kernel(&self) -> Kernel {
        match &self.metric {
            MetricSource::Lazy { kernel, .. } => *kernel,
            MetricSource::Given(m) => m.kernel(),
        }
    }

    /// The bandwidth as configured (the metric's own one when a metric was given).
    pub fn bandwidth(&self) -> &Bandwidth {
        match &self.metric {
            MetricSource::Lazy { bandwidth, .. } => bandwidth,
            MetricSource::Given(m) => m.bandwidth(),
        }
    }

    /// The weight normalisation.
    pub fn normalization(&self) -> WeightNormalization {
        self.normalization
    }

    /// The fitted metric, once a labelled batch has been seen (or the one given).
    pub fn metric(&self) -> Option<KernelMetric> {
        match &self.metric {
            MetricSource::Lazy { fitted, .. } => lock(fitted).clone(),
            MetricSource::Given(m) => Some(m.clone()),
        }
    }

    /// Forgets the lazily fitted metric, so that the next labelled batch fits it again.
    pub fn reset(&mut self) {
        if let MetricSource::Lazy { fitted, .. } = &mut self.metric {
            *fitted.get_mut().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// The loss of two views `(N, D)` with optional labels `(N,)` or `(N, F)` (any numeric
    /// dtype). Differentiable with respect to `z1` and `z2`; the labels get no gradient.
    ///
    /// With labels the result is an f64 scalar; without, the [`InfoNce`] value in the
    /// embeddings' dtype.
    pub fn forward(&self, z1: &Tensor, z2: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        let (n, dtype) = check_views(z1, z2)?;
        let Some(y) = y else {
            return InfoNce::new(self.temperature)?
                .with_fused_kernel(self.fused)
                .forward(z1, z2);
        };
        let labels = self.labels(y, n)?;
        let targets = self.targets(&labels)?;
        let scale = 1.0 / n as f64;
        contrastive_loss(
            z1,
            z2,
            self.temperature,
            dtype,
            targets,
            scale,
            DType::F64,
            self.fused,
        )
    }

    /// The normalised `(2N, 2N)` f64 weight matrix `W̃` for labels `y` (fits the metric if this
    /// is the first labelled batch).
    pub fn weights(&self, y: &Tensor) -> Result<Tensor> {
        let labels = self.labels(y, y.dims().first().copied().unwrap_or(0))?;
        let n = labels.n;
        let dense = self.targets(&labels)?.dense(n);
        Ok(Tensor::from_vec(dense, (2 * n, 2 * n), y.device())?)
    }

    /// The raw `(2N, 2N)` f64 kernel matrix of `[y; y]`, diagonal `k(0)` included (the
    /// reference's `KernelMetric.pairwise([y; y])`).
    pub fn raw_weights(&self, y: &Tensor) -> Result<Tensor> {
        let labels = self.labels(y, y.dims().first().copied().unwrap_or(0))?;
        let metric = self.fitted_metric(&labels)?;
        let n = labels.n;
        let block = metric.kernel_block(&labels)?;
        let k0 = metric.kernel().eval(0.0);
        let raw = tile_block(&block, n, k0);
        Ok(Tensor::from_vec(raw, (2 * n, 2 * n), y.device())?)
    }

    fn labels(&self, y: &Tensor, n: usize) -> Result<Labels> {
        let labels = Labels::from_tensor(y, "y")?;
        if labels.n != n {
            return Err(Error::LabelsLength {
                labels: labels.n,
                vectors: n,
            });
        }
        Ok(labels)
    }

    /// The metric, fitting the lazy one on `[y; y]` the first time.
    fn fitted_metric(&self, labels: &Labels) -> Result<KernelMetric> {
        match &self.metric {
            MetricSource::Given(m) => Ok(m.clone()),
            MetricSource::Lazy {
                kernel,
                bandwidth,
                fitted,
            } => {
                let mut guard = lock(fitted);
                if let Some(m) = guard.as_ref() {
                    return Ok(m.clone());
                }
                let doubled = Labels {
                    n: 2 * labels.n,
                    d: labels.d,
                    data: [labels.data.as_slice(), labels.data.as_slice()].concat(),
                };
                let mut metric = KernelMetric::new(*kernel, bandwidth.clone())?;
                metric.fit_labels(&doubled)?;
                *guard = Some(metric.clone());
                Ok(metric)
            }
        }
    }

    /// The weights of the labelled loss: the kernel block `K` of `y` divided by the row sums
    /// `r` of the tiled `[[K, K], [K, K]]` matrix with a zero diagonal (by column or by row).
    fn targets(&self, labels: &Labels) -> Result<Targets> {
        let metric = self.fitted_metric(labels)?;
        let n = labels.n;
        let mut weights = metric.kernel_block(labels)?;
        // Row a of the tiled matrix holds K[a % n] twice, minus its diagonal entry; the matrix
        // is symmetric, so its column sums are the same.
        let sums: Vec<f64> = weights
            .chunks_exact(n)
            .enumerate()
            .map(|(i, k)| 2.0 * k.iter().sum::<f64>() - k[i])
            .collect();
        let normalize = |(i, row): (usize, &mut [f64])| match self.normalization {
            WeightNormalization::Column => row.iter_mut().zip(&sums).for_each(|(w, r)| *w /= r),
            WeightNormalization::Row => row.iter_mut().for_each(|w| *w /= sums[i]),
        };
        weights.chunks_exact_mut(n).enumerate().for_each(normalize);
        Ok(Targets::Kernel { weights })
    }
}

/// `[[K, K], [K, K]]` (2N × 2N) with the main diagonal set to `diagonal`.
fn tile_block(block: &[f64], n: usize, diagonal: f64) -> Vec<f64> {
    let m = 2 * n;
    let mut out = vec![0.0; m * m];
    for (a, row) in out.chunks_exact_mut(m).enumerate() {
        let src = &block[(a % n) * n..(a % n + 1) * n];
        row[..n].copy_from_slice(src);
        row[n..].copy_from_slice(src);
        row[a] = diagonal;
    }
    out
}

impl fmt::Display for YAwareInfoNce {
    /// `YAwareInfoNCE(temp=0.1, kernel=gaussian, bandwidth=1.0)`, as the reference prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "YAwareInfoNCE(temp={:?}, kernel={}, bandwidth={})",
            self.temperature,
            self.kernel(),
            self.bandwidth()
        )
    }
}
