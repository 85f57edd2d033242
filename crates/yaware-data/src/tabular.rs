//! Tabular features (CSV / TSV rows, e.g. ROI volumes) for an MLP encoder: a dataset of feature
//! vectors with targets chosen by column names, per-view vector augmentations, and a two-view
//! loader giving `x` of shape `(N, F)`.
//!
//! Design: volumes and vectors are kept apart. [`TwoViewLoader`](crate::TwoViewLoader) stays a
//! loader of [`Volume`](crate::augment::Volume)s (a feature vector is not a `(C, D, H, W)` volume,
//! and the volume transforms would misread it), and [`TabularLoader`] is a separate, simple
//! loader of vectors that shares its epoch logic: the same seeded shuffle, `drop_last`, prefetch
//! and per-sample, per-view random streams (`SampleRng::new(seed, epoch, index, view)`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::augment::{RandomApply, RandomGaussianNoise, SampleRng};
use crate::error::{Error, Result};
use crate::loader::{
    Epoch, LoaderConfig, check_batch_size, epoch_chunks, epoch_len, epoch_order, targets_tensor,
};
use crate::npy::{SkipReport, Table};
use crate::two_view::TwoViewBatch;

fn file_error(path: &Path, problem: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Which columns of a table are features.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureColumns {
    /// These columns, in this order.
    Named(Vec<String>),
    /// Every numeric column but the targets, the id column and the `exclude`d ones, in table
    /// order. A column is numeric when at least one of its cells is a number (`nan` counts);
    /// the others (text such as `sex` = `M`/`F`, `site` names, empty columns) are left out and
    /// listed by [`TabularDataset::ignored_columns`]. A numeric column with a non-numeric or
    /// non-finite cell is an error naming the row and the column (or a skipped row).
    AllNumericExcept(Vec<String>),
}

/// How a [`TabularDataset`] reads its table.
#[derive(Debug, Clone, PartialEq)]
pub struct TabularOptions {
    /// The feature columns.
    pub features: FeatureColumns,
    /// The target columns (e.g. `["age"]`); empty: no target.
    pub targets: Vec<String>,
    /// The column of sample ids, never a feature; it must exist when given (`participant_id` by
    /// default: set `None` for a table without ids).
    pub id_column: Option<String>,
    /// Skip rows with a non-numeric or non-finite feature or target, listing each in the
    /// [`SkipReport`], instead of failing on the first.
    pub skip_bad: bool,
}

impl TabularOptions {
    /// Every numeric column but `participant_id` and the `targets` as features; strict.
    pub fn all_numeric(targets: &[&str]) -> Self {
        Self {
            features: FeatureColumns::AllNumericExcept(Vec::new()),
            targets: targets.iter().map(|c| c.to_string()).collect(),
            id_column: Some("participant_id".into()),
            skip_bad: false,
        }
    }

    /// The `features` columns and the `targets`; ids in `participant_id`; strict.
    pub fn named(features: &[&str], targets: &[&str]) -> Self {
        Self {
            features: FeatureColumns::Named(features.iter().map(|c| c.to_string()).collect()),
            ..Self::all_numeric(targets)
        }
    }
}

/// Feature vectors of one width `F` (f32) with optional targets, held in memory.
#[derive(Debug, Clone)]
pub struct TabularDataset {
    width: usize,
    features: Vec<f32>,
    targets: Option<Vec<Vec<f64>>>,
    feature_names: Vec<String>,
    ignored_columns: Vec<String>,
    ids: Option<Vec<String>>,
}

impl TabularDataset {
    /// Rows of one width (> 0) of finite features, with optional finite targets of one width
    /// (> 0), one row per sample.
    pub fn new(features: Vec<Vec<f32>>, targets: Option<Vec<Vec<f64>>>) -> Result<Self> {
        let width = features.first().map_or(0, Vec::len);
        for (i, row) in features.iter().enumerate() {
            if row.len() != width || width == 0 {
                return Err(Error::Dataset(format!(
                    "feature row {i} has {} values, expected {width} (> 0)",
                    row.len()
                )));
            }
            if let Some(v) = row.iter().find(|v| !v.is_finite()) {
                return Err(Error::Dataset(format!(
                    "feature row {i} holds the non-finite value {v}"
                )));
            }
        }
        if let Some(t) = &targets {
            if t.len() != features.len() {
                return Err(Error::Dataset(format!(
                    "{} target rows for {} feature rows",
                    t.len(),
                    features.len()
                )));
            }
            let tw = t.first().map_or(0, Vec::len);
            for (i, row) in t.iter().enumerate() {
                if row.len() != tw || tw == 0 {
                    return Err(Error::Dataset(format!(
                        "target row {i} has {} values, expected {tw} (> 0)",
                        row.len()
                    )));
                }
                if let Some(v) = row.iter().find(|v| !v.is_finite()) {
                    return Err(Error::Dataset(format!(
                        "target row {i} holds the non-finite value {v}"
                    )));
                }
            }
        }
        Ok(Self {
            width,
            feature_names: (0..width).map(|j| format!("f{j}")).collect(),
            features: features.into_iter().flatten().collect(),
            targets,
            ignored_columns: Vec::new(),
            ids: None,
        })
    }

    /// Reads a table (`.tsv` tab-separated, otherwise comma-separated) as `options` says; with
    /// [`TabularOptions::skip_bad`] the report lists every row left out (0-based data row and
    /// the reason), otherwise it is empty and the first problem is an error.
    ///
    /// Errors ([`Error::File`] naming the table, and the row and column where it applies): an
    /// unreadable table, a missing feature, target or id column, a column both feature and
    /// target, no feature column, no data row, a non-numeric or non-finite value.
    pub fn open(path: impl AsRef<Path>, options: &TabularOptions) -> Result<(Self, SkipReport)> {
        let path = path.as_ref();
        let t = Table::read(path)?;
        if t.is_empty() {
            return Err(file_error(path, "no data row"));
        }
        let id = options
            .id_column
            .as_deref()
            .map(|c| {
                t.column_index(c).map_err(|_| {
                    file_error(
                        path,
                        format!(
                            "no id column `{c}` (set `id_column: None` for a table without ids); columns: {}",
                            t.columns().join(", ")
                        ),
                    )
                })
            })
            .transpose()?;
        let targets: Vec<usize> = options
            .targets
            .iter()
            .map(|c| t.column_index(c))
            .collect::<Result<_>>()?;
        let mut ignored_columns = Vec::new();
        let features: Vec<usize> = match &options.features {
            FeatureColumns::Named(names) => names
                .iter()
                .map(|c| t.column_index(c))
                .collect::<Result<_>>()?,
            FeatureColumns::AllNumericExcept(exclude) => {
                for c in exclude {
                    t.column_index(c)?;
                }
                let mut cols = Vec::new();
                for (j, name) in t.columns().iter().enumerate() {
                    if Some(j) == id || targets.contains(&j) || exclude.contains(name) {
                        continue;
                    }
                    if (0..t.len()).any(|i| t.cell(i, j).parse::<f64>().is_ok()) {
                        cols.push(j);
                    } else {
                        ignored_columns.push(name.clone());
                    }
                }
                cols
            }
        };
        if let Some(&j) = features
            .iter()
            .find(|j| targets.contains(j) || Some(**j) == id)
        {
            return Err(file_error(
                path,
                format!(
                    "column `{}` is both a feature and a target or the id",
                    t.columns()[j]
                ),
            ));
        }
        if features.is_empty() {
            return Err(file_error(
                path,
                format!(
                    "no feature column (non-numeric columns left out: {})",
                    ignored_columns.join(", ")
                ),
            ));
        }
        let mut report = SkipReport::default();
        let (mut x, mut y, mut ids) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..t.len() {
            let row = features
                .iter()
                .map(|&j| t.number(i, j).map(|v| v as f32))
                .collect::<std::result::Result<Vec<f32>, String>>()
                .and_then(|f| {
                    let target = targets
                        .iter()
                        .map(|&j| t.number(i, j))
                        .collect::<std::result::Result<Vec<f64>, String>>()?;
                    Ok((f, target))
                })
                // A value finite in f64 may overflow f32.
                .and_then(|(f, target)| match f.iter().position(|v| !v.is_finite()) {
                    Some(k) => Err(format!(
                        "row {}, column `{}`: {} overflows f32",
                        i + 1,
                        t.columns()[features[k]],
                        t.cell(i, features[k])
                    )),
                    None => Ok((f, target)),
                });
            match row {
                Ok((f, target)) => {
                    x.extend(f);
                    y.push(target);
                    if let Some(j) = id {
                        ids.push(t.cell(i, j).to_string());
                    }
                }
                Err(p) if options.skip_bad => report.skipped.push((i, p)),
                Err(p) => return Err(file_error(path, p)),
            }
        }
        if x.is_empty() {
            return Err(file_error(path, format!("every row was skipped\n{report}")));
        }
        Ok((
            Self {
                width: features.len(),
                features: x,
                targets: (!targets.is_empty()).then_some(y),
                feature_names: features.iter().map(|&j| t.columns()[j].clone()).collect(),
                ignored_columns,
                ids: id.map(|_| ids),
            },
            report,
        ))
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.features.len() / self.width
    }

    /// Whether the dataset has no sample.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Number of features `F`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The feature column names, in order (`f0`, `f1`, … for in-memory data).
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// The non-numeric columns left out by [`FeatureColumns::AllNumericExcept`].
    pub fn ignored_columns(&self) -> &[String] {
        &self.ignored_columns
    }

    /// The id of each sample, if the table has an id column.
    pub fn ids(&self) -> Option<&[String]> {
        self.ids.as_deref()
    }

    /// The features of sample `index`.
    pub fn features(&self, index: usize) -> Result<&[f32]> {
        if index >= self.len() {
            return Err(Error::Dataset(format!(
                "index {index} out of range (len {})",
                self.len()
            )));
        }
        Ok(&self.features[index * self.width..(index + 1) * self.width])
    }

    /// The targets of sample `index`, if any.
    pub fn target(&self, index: usize) -> Option<&[f64]> {
        self.targets
            .as_ref()
            .and_then(|t| t.get(index))
            .map(Vec::as_slice)
    }
}

/// An augmentation of one feature vector (the length must be kept).
pub trait VectorTransform: Send + Sync + fmt::Debug {
    /// Transforms `x`, drawing randomness from `rng`.
    fn apply(&self, x: Vec<f32>, rng: &mut SampleRng) -> Result<Vec<f32>>;
}

impl<T: VectorTransform + ?Sized> VectorTransform for Arc<T> {
    fn apply(&self, x: Vec<f32>, rng: &mut SampleRng) -> Result<Vec<f32>> {
        (**self).apply(x, rng)
    }
}

impl<T: VectorTransform + ?Sized> VectorTransform for Box<T> {
    fn apply(&self, x: Vec<f32>, rng: &mut SampleRng) -> Result<Vec<f32>> {
        (**self).apply(x, rng)
    }
}

/// Vector transforms applied in order (none: the identity, both views equal the sample).
#[derive(Debug, Default)]
pub struct VectorCompose(pub Vec<Box<dyn VectorTransform>>);

impl VectorTransform for VectorCompose {
    fn apply(&self, x: Vec<f32>, rng: &mut SampleRng) -> Result<Vec<f32>> {
        self.0.iter().try_fold(x, |x, t| t.apply(x, rng))
    }
}

/// Adds `N(μ, σ)` to every feature, `μ ~ U(mean)`, `σ ~ U(std)` drawn per call, as on volumes
/// (features on comparable scales, e.g. z-scored, are assumed).
impl VectorTransform for RandomGaussianNoise {
    fn apply(&self, mut x: Vec<f32>, rng: &mut SampleRng) -> Result<Vec<f32>> {
        let mu = rng.range(self.mean.0, self.mean.1);
        let sigma = rng.range(self.std.0, self.std.1);
        for pair in x.chunks_mut(2) {
            let (z0, z1) = rng.normal_pair();
            pair[0] += (mu + sigma * z0) as f32;
            if let Some(v) = pair.get_mut(1) {
                *v += (mu + sigma * z1) as f32;
            }
        }
        Ok(x)
    }
}

/// Applies with probability `p`; one uniform number is drawn either way.
impl<T: VectorTransform> VectorTransform for RandomApply<T> {
    fn apply(&self, x: Vec<f32>, rng: &mut SampleRng) -> Result<Vec<f32>> {
        if rng.uniform() < self.p {
            self.transform.apply(x, rng)
        } else {
            Ok(x)
        }
    }
}

/// Batches of two augmented views `x1`, `x2` of shape `(N, F)` (and targets `(N, T)`) of a
/// [`TabularDataset`], with [`TwoViewLoader`](crate::TwoViewLoader)'s epoch logic: view `k`
/// of sample `i` at `epoch` is `transform` drawn from `SampleRng::new(seed, epoch, i, k)`.
pub struct TabularLoader<T> {
    dataset: Arc<TabularDataset>,
    transform: Arc<T>,
    config: LoaderConfig,
}

impl<T: VectorTransform + 'static> TabularLoader<T> {
    /// A loader over `dataset` with the per-view augmentation `transform`.
    pub fn new(dataset: TabularDataset, transform: T, config: LoaderConfig) -> Result<Self> {
        check_batch_size(&config)?;
        Ok(Self {
            dataset: Arc::new(dataset),
            transform: Arc::new(transform),
            config,
        })
    }

    /// Number of batches in an epoch.
    pub fn len(&self) -> usize {
        epoch_len(self.dataset.len(), &self.config)
    }

    /// Whether an epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sample order of `epoch` (the same as a `TwoViewLoader` with this config).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        epoch_order(self.dataset.len(), &self.config, epoch)
    }

    /// The batches of `epoch`.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let (dataset, transform, seed) = (
            Arc::clone(&self.dataset),
            Arc::clone(&self.transform),
            self.config.seed,
        );
        let build = move |indices: &[usize]| -> Result<TwoViewBatch> {
            let f = dataset.width();
            let view = |k: u64| -> Result<Tensor> {
                let mut flat = Vec::with_capacity(indices.len() * f);
                for &i in indices {
                    let mut rng = SampleRng::new(seed, epoch, i as u64, k);
                    let v = transform.apply(dataset.features(i)?.to_vec(), &mut rng)?;
                    if v.len() != f {
                        return Err(Error::Dataset(format!(
                            "a vector transform changed the length from {f} to {} (sample {i})",
                            v.len()
                        )));
                    }
                    flat.extend(v);
                }
                Ok(Tensor::from_vec(flat, (indices.len(), f), &Device::Cpu)?)
            };
            let y = targets_tensor(
                indices
                    .iter()
                    .map(|&i| dataset.target(i).map(<[f64]>::to_vec))
                    .collect(),
            )?;
            TwoViewBatch::new(view(0)?, view(1)?, y)
        };
        Epoch::new(
            epoch_chunks(self.order(epoch), &self.config),
            self.config.prefetch,
            build,
        )
    }
}
