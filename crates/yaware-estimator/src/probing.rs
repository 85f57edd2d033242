//! Probing the learned representation (SPEC §7.1–7.2): small, dependency-free probes fitted on
//! encoder features ([`Probe`]: ridge regression, logistic regression, k-nearest neighbours),
//! their scores (R², MAE; accuracy, ROC-AUC), the [`ModelProbing`] estimator and the
//! [`ModelProbingCallback`] that probes during training.
//!
//! Everything runs on the host in f64; the probes are meant for embeddings of a few thousand
//! samples and a few hundred dimensions.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use crate::callbacks::{Callback, Control};
use crate::error::{Error, Result, invalid};
use crate::model::YAwareContrastiveLearning;
use crate::trainer::TrainerState;

/// A probe and its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Probe {
    /// Ridge regression with an intercept (scikit-learn's `Ridge(alpha)`), for continuous
    /// targets; scored by `r2` and `mae`.
    Ridge {
        /// L2 penalty (≥ 0).
        alpha: f64,
    },
    /// L2-regularised logistic regression with an unpenalised intercept, fitted by Newton's
    /// method (one-vs-rest for more than two classes; scikit-learn's `C`); scored by `accuracy`
    /// and, for two classes, `roc_auc`. Targets are class labels (integers stored as floats).
    Logistic {
        /// Inverse regularisation strength (> 0, default in scikit-learn 1.0).
        c: f64,
    },
    /// k-nearest-neighbours regression (mean of the neighbours' targets, Euclidean distance);
    /// scored by `r2` and `mae`.
    KnnRegressor {
        /// Number of neighbours (≥ 1).
        k: usize,
    },
    /// k-nearest-neighbours classification (majority vote, ties to the smallest label); scored
    /// by `accuracy`.
    KnnClassifier {
        /// Number of neighbours (≥ 1).
        k: usize,
    },
}

impl Probe {
    fn validate(&self) -> Result<()> {
        match *self {
            Probe::Ridge { alpha } if !(alpha.is_finite() && alpha >= 0.0) => {
                Err(invalid("alpha", alpha, "must be finite and >= 0"))
            }
            Probe::Logistic { c } if !(c.is_finite() && c > 0.0) => {
                Err(invalid("C", c, "must be finite and > 0"))
            }
            Probe::KnnRegressor { k: 0 } | Probe::KnnClassifier { k: 0 } => {
                Err(invalid("n_neighbors", 0, "must be >= 1"))
            }
            _ => Ok(()),
        }
    }

    fn is_classifier(&self) -> bool {
        matches!(self, Probe::Logistic { .. } | Probe::KnnClassifier { .. })
    }
}

enum Fitted {
    Linear {
        w: Vec<f64>,
        b: f64,
    },
    Logistic {
        classes: Vec<f64>,
        models: Vec<(Vec<f64>, f64)>,
    },
    Knn {
        x: Vec<Vec<f64>>,
        y: Vec<f64>,
        k: usize,
        classify: bool,
    },
}

/// A probe fitted on features (nidl's `ModelProbing`, on features rather than a loader).
pub struct ModelProbing {
    probe: Probe,
    fitted: Option<Fitted>,
}

/// Reads `(N, D)` features (or `(N,)`) as rows of f64.
pub fn feature_rows(x: &Tensor) -> Result<Vec<Vec<f64>>> {
    let x = x.to_dtype(DType::F64)?;
    match x.rank() {
        1 => Ok(x.to_vec1::<f64>()?.into_iter().map(|v| vec![v]).collect()),
        2 => Ok(x.to_vec2::<f64>()?),
        _ => Err(invalid(
            "features",
            format!("shape {:?}", x.dims()),
            "must be (N, D)",
        )),
    }
}

/// Reads `(N,)` or `(N, 1)` targets as f64.
pub fn target_values(y: &Tensor) -> Result<Vec<f64>> {
    let y = y.to_dtype(DType::F64)?;
    match y.dims() {
        [_] => Ok(y.to_vec1::<f64>()?),
        [_, 1] => Ok(y.flatten_all()?.to_vec1::<f64>()?),
        d => Err(invalid(
            "targets",
            format!("shape {d:?}"),
            "must be (N,) or (N, 1)",
        )),
    }
}

impl ModelProbing {
    /// An unfitted probe (hyper-parameters checked).
    pub fn new(probe: Probe) -> Result<Self> {
        probe.validate()?;
        Ok(Self {
            probe,
            fitted: None,
        })
    }

    /// Fits on rows `x` and targets `y`.
    pub fn fit(&mut self, x: &[Vec<f64>], y: &[f64]) -> Result<&mut Self> {
        check_xy(x, y)?;
        self.fitted = Some(match self.probe {
            Probe::Ridge { alpha } => {
                let (w, b) = ridge(x, y, alpha)?;
                Fitted::Linear { w, b }
            }
            Probe::Logistic { c } => {
                let mut classes: Vec<f64> = y.to_vec();
                classes.sort_by(f64::total_cmp);
                classes.dedup();
                if classes.len() < 2 {
                    return Err(invalid(
                        "targets",
                        format!("{classes:?}"),
                        "logistic regression needs two classes",
                    ));
                }
                let one_vs_rest: Vec<f64> = if classes.len() == 2 {
                    vec![classes[1]]
                } else {
                    classes.clone()
                };
                let models = one_vs_rest
                    .iter()
                    .map(|&cl| {
                        let t: Vec<f64> =
                            y.iter().map(|&v| if v == cl { 1.0 } else { 0.0 }).collect();
                        logistic(x, &t, c)
                    })
                    .collect::<Result<_>>()?;
                Fitted::Logistic { classes, models }
            }
            Probe::KnnRegressor { k } | Probe::KnnClassifier { k } => Fitted::Knn {
                x: x.to_vec(),
                y: y.to_vec(),
                k: k.min(x.len()),
                classify: self.probe.is_classifier(),
            },
        });
        Ok(self)
    }

    /// Predictions (class labels for classifiers).
    pub fn predict(&self, x: &[Vec<f64>]) -> Result<Vec<f64>> {
        let fitted = self.fitted.as_ref().ok_or(Error::NotFitted)?;
        Ok(match fitted {
            Fitted::Linear { w, b } => x.iter().map(|r| dot(r, w) + b).collect(),
            Fitted::Logistic { classes, models } => {
                if models.len() == 1 {
                    x.iter()
                        .map(|r| {
                            if dot(r, &models[0].0) + models[0].1 > 0.0 {
                                classes[1]
                            } else {
                                classes[0]
                            }
                        })
                        .collect()
                } else {
                    x.iter()
                        .map(|r| {
                            let (best, _) = models
                                .iter()
                                .enumerate()
                                .map(|(i, (w, b))| (i, dot(r, w) + b))
                                .fold((0, f64::NEG_INFINITY), |a, v| if v.1 > a.1 { v } else { a });
                            classes[best]
                        })
                        .collect()
                }
            }
            Fitted::Knn {
                x: xt,
                y,
                k,
                classify,
            } => x
                .iter()
                .map(|r| {
                    let mut d: Vec<(f64, f64)> =
                        xt.iter().zip(y).map(|(a, &t)| (sq_dist(a, r), t)).collect();
                    d.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let near = &d[..*k];
                    if *classify {
                        let mut counts: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
                        for &(_, t) in near {
                            counts.entry(t.to_bits()).or_insert((t, 0)).1 += 1;
                        }
                        let max = counts.values().map(|v| v.1).max().unwrap_or(0);
                        counts
                            .values()
                            .filter(|v| v.1 == max)
                            .map(|v| v.0)
                            .fold(f64::INFINITY, f64::min)
                    } else {
                        near.iter().map(|p| p.1).sum::<f64>() / near.len() as f64
                    }
                })
                .collect(),
        })
    }

    /// Decision values of a two-class logistic probe (for ROC-AUC).
    fn decision(&self, x: &[Vec<f64>]) -> Option<Vec<f64>> {
        match self.fitted.as_ref()? {
            Fitted::Logistic { models, .. } if models.len() == 1 => Some(
                x.iter()
                    .map(|r| dot(r, &models[0].0) + models[0].1)
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Scores on `(x, y)`: `r2`, `mae` for regressors; `accuracy` (and `roc_auc` for a
    /// two-class logistic probe) for classifiers.
    pub fn score(&self, x: &[Vec<f64>], y: &[f64]) -> Result<BTreeMap<String, f64>> {
        check_xy(x, y)?;
        let pred = self.predict(x)?;
        let mut out = BTreeMap::new();
        if self.probe.is_classifier() {
            let hits = pred.iter().zip(y).filter(|(p, t)| p == t).count();
            out.insert("accuracy".into(), hits as f64 / y.len() as f64);
            if let (Some(d), Fitted::Logistic { classes, .. }) = (
                self.decision(x),
                self.fitted.as_ref().ok_or(Error::NotFitted)?,
            ) {
                let pos: Vec<bool> = y.iter().map(|&t| t == classes[1]).collect();
                if let Some(auc) = roc_auc(&d, &pos) {
                    out.insert("roc_auc".into(), auc);
                }
            }
        } else {
            out.insert("r2".into(), r2_score(y, &pred));
            out.insert(
                "mae".into(),
                y.iter().zip(&pred).map(|(a, b)| (a - b).abs()).sum::<f64>() / y.len() as f64,
            );
        }
        Ok(out)
    }
}

fn check_xy(x: &[Vec<f64>], y: &[f64]) -> Result<()> {
    if x.is_empty() || x.len() != y.len() {
        return Err(invalid(
            "targets",
            format!("{} targets for {} rows", y.len(), x.len()),
            "need one target per row, at least one row",
        ));
    }
    let d = x[0].len();
    if x.iter().any(|r| r.len() != d) {
        return Err(invalid(
            "features",
            "ragged rows",
            "every row must have the same width",
        ));
    }
    if x.iter().flatten().chain(y).any(|v| !v.is_finite()) {
        return Err(invalid(
            "features",
            "non-finite value",
            "features and targets must be finite",
        ));
    }
    Ok(())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Solves `A x = b` for a symmetric positive-definite `A` (Cholesky); `None` if not SPD.
fn solve_spd(a: &[Vec<f64>], b: &[f64]) -> Option<Vec<f64>> {
    let n = b.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                let v = a[i][i] - s;
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i][j] = v.sqrt();
            } else {
                l[i][j] = (a[i][j] - s) / l[j][j];
            }
        }
    }
    let mut z = vec![0.0; n];
    for i in 0..n {
        z[i] = (b[i] - (0..i).map(|k| l[i][k] * z[k]).sum::<f64>()) / l[i][i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        x[i] = (z[i] - (i + 1..n).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
    }
    Some(x)
}

fn ridge(x: &[Vec<f64>], y: &[f64], alpha: f64) -> Result<(Vec<f64>, f64)> {
    let (n, d) = (x.len() as f64, x[0].len());
    let mean: Vec<f64> = (0..d)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let ym = y.iter().sum::<f64>() / n;
    let mut a = vec![vec![0.0; d]; d];
    let mut rhs = vec![0.0; d];
    for (r, &t) in x.iter().zip(y) {
        let c: Vec<f64> = r.iter().zip(&mean).map(|(v, m)| v - m).collect();
        for i in 0..d {
            rhs[i] += c[i] * (t - ym);
            for j in 0..d {
                a[i][j] += c[i] * c[j];
            }
        }
    }
    // A tiny jitter makes alpha = 0 with collinear features solvable (minimum-norm-like).
    let jitter = 1e-12 * (0..d).map(|i| a[i][i]).fold(0.0, f64::max).max(1.0);
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += alpha + jitter;
    }
    let w = solve_spd(&a, &rhs)
        .ok_or_else(|| invalid("alpha", alpha, "the ridge system is singular"))?;
    let b = ym - dot(&mean, &w);
    Ok((w, b))
}

fn logistic(x: &[Vec<f64>], t: &[f64], c: f64) -> Result<(Vec<f64>, f64)> {
    let d = x[0].len();
    // Parameters θ = (w, b); loss = Σ log(1 + e^{−s·z}) + ‖w‖²/(2C) (scikit-learn's objective).
    let mut theta = vec![0.0; d + 1];
    for _ in 0..100 {
        let mut grad = vec![0.0; d + 1];
        let mut hess = vec![vec![0.0; d + 1]; d + 1];
        for (r, &ti) in x.iter().zip(t) {
            let z = dot(r, &theta[..d]) + theta[d];
            let p = 1.0 / (1.0 + (-z).exp());
            let w = (p * (1.0 - p)).max(1e-12);
            for i in 0..=d {
                let xi = if i < d { r[i] } else { 1.0 };
                grad[i] += (p - ti) * xi;
                for j in 0..=d {
                    let xj = if j < d { r[j] } else { 1.0 };
                    hess[i][j] += w * xi * xj;
                }
            }
        }
        for i in 0..d {
            grad[i] += theta[i] / c;
            hess[i][i] += 1.0 / c;
        }
        hess[d][d] += 1e-12;
        let step = solve_spd(&hess, &grad)
            .ok_or_else(|| invalid("C", c, "the logistic Newton system is singular"))?;
        let mut change = 0.0_f64;
        for (th, s) in theta.iter_mut().zip(&step) {
            *th -= s;
            change = change.max(s.abs());
        }
        if change < 1e-10 {
            break;
        }
    }
    let b = theta[d];
    theta.truncate(d);
    Ok((theta, b))
}

/// R² = 1 − SS_res / SS_tot (1 when both are 0, as scikit-learn; 0 when only SS_tot is).
pub fn r2_score(y: &[f64], pred: &[f64]) -> f64 {
    let m = y.iter().sum::<f64>() / y.len() as f64;
    let ss_res: f64 = y.iter().zip(pred).map(|(a, b)| (a - b) * (a - b)).sum();
    let ss_tot: f64 = y.iter().map(|a| (a - m) * (a - m)).sum();
    if ss_tot == 0.0 {
        if ss_res == 0.0 { 1.0 } else { 0.0 }
    } else {
        1.0 - ss_res / ss_tot
    }
}

/// Area under the ROC curve of `scores` for the positives `pos` (Mann–Whitney with average
/// ranks for ties); `None` when one class is absent.
pub fn roc_auc(scores: &[f64], pos: &[bool]) -> Option<f64> {
    let n_pos = pos.iter().filter(|p| **p).count();
    let n_neg = pos.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    let sum_pos: f64 = ranks
        .iter()
        .zip(pos)
        .filter(|(_, p)| **p)
        .map(|(r, _)| r)
        .sum();
    Some((sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0) / (n_pos * n_neg) as f64)
}

/// Probes the encoder during training (nidl's `ModelProbingCallback`): every
/// `every_n_train_epochs` epochs, embeds the train and test `(x, y)` batches with the encoder
/// (eval mode), fits the probe on the train features and logs its scores on the test features
/// as `"{prefix}test_{score}"`.
pub struct ModelProbingCallback {
    train: Vec<(Tensor, Tensor)>,
    test: Vec<(Tensor, Tensor)>,
    probe: Probe,
    every_n_train_epochs: u64,
    prefix: String,
}

impl ModelProbingCallback {
    /// The callback (`every_n_train_epochs` ≥ 1).
    pub fn new(
        train: Vec<(Tensor, Tensor)>,
        test: Vec<(Tensor, Tensor)>,
        probe: Probe,
        every_n_train_epochs: u64,
        prefix: impl Into<String>,
    ) -> Result<Self> {
        probe.validate()?;
        if every_n_train_epochs == 0 {
            return Err(invalid("every_n_train_epochs", 0, "must be >= 1"));
        }
        if train.is_empty() || test.is_empty() {
            return Err(invalid(
                "dataloader",
                "no batch",
                "train and test data need at least one batch",
            ));
        }
        Ok(Self {
            train,
            test,
            probe,
            every_n_train_epochs,
            prefix: prefix.into(),
        })
    }

    fn embed(
        model: &YAwareContrastiveLearning,
        data: &[(Tensor, Tensor)],
    ) -> Result<(Vec<Vec<f64>>, Vec<f64>)> {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (i, (b, t)) in data.iter().enumerate() {
            x.extend(feature_rows(&model.transform_step(b, i)?)?);
            y.extend(target_values(t)?);
        }
        Ok((x, y))
    }
}

impl Callback for ModelProbingCallback {
    fn name(&self) -> &str {
        "ModelProbingCallback"
    }

    fn on_train_epoch_end(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        if (state.epoch + 1).is_multiple_of(self.every_n_train_epochs) {
            let (xtr, ytr) = Self::embed(model, &self.train)?;
            let (xte, yte) = Self::embed(model, &self.test)?;
            let mut p = ModelProbing::new(self.probe)?;
            p.fit(&xtr, &ytr)?;
            for (k, v) in p.score(&xte, &yte)? {
                state.log(&format!("{}test_{k}", self.prefix), v);
            }
        }
        Ok(Control::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> (Vec<Vec<f64>>, Vec<f64>) {
        let x: Vec<Vec<f64>> = (0..20)
            .map(|i| vec![i as f64 / 10.0, ((i * 7) % 5) as f64])
            .collect();
        let y = x.iter().map(|r| 3.0 * r[0] - 2.0 * r[1] + 0.5).collect();
        (x, y)
    }

    #[test]
    fn ridge_recovers_an_exact_linear_target_and_shrinks_with_alpha() {
        let (x, y) = grid();
        let mut p = ModelProbing::new(Probe::Ridge { alpha: 0.0 }).unwrap();
        p.fit(&x, &y).unwrap();
        let s = p.score(&x, &y).unwrap();
        assert!((s["r2"] - 1.0).abs() < 1e-9 && s["mae"] < 1e-9, "{s:?}");
        let mut q = ModelProbing::new(Probe::Ridge { alpha: 1e3 }).unwrap();
        q.fit(&x, &y).unwrap();
        assert!(q.score(&x, &y).unwrap()["r2"] < 0.9);
    }

    #[test]
    fn classifiers_separate_separable_classes() {
        let (x, _) = grid();
        let y: Vec<f64> = x
            .iter()
            .map(|r| if r[0] > 0.95 { 1.0 } else { 0.0 })
            .collect();
        for probe in [Probe::Logistic { c: 1.0 }, Probe::KnnClassifier { k: 1 }] {
            let mut p = ModelProbing::new(probe).unwrap();
            p.fit(&x, &y).unwrap();
            let s = p.score(&x, &y).unwrap();
            assert_eq!(s["accuracy"], 1.0, "{probe:?} {s:?}");
        }
        let mut p = ModelProbing::new(Probe::Logistic { c: 1.0 }).unwrap();
        p.fit(&x, &y).unwrap();
        assert_eq!(p.score(&x, &y).unwrap()["roc_auc"], 1.0);
        // Three classes, one-vs-rest.
        let y3: Vec<f64> = x.iter().map(|r| (r[0] * 1.5).floor()).collect();
        let mut p = ModelProbing::new(Probe::Logistic { c: 100.0 }).unwrap();
        p.fit(&x, &y3).unwrap();
        assert!(p.score(&x, &y3).unwrap()["accuracy"] > 0.8);
    }

    #[test]
    fn knn_regression_and_scores() {
        let x = vec![vec![0.0], vec![1.0], vec![10.0]];
        let y = vec![0.0, 2.0, 10.0];
        let mut p = ModelProbing::new(Probe::KnnRegressor { k: 2 }).unwrap();
        p.fit(&x, &y).unwrap();
        assert_eq!(p.predict(&[vec![0.2]]).unwrap(), vec![1.0]);
        assert_eq!(
            roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            Some(0.75)
        );
        assert_eq!(r2_score(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 1.0);
    }

    #[test]
    fn errors() {
        assert!(ModelProbing::new(Probe::Ridge { alpha: -1.0 }).is_err());
        assert!(ModelProbing::new(Probe::Logistic { c: 0.0 }).is_err());
        assert!(ModelProbing::new(Probe::KnnClassifier { k: 0 }).is_err());
        let p = ModelProbing::new(Probe::Ridge { alpha: 1.0 }).unwrap();
        assert!(matches!(p.predict(&[vec![1.0]]), Err(Error::NotFitted)));
        let mut p = ModelProbing::new(Probe::Logistic { c: 1.0 }).unwrap();
        assert!(p.fit(&[vec![1.0], vec![2.0]], &[1.0, 1.0]).is_err());
        assert!(p.fit(&[vec![1.0]], &[1.0, 2.0]).is_err());
        assert!(p.fit(&[vec![f64::NAN], vec![1.0]], &[0.0, 1.0]).is_err());
    }
}
