//! # yaware-golden
//!
//! Test support, used only as a dev-dependency: reading the reference's golden vectors
//! (`../shared/golden`, relative to the workspace root) and comparing with stated tolerances.
//! Parity tests read every case and setting from the files through this crate.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

/// The golden folder: `$YAWARE_GOLDEN_DIR`, else `<workspace>/../shared/golden`.
pub fn golden_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("YAWARE_GOLDEN_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden")
}

/// One golden file, parsed once.
pub struct Golden {
    /// File name.
    pub name: String,
    st: SafeTensors<'static>,
    /// The header metadata (string → string).
    pub metadata: HashMap<String, String>,
}

impl Golden {
    /// Opens `name` in the golden folder; `None` (with a loud message) when the folder is absent.
    pub fn open(name: &str) -> Option<Golden> {
        let dir = golden_dir();
        if !dir.is_dir() {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED: golden folder {} not found: parity with the reference\n\
                 !!! is NOT checked. Set YAWARE_GOLDEN_DIR or place ../shared/golden.\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
                dir.display()
            );
            return None;
        }
        let path = dir.join(name);
        let bytes: &'static [u8] = Box::leak(
            std::fs::read(&path)
                .unwrap_or_else(|e| {
                    panic!(
                        "golden folder present but {} unreadable: {e}",
                        path.display()
                    )
                })
                .into_boxed_slice(),
        );
        let (_, meta) = SafeTensors::read_metadata(bytes).expect("golden header");
        let metadata = meta.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(bytes).expect("golden file");
        Some(Golden {
            name: name.to_string(),
            st,
            metadata,
        })
    }

    /// The JSON value of a metadata key.
    pub fn json(&self, key: &str) -> serde_json::Value {
        let text = self
            .metadata
            .get(key)
            .unwrap_or_else(|| panic!("{}: no metadata `{key}`", self.name));
        serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("{}: metadata `{key}`: {e}", self.name))
    }

    /// Whether the file holds a tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.st.names().into_iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    /// A tensor's values as f64, with its shape and stored dtype.
    pub fn values(&self, name: &str) -> (Vec<usize>, DType, Vec<f64>) {
        let view = self
            .st
            .tensor(name)
            .unwrap_or_else(|e| panic!("{}: tensor `{name}`: {e}", self.name));
        let data = view.data();
        let (dtype, values): (DType, Vec<f64>) = match view.dtype() {
            safetensors::Dtype::F64 => (
                DType::F64,
                data.chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            ),
            safetensors::Dtype::F32 => (
                DType::F32,
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
            ),
            safetensors::Dtype::I64 => (
                DType::I64,
                data.chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
            ),
            other => panic!(
                "{}: tensor `{name}` has unexpected dtype {other:?}",
                self.name
            ),
        };
        (view.shape().to_vec(), dtype, values)
    }

    /// A tensor's values as f64.
    pub fn f64s(&self, name: &str) -> Vec<f64> {
        self.values(name).2
    }

    /// A 0-d (or one-element) tensor's value as f64.
    pub fn scalar(&self, name: &str) -> f64 {
        let v = self.f64s(name);
        assert_eq!(v.len(), 1, "{}: `{name}` is not a scalar", self.name);
        v[0]
    }

    /// The tensor as a candle tensor in its stored dtype (I64 stays I64).
    pub fn tensor(&self, name: &str) -> Tensor {
        let (shape, dtype, values) = self.values(name);
        Tensor::from_vec(values, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }
}

/// Compares `got` with `want` element by element:
/// `|got − want| ≤ rtol · max(|want|, floor · max|want|)`.
///
/// `floor` keeps entries that are small only through cancellation from demanding a relative
/// accuracy that neither implementation has: 1e-3 for weights and bandwidths, 0.1 for
/// gradients and similarities (sums over the whole batch, accumulated in another order by
/// the reference). Returns the worst relative error, or a description of the first violation.
pub fn check_close(
    what: &str,
    got: &[f64],
    want: &[f64],
    rtol: f64,
    floor: f64,
) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let scale = want.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    let mut worst = 0.0_f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let denom = w.abs().max(floor * scale);
        let err = if g == w {
            0.0
        } else if denom == 0.0 {
            f64::INFINITY
        } else {
            (g - w).abs() / denom
        };
        if err.is_nan() || err > rtol {
            return Err(format!(
                "{what}[{i}]: got {g:e}, expected {w:e} (relative error {err:.3e} > {rtol:e})"
            ));
        }
        worst = worst.max(err);
    }
    Ok(worst)
}

/// For a quantity that is zero up to rounding in the reference (`max|want| ≤ eps · unit`),
/// checks that ours is zero up to rounding too; `None` when the reference is not zero.
pub fn check_zero(
    what: &str,
    got: &[f64],
    want: &[f64],
    unit: f64,
    eps: f64,
) -> Option<Result<f64, String>> {
    let max_want = want.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    if max_want > eps * unit {
        return None;
    }
    let max_got = got.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    Some(if max_got <= eps * unit {
        Ok(0.0)
    } else {
        Err(format!(
            "{what}: reference is zero to rounding (max {max_want:e}), ours has max {max_got:e} (unit {unit:e})"
        ))
    })
}

/// A tensor's values, flattened, as f64.
pub fn to_f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}
