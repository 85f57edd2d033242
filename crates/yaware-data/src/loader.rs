//! Datasets and the two-view loader: batches of augmented views, built in parallel, with a
//! seeded shuffle and a bounded prefetch of the next batches while the current one trains.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::augment::{MultiViews, SampleRng, Transform, Volume};
use crate::error::{Error, Result};
use crate::two_view::TwoViewBatch;

/// One sample: a volume and its auxiliary variables (age, …), if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The volume `(C, D, H, W)`.
    pub volume: Volume,
    /// The auxiliary variables (one value per feature).
    pub target: Option<Vec<f64>>,
}

/// A source of samples, read by index (from any thread).
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether the dataset has no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `index` (`index < len()`).
    fn get(&self, index: usize) -> Result<Sample>;
}

/// Samples held in memory: volumes of one shape, with optional targets of one width.
#[derive(Debug, Clone)]
pub struct InMemoryDataset {
    volumes: Vec<Volume>,
    targets: Option<Vec<Vec<f64>>>,
}

impl InMemoryDataset {
    /// Checks that the volumes share a shape and that the targets (if any) are finite, one
    /// row per volume, all of one width.
    pub fn new(volumes: Vec<Volume>, targets: Option<Vec<Vec<f64>>>) -> Result<Self> {
        if let Some(first) = volumes.first()
            && let Some((i, v)) = volumes
                .iter()
                .enumerate()
                .find(|(_, v)| v.shape() != first.shape())
        {
            return Err(Error::Volume(format!(
                "volume {i} has shape {:?}, volume 0 has {:?}: all volumes must have one shape",
                v.shape(),
                first.shape()
            )));
        }
        if let Some(t) = &targets {
            if t.len() != volumes.len() {
                return Err(Error::Dataset(format!(
                    "{} targets for {} volumes",
                    t.len(),
                    volumes.len()
                )));
            }
            let width = t.first().map_or(0, Vec::len);
            for (i, row) in t.iter().enumerate() {
                if row.len() != width || width == 0 {
                    return Err(Error::Dataset(format!(
                        "target row {i} has {} values, expected {width} (> 0)",
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
        Ok(Self { volumes, targets })
    }
}

impl Dataset for InMemoryDataset {
    fn len(&self) -> usize {
        self.volumes.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let volume = self.volumes.get(index).ok_or_else(|| {
            Error::Dataset(format!(
                "index {index} out of range (len {})",
                self.volumes.len()
            ))
        })?;
        Ok(Sample {
            volume: volume.clone(),
            target: self.targets.as_ref().map(|t| t[index].clone()),
        })
    }
}

/// How a [`TwoViewLoader`] batches.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch (> 0).
    pub batch_size: usize,
    /// Shuffle the samples every epoch (seeded by `seed` and the epoch).
    pub shuffle: bool,
    /// Drop the last, incomplete batch.
    pub drop_last: bool,
    /// Seed of the shuffle and of the augmentations.
    pub seed: u64,
    /// Batches prepared ahead of the one being consumed (0: none, built on demand).
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 8,
            shuffle: true,
            drop_last: false,
            seed: 0,
            prefetch: 2,
        }
    }
}

/// Batches of two augmented views (and targets) of a dataset's samples. Each sample's views are
/// a pure function of (seed, epoch, sample index), so batches are reproducible whatever the
/// number of threads or the prefetch depth.
pub struct TwoViewLoader<D, T> {
    dataset: Arc<D>,
    views: Arc<MultiViews<T>>,
    config: LoaderConfig,
}

impl<D: Dataset + 'static, T: Transform + 'static> TwoViewLoader<D, T> {
    /// A loader over `dataset` with the augmentation `transform` (two views per sample).
    pub fn new(dataset: D, transform: T, config: LoaderConfig) -> Result<Self> {
        check_batch_size(&config)?;
        Ok(Self {
            dataset: Arc::new(dataset),
            views: Arc::new(MultiViews::new(transform)),
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

    /// The sample order of `epoch` (a seeded Fisher–Yates shuffle, or the identity).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        epoch_order(self.dataset.len(), &self.config, epoch)
    }

    /// The batches of `epoch`, prepared `prefetch` batches ahead on a background thread.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let (dataset, views, seed) = (
            Arc::clone(&self.dataset),
            Arc::clone(&self.views),
            self.config.seed,
        );
        Epoch::new(
            epoch_chunks(self.order(epoch), &self.config),
            self.config.prefetch,
            move |indices: &[usize]| build_batch(&*dataset, &views, seed, epoch, indices),
        )
    }
}

/// Number of batches of `n` samples in an epoch.
pub(crate) fn epoch_len(n: usize, config: &LoaderConfig) -> usize {
    if config.drop_last {
        n / config.batch_size
    } else {
        n.div_ceil(config.batch_size)
    }
}

/// The sample order of `epoch`: a Fisher–Yates shuffle seeded by `(config.seed, epoch)`, or the
/// identity.
pub(crate) fn epoch_order(n: usize, config: &LoaderConfig, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if config.shuffle {
        let mut rng = SampleRng::new(config.seed, epoch, u64::MAX, u64::MAX);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.int_inclusive(i));
        }
    }
    order
}

/// `order` cut into batches, the incomplete last one dropped if `config.drop_last`.
pub(crate) fn epoch_chunks(order: Vec<usize>, config: &LoaderConfig) -> Vec<Vec<usize>> {
    order
        .chunks(config.batch_size)
        .filter(|c| !config.drop_last || c.len() == config.batch_size)
        .map(<[usize]>::to_vec)
        .collect()
}

pub(crate) fn check_batch_size(config: &LoaderConfig) -> Result<()> {
    if config.batch_size == 0 {
        return Err(Error::InvalidParam {
            name: "batch_size",
            value: "0".into(),
            rule: "must be > 0",
        });
    }
    Ok(())
}

/// Builds one batch: samples read and augmented in parallel, then stacked.
fn build_batch<D: Dataset, T: Transform>(
    dataset: &D,
    views: &MultiViews<T>,
    seed: u64,
    epoch: u64,
    indices: &[usize],
) -> Result<TwoViewBatch> {
    let samples: Vec<(Vec<Volume>, Option<Vec<f64>>)> = indices
        .par_iter()
        .map(|&i| {
            let s = dataset.get(i)?;
            Ok((views.views(&s.volume, seed, epoch, i as u64)?, s.target))
        })
        .collect::<Result<_>>()?;
    let stack = |k: usize| -> Result<Tensor> {
        let vs: Vec<Tensor> = samples
            .iter()
            .map(|(v, _)| v[k].to_tensor(&Device::Cpu))
            .collect::<Result<_>>()?;
        Ok(Tensor::stack(&vs, 0)?)
    };
    let y = targets_tensor(samples.iter().map(|(_, t)| t.clone()).collect())?;
    TwoViewBatch::new(stack(0)?, stack(1)?, y)
}

/// The targets of a batch as an `(N, F)` f32 tensor, or `None` if a sample has none.
pub(crate) fn targets_tensor(rows: Option<Vec<Vec<f64>>>) -> Result<Option<Tensor>> {
    let Some(rows) = rows else {
        return Ok(None);
    };
    let (n, width) = (rows.len(), rows.first().map_or(0, Vec::len));
    let flat: Vec<f32> = rows.into_iter().flatten().map(|v| v as f32).collect();
    Ok(Some(Tensor::from_vec(flat, (n, width), &Device::Cpu)?))
}

enum EpochInner {
    Inline(Box<dyn Iterator<Item = Result<TwoViewBatch>> + Send>),
    Prefetch {
        rx: Receiver<Result<TwoViewBatch>>,
        handle: Option<JoinHandle<()>>,
    },
}

/// The batches of one epoch, in order.
pub struct Epoch {
    inner: EpochInner,
}

impl Epoch {
    /// The batches `build(chunk)` of every chunk, built on demand (`prefetch` 0) or up to
    /// `prefetch` ahead on a background thread.
    pub(crate) fn new(
        chunks: Vec<Vec<usize>>,
        prefetch: usize,
        build: impl Fn(&[usize]) -> Result<TwoViewBatch> + Send + 'static,
    ) -> Self {
        if prefetch == 0 {
            let batches: Box<dyn Iterator<Item = Result<TwoViewBatch>> + Send> =
                Box::new(chunks.into_iter().map(move |c| build(&c)));
            return Epoch {
                inner: EpochInner::Inline(batches),
            };
        }
        let (tx, rx) = sync_channel(prefetch);
        let handle = std::thread::spawn(move || {
            for c in chunks {
                // A dropped receiver ends the epoch early.
                if tx.send(build(&c)).is_err() {
                    break;
                }
            }
        });
        Epoch {
            inner: EpochInner::Prefetch {
                rx,
                handle: Some(handle),
            },
        }
    }
}

impl Iterator for Epoch {
    type Item = Result<TwoViewBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            EpochInner::Inline(it) => it.next(),
            EpochInner::Prefetch { rx, handle } => match rx.recv() {
                Ok(batch) => Some(batch),
                Err(_) => {
                    // The producer finished (or panicked: report it rather than lose batches).
                    if let Some(h) = handle.take()
                        && h.join().is_err()
                    {
                        return Some(Err(Error::Dataset("the prefetch thread panicked".into())));
                    }
                    None
                }
            },
        }
    }
}
