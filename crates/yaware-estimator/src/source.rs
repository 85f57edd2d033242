//! [`BatchSource`]: what the trainer iterates over, implemented for the data crate's loader and
//! for batches held in memory (tabular features, tests).

use yaware_data::{Dataset, TwoViewBatch, TwoViewLoader, augment::Transform};

use crate::error::Result;

/// A source of two-view batches, epoch after epoch.
///
/// The batches of an epoch must be a pure function of the epoch number (a seeded shuffle, seeded
/// augmentations) for resuming from a checkpoint to continue exactly as an uninterrupted run.
pub trait BatchSource {
    /// Number of batches in one epoch.
    fn num_batches(&self) -> usize;

    /// The batches of `epoch`, in order.
    fn batches(&self, epoch: u64) -> Box<dyn Iterator<Item = Result<TwoViewBatch>> + '_>;
}

impl<D: Dataset + 'static, T: Transform + 'static> BatchSource for TwoViewLoader<D, T> {
    fn num_batches(&self) -> usize {
        self.len()
    }

    fn batches(&self, epoch: u64) -> Box<dyn Iterator<Item = Result<TwoViewBatch>> + '_> {
        Box::new(self.epoch(epoch).map(|b| b.map_err(Into::into)))
    }
}

impl BatchSource for [TwoViewBatch] {
    fn num_batches(&self) -> usize {
        self.len()
    }

    /// The same batches every epoch, in order.
    fn batches(&self, _epoch: u64) -> Box<dyn Iterator<Item = Result<TwoViewBatch>> + '_> {
        Box::new(self.iter().cloned().map(Ok))
    }
}

impl BatchSource for Vec<TwoViewBatch> {
    fn num_batches(&self) -> usize {
        self.len()
    }

    fn batches(&self, epoch: u64) -> Box<dyn Iterator<Item = Result<TwoViewBatch>> + '_> {
        self.as_slice().batches(epoch)
    }
}
