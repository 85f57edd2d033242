//! Interoperability with candle-datasets' [`Batcher`] (feature `candle-datasets`).
//!
//! candle-datasets batches iterators of single samples by stacking them. These adapters feed it
//! two-view samples and turn its stacked output into [`TwoViewBatch`]es, so code written
//! against candle-datasets can train a y-Aware model.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use yaware_data::batcher::labelled_batches;
//!
//! let samples = (0..5).map(|i| {
//!     let v = Tensor::full(i as f32, (1, 4, 4, 4), &Device::Cpu)?;
//!     Ok(((v.clone(), (v + 1.0)?), Tensor::new(20f32 + i as f32, &Device::Cpu)?))
//! });
//! let batches: Vec<_> = labelled_batches(samples, 2, false).collect::<Result<_, _>>()?;
//! assert_eq!(batches.len(), 2); // the incomplete last batch is dropped
//! assert_eq!(batches[0].x1().dims(), &[2, 1, 4, 4, 4]);
//! assert_eq!(batches[1].y().unwrap().to_vec1::<f32>()?, [22., 23.]);
//! # Ok::<(), yaware_data::Error>(())
//! ```

use candle_core::Tensor;
use candle_datasets::Batcher;

use crate::error::Result;
use crate::two_view::TwoViewBatch;

/// Batches unlabelled two-view samples `(view1, view2)` with candle-datasets' [`Batcher`].
/// `keep_last` keeps an incomplete last batch.
pub fn unlabelled_batches<I>(
    samples: I,
    batch_size: usize,
    keep_last: bool,
) -> impl Iterator<Item = Result<TwoViewBatch>>
where
    I: Iterator<Item = candle_core::Result<(Tensor, Tensor)>>,
{
    Batcher::new_r2(samples)
        .batch_size(batch_size)
        .return_last_incomplete_batch(keep_last)
        .map(|batch| {
            let (x1, x2) = batch?;
            TwoViewBatch::new(x1, x2, None)
        })
}

/// Batches labelled two-view samples `((view1, view2), y)` with candle-datasets' [`Batcher`]
/// (the views are stacked as one tensor so the batcher's two-tensor mode carries `y`).
/// `keep_last` keeps an incomplete last batch.
pub fn labelled_batches<I>(
    samples: I,
    batch_size: usize,
    keep_last: bool,
) -> impl Iterator<Item = Result<TwoViewBatch>>
where
    I: Iterator<Item = candle_core::Result<((Tensor, Tensor), Tensor)>>,
{
    let stacked = samples.map(|s| {
        let ((v1, v2), y) = s?;
        Ok((Tensor::stack(&[v1, v2], 0)?, y))
    });
    Batcher::new_r2(stacked)
        .batch_size(batch_size)
        .return_last_incomplete_batch(keep_last)
        .map(|batch| {
            let (views, y) = batch?;
            let x1 = views.narrow(1, 0, 1)?.squeeze(1)?;
            let x2 = views.narrow(1, 1, 1)?.squeeze(1)?;
            TwoViewBatch::new(x1, x2, Some(y))
        })
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn unlabelled_samples_are_stacked_in_order() {
        let samples = (0..4).map(|i| {
            let v = Tensor::full(i as f32, (3,), &Device::Cpu)?;
            Ok((v.clone(), v.affine(-1.0, 0.0)?))
        });
        let batches: Vec<TwoViewBatch> = unlabelled_batches(samples, 3, true)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].x1().dims(), &[3, 3]);
        assert_eq!(batches[1].len(), 1);
        assert!(batches[0].y().is_none());
        let x2 = batches[0].x2().to_vec2::<f32>().unwrap();
        assert_eq!(x2[2], [-2.0, -2.0, -2.0]);
    }

    #[test]
    fn labelled_views_are_split_back() {
        let samples = (0..3).map(|i| {
            let v1 = Tensor::full(i as f64, (2, 2), &Device::Cpu)?;
            let v2 = Tensor::full(10.0 + i as f64, (2, 2), &Device::Cpu)?;
            Ok(((v1, v2), Tensor::new(&[i as f64, 1.0], &Device::Cpu)?))
        });
        let b: Vec<TwoViewBatch> = labelled_batches(samples, 3, false)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].x1().dims(), &[3, 2, 2]);
        assert_eq!(
            b[0].x2()
                .to_dtype(DType::F64)
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
            12.0
        );
        assert_eq!(b[0].y().unwrap().dims(), &[3, 2]);
    }

    #[test]
    fn errors_from_the_source_are_passed_on() {
        let samples = (0..2).map(|i| {
            if i == 1 {
                Err(candle_core::Error::Msg("unreadable sample".into()))
            } else {
                let v = Tensor::zeros(2, DType::F32, &Device::Cpu)?;
                Ok((v.clone(), v))
            }
        });
        let r: Result<Vec<TwoViewBatch>> = unlabelled_batches(samples, 2, true).collect();
        assert!(r.unwrap_err().to_string().contains("unreadable sample"));
    }
}
