//! Seeded parameter initialisation. candle's CPU random generator cannot be seeded, so every
//! network of the workspace draws its initial weights from [`SeededRng`] instead.

use candle_core::{DType, Device, Result, Shape, Tensor};

/// A small, fast, seedable generator (SplitMix64). The same seed gives the same weights on
/// every machine and thread count.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A tensor of `U(low, high)` values.
    pub fn uniform_tensor(
        &mut self,
        shape: impl Into<Shape>,
        low: f64,
        high: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let data: Vec<f64> = (0..shape.elem_count())
            .map(|_| low + (high - low) * self.uniform())
            .collect();
        Tensor::from_vec(data, shape, device)?.to_dtype(dtype)
    }
}

/// PyTorch's default `nn.Linear` initialisation: weight `kaiming_uniform(a = √5)`, which is
/// `U(±1/√fan_in)`, and bias `U(±1/√fan_in)`. Returns `(weight (out, in), bias (out))`.
pub fn linear_default(
    rng: &mut SeededRng,
    in_features: usize,
    out_features: usize,
    bias: bool,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Option<Tensor>)> {
    let bound = 1.0 / (in_features as f64).sqrt();
    let w = rng.uniform_tensor((out_features, in_features), -bound, bound, dtype, device)?;
    let b = if bias {
        Some(rng.uniform_tensor(out_features, -bound, bound, dtype, device)?)
    } else {
        None
    };
    Ok((w, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_uniform_range() {
        let (mut a, mut b) = (SeededRng::new(7), SeededRng::new(7));
        let xs: Vec<f64> = (0..1000).map(|_| a.uniform()).collect();
        let ys: Vec<f64> = (0..1000).map(|_| b.uniform()).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        assert_ne!(SeededRng::new(8).uniform(), xs[0]);
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut r = SeededRng::new(1);
        let xs: Vec<f64> = (0..20_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn linear_default_bounds() {
        let mut r = SeededRng::new(3);
        let (w, b) = linear_default(&mut r, 16, 4, true, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(w.dims(), &[4, 16]);
        let bound = 0.25f32;
        for v in w.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
            assert!(v.abs() <= bound);
        }
        assert_eq!(b.unwrap().dims(), &[4]);
    }
}
