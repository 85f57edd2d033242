//! The five similarity kernels applied to label distances.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A kernel `k(x)` applied to the Mahalanobis distance `x = ‖H^{-1/2}(y_a − y_b)‖` between two
/// label vectors.
///
/// The formulas are the reference's, without normalising constants (so `k(0) = 1` for all
/// five), and the compact kernels use a strict support test `|x| < 1` (so `k(1) = 0`):
///
/// | kernel | `k(x)` |
/// | --- | --- |
/// | `Gaussian` | `exp(−x²/2)` |
/// | `Epanechnikov` | `(1 − x²)·1[|x| < 1]` |
/// | `Exponential` | `exp(−x)` |
/// | `Linear` | `(1 − x)·1[|x| < 1]` |
/// | `Cosine` | `cos(πx/2)·1[|x| < 1]` |
///
/// ```
/// use yaware_losses::Kernel;
/// let k: Kernel = "Gaussian".parse()?;
/// assert_eq!(k, Kernel::Gaussian);
/// assert_eq!(k.eval(0.0), 1.0);
/// assert_eq!(Kernel::Linear.eval(1.0), 0.0);
/// # Ok::<(), yaware_losses::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Kernel {
    /// `exp(−x²/2)`, the default.
    #[default]
    Gaussian,
    /// `(1 − x²)` on `|x| < 1`, else 0.
    Epanechnikov,
    /// `exp(−x)`.
    Exponential,
    /// `(1 − x)` on `|x| < 1`, else 0.
    Linear,
    /// `cos(πx/2)` on `|x| < 1`, else 0.
    Cosine,
}

impl Kernel {
    /// All kernels, in the reference's order (the `kernel_id` of the golden files).
    pub const ALL: [Kernel; 5] = [
        Kernel::Gaussian,
        Kernel::Epanechnikov,
        Kernel::Exponential,
        Kernel::Linear,
        Kernel::Cosine,
    ];

    /// The reference's name of the kernel (`"gaussian"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Gaussian => "gaussian",
            Kernel::Epanechnikov => "epanechnikov",
            Kernel::Exponential => "exponential",
            Kernel::Linear => "linear",
            Kernel::Cosine => "cosine",
        }
    }

    /// Evaluates the kernel at distance `x` (in f64, with the reference's operation order).
    #[inline]
    pub fn eval(self, x: f64) -> f64 {
        // Outside the support the reference multiplies by a boolean, giving `(negative)·0 = −0.0`;
        // we return the same signed zero.
        let support = |v: f64| if x.abs() < 1.0 { v } else { v * 0.0 };
        match self {
            Kernel::Gaussian => (-(x * x) / 2.0).exp(),
            Kernel::Epanechnikov => support(1.0 - x * x),
            Kernel::Exponential => (-x).exp(),
            Kernel::Linear => support(1.0 - x),
            Kernel::Cosine => support((std::f64::consts::PI * x / 2.0).cos()),
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kernel {
    type Err = Error;

    /// Parses the reference's kernel names, ignoring case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        Kernel::ALL
            .into_iter()
            .find(|k| k.name() == lower)
            .ok_or_else(|| Error::UnknownKernel {
                name: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_kernels_are_one_at_zero() {
        for k in Kernel::ALL {
            assert_eq!(k.eval(0.0), 1.0, "{k}");
        }
    }

    #[test]
    fn compact_kernels_vanish_at_and_beyond_one() {
        for k in [Kernel::Epanechnikov, Kernel::Linear, Kernel::Cosine] {
            assert_eq!(k.eval(1.0), 0.0, "{k}");
            assert_eq!(k.eval(1.5), 0.0, "{k}");
            assert!(k.eval(0.999) > 0.0, "{k}");
        }
        assert!(Kernel::Gaussian.eval(3.0) > 0.0);
        assert!(Kernel::Exponential.eval(3.0) > 0.0);
    }

    #[test]
    fn formulas() {
        let x = 0.5_f64;
        assert_eq!(Kernel::Gaussian.eval(x), (-0.125_f64).exp());
        assert_eq!(Kernel::Epanechnikov.eval(x), 0.75);
        assert_eq!(Kernel::Exponential.eval(x), (-0.5_f64).exp());
        assert_eq!(Kernel::Linear.eval(x), 0.5);
        assert!((Kernel::Cosine.eval(x) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-15);
    }

    #[test]
    fn parse_is_case_insensitive_and_names_round_trip() {
        for k in Kernel::ALL {
            assert_eq!(k.name().parse::<Kernel>().unwrap(), k);
            assert_eq!(k.name().to_uppercase().parse::<Kernel>().unwrap(), k);
            assert_eq!(k.to_string(), k.name());
        }
    }

    #[test]
    fn unknown_kernel_is_a_typed_error() {
        let err = "rbf".parse::<Kernel>().unwrap_err();
        assert!(matches!(&err, Error::UnknownKernel { name } if name == "rbf"));
        assert!(err.to_string().contains("rbf"));
    }
}
