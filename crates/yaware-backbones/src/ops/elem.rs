//! Element types and storage access shared by the CPU kernels of the pooling and batch-norm
//! ops.

use candle_core::{CpuStorage, Layout, Storage, Tensor, WithDType};

/// A float element type (f32 or f64) the pooling and batch-norm kernels run on.
pub(crate) trait Real: WithDType {
    /// −∞, the implicit padding value of max pooling.
    const NEG_INFINITY: Self;
    /// Whether the value is NaN.
    fn is_nan(self) -> bool;
    /// `if take { a } else { b }` by bit masks, so the compiler cannot turn it into a
    /// (mispredicted) branch.
    fn pick(take: bool, a: Self, b: Self) -> Self;
}

/// `if take { a } else { b }` on indices, by bit masks.
#[inline(always)]
pub(crate) fn pick_index(take: bool, a: u32, b: u32) -> u32 {
    let mask = (take as u32).wrapping_neg();
    (a & mask) | (b & !mask)
}

impl Real for f32 {
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    #[inline(always)]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    #[inline(always)]
    fn pick(take: bool, a: Self, b: Self) -> Self {
        let mask = (take as u32).wrapping_neg();
        f32::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
    }
}

impl Real for f64 {
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    #[inline(always)]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    #[inline(always)]
    fn pick(take: bool, a: Self, b: Self) -> Self {
        let mask = (take as u64).wrapping_neg();
        f64::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
    }
}

/// The contiguous elements of a CPU storage seen through `layout`.
pub(crate) fn cpu_slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: the input must be contiguous");
    };
    Ok(&T::cpu_storage_as_slice(storage)?[start..end])
}

/// Runs `f` on the contiguous CPU elements of each tensor (made contiguous first if needed).
pub(crate) fn with_cpu_slices<T: WithDType, R, const K: usize>(
    tensors: [&Tensor; K],
    op: &'static str,
    f: impl FnOnce([&[T]; K]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let tensors = tensors
        .iter()
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(K);
    for (storage, layout) in &guards {
        match &**storage {
            Storage::Cpu(cpu) => slices.push(cpu_slice::<T>(cpu, layout, op)?),
            _ => candle_core::bail!("{op}: only the CPU is supported"),
        }
    }
    match <[&[T]; K]>::try_from(slices) {
        Ok(slices) => f(slices),
        Err(_) => candle_core::bail!("{op}: internal error collecting {K} slices"),
    }
}

/// Checks that `x` is a 5D f32 or f64 tensor on the CPU and returns its dims.
pub(crate) fn check_volume(op: &'static str, x: &Tensor) -> crate::Result<[usize; 5]> {
    let dims: [usize; 5] = x.dims().try_into().map_err(|_| crate::Error::Input {
        op,
        problem: format!(
            "expected a 5D input (N, C, D, H, W), got shape {:?}",
            x.dims()
        ),
    })?;
    if !matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64) {
        return Err(crate::Error::Input {
            op,
            problem: format!("expected an f32 or f64 input, got {:?}", x.dtype()),
        });
    }
    if !x.device().is_cpu() {
        return Err(crate::Error::Input {
            op,
            problem: format!("only CPU tensors are supported, got {:?}", x.device()),
        });
    }
    Ok(dims)
}

/// Calls `$body` with `$t` bound to the element type of the CPU storage `$s`.
macro_rules! dispatch {
    ($s:expr, $op:expr, |$t:ident| $body:expr) => {
        match $s {
            candle_core::CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            candle_core::CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            other => candle_core::bail!(
                "{}: unsupported dtype {:?}",
                $op,
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
    };
}
pub(crate) use dispatch;
