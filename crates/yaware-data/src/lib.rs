//! # yaware-data
//!
//! Data for y-Aware pre-training: two-view batches, 3D augmentations, datasets and loaders.
//!
//! Place in the workspace: depends on candle (and the `nifti` crate to read NIfTI files) only,
//! CPU-side and model-agnostic; `yaware-estimator` depends on it.
//!
//! **Status: partial.** [`TwoViewBatch`], the parser of the reference's batch shapes
//! ([`parse_two_views_batch`] over [`BatchItem`]), the first augmentations ([`augment`]: flip,
//! noise, erasing, z-normalisation, crop-or-pad, composition, random application, multiple
//! views, the paper's presets), an in-memory [`Dataset`] and the parallel, prefetching
//! [`TwoViewLoader`], `.npy` volumes with `participants.tsv` targets ([`NpyDataset`], the
//! OpenBHB layout), folders of NIfTI volumes with BIDS `participants.tsv` meta-data
//! ([`NiftiDataset`]), and, behind the optional `candle-datasets` feature, batching with
//! candle-datasets' `Batcher`, and tabular features (CSV / TSV rows, e.g. ROI volumes, for an
//! MLP encoder) with their own two-view loader ([`TabularDataset`], [`TabularLoader`]) exist so
//! far.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use yaware_data::TwoViewBatch;
//!
//! let x1 = Tensor::zeros((4, 1, 8, 8, 8), DType::F32, &Device::Cpu)?;
//! let x2 = Tensor::ones((4, 1, 8, 8, 8), DType::F32, &Device::Cpu)?;
//! let age = Tensor::new(&[21f32, 35., 42., 58.], &Device::Cpu)?;
//! let batch = TwoViewBatch::new(x1, x2, Some(age))?;
//! assert_eq!(batch.len(), 4);
//! # Ok::<(), yaware_data::Error>(())
//! ```

pub mod augment;
mod batch;
#[cfg(feature = "candle-datasets")]
pub mod batcher;
mod error;
mod loader;
mod nii;
mod npy;
mod tabular;
mod two_view;

pub use batch::{BatchItem, BatchProblem, parse_two_views_batch};
pub use error::{Error, Result, TableSyntax};
pub use loader::{Dataset, Epoch, InMemoryDataset, LoaderConfig, Sample, TwoViewLoader};
pub use nii::{AFFINE_TOLERANCE, Affine, NiftiDataset, NiftiOptions};
pub use npy::{NpyDataset, NpyVolumes, SkipReport, Table, write_npy};
pub use tabular::{
    FeatureColumns, TabularDataset, TabularLoader, TabularOptions, VectorCompose, VectorTransform,
};
pub use two_view::TwoViewBatch;
