//! Representation metrics of two views (SPEC §7.3: nidl's `alignment_score`,
//! `uniformity_score`, `contrastive_accuracy_score`) and [`MetricsCallback`], which logs them
//! during training from the step outputs.
//!
//! The metrics are computed on the host in f64 (they read detached projections).

use candle_core::{DType, Tensor};

use crate::callbacks::{Callback, Control};
use crate::error::{Result, invalid};
use crate::model::{StepOutput, YAwareContrastiveLearning};
use crate::trainer::TrainerState;

fn rows(t: &Tensor, name: &'static str) -> Result<Vec<Vec<f64>>> {
    if t.rank() != 2 || t.dim(0)? == 0 {
        return Err(invalid(
            name,
            format!("shape {:?}", t.dims()),
            "must be a non-empty (N, D) matrix",
        ));
    }
    Ok(t.to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

fn normalized(mut v: Vec<Vec<f64>>, normalize: bool) -> Vec<Vec<f64>> {
    if normalize {
        for r in &mut v {
            // F.normalize: divide by max(‖r‖, 1e-12).
            let n = r.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            r.iter_mut().for_each(|x| *x /= n);
        }
    }
    v
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn same_shape(z1: &Tensor, z2: &Tensor) -> Result<()> {
    if z1.dims() != z2.dims() {
        return Err(invalid(
            "z2",
            format!("shape {:?}", z2.dims()),
            format!("must have z1's shape {:?}", z1.dims()),
        ));
    }
    Ok(())
}

/// Alignment `mean_i ‖ẑ1_i − ẑ2_i‖^α` (Wang & Isola 2020), `ẑ` the L2-normalised rows when
/// `normalize`. Lower is better.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use yaware_estimator::metrics::alignment_score;
/// let z = Tensor::new(&[[1f32, 0.], [0., 1.]], &Device::Cpu)?;
/// assert_eq!(alignment_score(&z, &z, true, 2.0)?, 0.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn alignment_score(z1: &Tensor, z2: &Tensor, normalize: bool, alpha: f64) -> Result<f64> {
    same_shape(z1, z2)?;
    let (a, b) = (
        normalized(rows(z1, "z1")?, normalize),
        normalized(rows(z2, "z2")?, normalize),
    );
    let n = a.len() as f64;
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| sq_dist(x, y).sqrt().powf(alpha))
        .sum::<f64>()
        / n)
}

/// Uniformity `log mean_{i≠j} exp(−t‖ẑ_i − ẑ_j‖²)` (Wang & Isola 2020). Lower is more uniform.
/// Needs at least two rows.
pub fn uniformity_score(z: &Tensor, normalize: bool, t: f64) -> Result<f64> {
    let v = normalized(rows(z, "z")?, normalize);
    if v.len() < 2 {
        return Err(invalid(
            "z",
            format!("{} row", v.len()),
            "uniformity needs at least two rows",
        ));
    }
    let (mut sum, mut count) = (0.0, 0.0);
    for i in 0..v.len() {
        for j in 0..v.len() {
            if i != j {
                sum += (-t * sq_dist(&v[i], &v[j])).exp();
                count += 1.0;
            }
        }
    }
    Ok((sum / count).ln())
}

/// Symmetric top-k retrieval accuracy: the fraction of rows `i` of `z1` whose positive `z2_i`
/// is among the `topk` most similar rows of `z2` (cosine similarity when `normalize`), averaged
/// with the same from `z2` to `z1`. Ties are broken in favour of the positive.
pub fn contrastive_accuracy_score(
    z1: &Tensor,
    z2: &Tensor,
    normalize: bool,
    topk: usize,
) -> Result<f64> {
    same_shape(z1, z2)?;
    if topk == 0 {
        return Err(invalid("topk", 0, "must be >= 1"));
    }
    let (a, b) = (
        normalized(rows(z1, "z1")?, normalize),
        normalized(rows(z2, "z2")?, normalize),
    );
    let hits = |p: &[Vec<f64>], q: &[Vec<f64>]| -> f64 {
        let mut h = 0usize;
        for (i, row) in p.iter().enumerate() {
            let pos = dot(row, &q[i]);
            let better = q
                .iter()
                .enumerate()
                .filter(|(j, r)| *j != i && dot(row, r) > pos)
                .count();
            if better < topk {
                h += 1;
            }
        }
        h as f64 / p.len() as f64
    };
    Ok(0.5 * (hits(&a, &b) + hits(&b, &a)))
}

/// A metric [`MetricsCallback`] computes from a step's `z1`, `z2`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// [`alignment_score`] with normalisation and α = 2, logged as `alignment`.
    Alignment,
    /// [`uniformity_score`] of `[z1; z2]` with normalisation and t = 2, logged as `uniformity`.
    Uniformity,
    /// [`contrastive_accuracy_score`] with normalisation and this `topk`, logged as
    /// `contrastive_accuracy_top{k}`.
    ContrastiveAccuracy(usize),
}

impl Metric {
    fn name(&self) -> String {
        match self {
            Metric::Alignment => "alignment".into(),
            Metric::Uniformity => "uniformity".into(),
            Metric::ContrastiveAccuracy(k) => format!("contrastive_accuracy_top{k}"),
        }
    }

    fn compute(&self, out: &StepOutput) -> Result<f64> {
        match self {
            Metric::Alignment => alignment_score(&out.z1, &out.z2, true, 2.0),
            Metric::Uniformity => {
                uniformity_score(&Tensor::cat(&[&out.z1, &out.z2], 0)?, true, 2.0)
            }
            Metric::ContrastiveAccuracy(k) => {
                contrastive_accuracy_score(&out.z1, &out.z2, true, *k)
            }
        }
    }
}

/// Logs representation metrics from the step outputs (nidl's `MetricsCallback`):
/// `"{metric}/train"` every `every_n_train_steps` training batches, and `"{metric}/val"` as the
/// batch-size weighted mean over each validation epoch when `on_validation`.
#[derive(Debug, Clone)]
pub struct MetricsCallback {
    metrics: Vec<Metric>,
    every_n_train_steps: Option<u64>,
    on_validation: bool,
    val_sums: Vec<f64>,
    val_count: usize,
}

impl MetricsCallback {
    /// The callback; `every_n_train_steps = Some(0)` is an error, `None` disables the training
    /// metrics.
    pub fn new(
        metrics: Vec<Metric>,
        every_n_train_steps: Option<u64>,
        on_validation: bool,
    ) -> Result<Self> {
        if every_n_train_steps == Some(0) {
            return Err(invalid("every_n_train_steps", 0, "must be >= 1"));
        }
        if metrics.contains(&Metric::ContrastiveAccuracy(0)) {
            return Err(invalid("topk", 0, "must be >= 1"));
        }
        let n = metrics.len();
        Ok(Self {
            metrics,
            every_n_train_steps,
            on_validation,
            val_sums: vec![0.0; n],
            val_count: 0,
        })
    }
}

impl Callback for MetricsCallback {
    fn name(&self) -> &str {
        "MetricsCallback"
    }

    fn on_train_batch_end(
        &mut self,
        state: &mut TrainerState,
        _: &YAwareContrastiveLearning,
        out: &StepOutput,
        _: usize,
    ) -> Result<Control> {
        if let Some(n) = self.every_n_train_steps
            && (state.history.train_loss.len() as u64).is_multiple_of(n)
        {
            for m in &self.metrics {
                let v = m.compute(out)?;
                state.log(&format!("{}/train", m.name()), v);
            }
        }
        Ok(Control::Continue)
    }

    fn on_validation_epoch_start(
        &mut self,
        _: &mut TrainerState,
        _: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        self.val_sums.iter_mut().for_each(|s| *s = 0.0);
        self.val_count = 0;
        Ok(Control::Continue)
    }

    fn on_validation_batch_end(
        &mut self,
        _: &mut TrainerState,
        _: &YAwareContrastiveLearning,
        out: &StepOutput,
        _: usize,
    ) -> Result<Control> {
        if self.on_validation {
            let n = out.z1.dim(0)?;
            for (s, m) in self.val_sums.iter_mut().zip(&self.metrics) {
                *s += m.compute(out)? * n as f64;
            }
            self.val_count += n;
        }
        Ok(Control::Continue)
    }

    fn on_validation_epoch_end(
        &mut self,
        state: &mut TrainerState,
        _: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        if self.on_validation && self.val_count > 0 && !state.sanity_checking {
            for (s, m) in self.val_sums.iter().zip(&self.metrics) {
                state.log(&format!("{}/val", m.name()), s / self.val_count as f64);
            }
        }
        Ok(Control::Continue)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn t(v: &[[f64; 2]]) -> Tensor {
        let flat: Vec<f64> = v.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (v.len(), 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn metrics_match_hand_computed_values() {
        let z1 = t(&[[1.0, 0.0], [0.0, 1.0]]);
        let z2 = t(&[[0.0, 2.0], [3.0, 0.0]]);
        // ẑ1 − ẑ2 = (1, −1), (−1, 1): ‖·‖² = 2.
        assert!((alignment_score(&z1, &z2, true, 2.0).unwrap() - 2.0).abs() < 1e-15);
        assert!((alignment_score(&z1, &z1, false, 2.0).unwrap()).abs() < 1e-15);
        // Two orthogonal unit vectors: ‖·‖² = 2, log exp(−4) = −4.
        assert!((uniformity_score(&z1, true, 2.0).unwrap() + 4.0).abs() < 1e-12);
        // Views swapped: each positive is the least similar one.
        assert_eq!(contrastive_accuracy_score(&z1, &z2, true, 1).unwrap(), 0.0);
        assert_eq!(contrastive_accuracy_score(&z1, &z2, true, 2).unwrap(), 1.0);
        assert_eq!(contrastive_accuracy_score(&z1, &z1, true, 1).unwrap(), 1.0);
        // Errors.
        assert!(uniformity_score(&t(&[[1.0, 0.0]]), true, 2.0).is_err());
        assert!(alignment_score(&z1, &t(&[[1.0, 0.0]]), true, 2.0).is_err());
        assert!(contrastive_accuracy_score(&z1, &z2, true, 0).is_err());
        assert!(MetricsCallback::new(vec![Metric::Alignment], Some(0), false).is_err());
    }
}
