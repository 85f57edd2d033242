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

    /// The generator's current state: `SeededRng::new(rng.state())` continues the same stream.
    pub fn state(&self) -> u64 {
        self.state
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

/// Which fan a Kaiming initialisation scales by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanMode {
    /// `in_channels · receptive field` (`shape[1] · prod(shape[2..])`), PyTorch's default.
    FanIn,
    /// `out_channels · receptive field` (`shape[0] · prod(shape[2..])`).
    FanOut,
}

/// `(fan_in, fan_out)` of a weight of shape `(out, in, k…)`, as PyTorch computes them; `None`
/// for a tensor of fewer than two dimensions.
pub fn fans(shape: &[usize]) -> Option<(usize, usize)> {
    if shape.len() < 2 {
        return None;
    }
    let receptive: usize = shape[2..].iter().product();
    Some((shape[1] * receptive, shape[0] * receptive))
}

impl SeededRng {
    /// A tensor of `N(mean, std²)` values (one [`SeededRng::normal`] draw per element, in
    /// row-major order).
    pub fn normal_tensor(
        &mut self,
        shape: impl Into<Shape>,
        mean: f64,
        std: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let data: Vec<f64> = (0..shape.elem_count())
            .map(|_| mean + std * self.normal())
            .collect();
        Tensor::from_vec(data, shape, device)?.to_dtype(dtype)
    }
}

/// PyTorch's `kaiming_normal_(w, mode, nonlinearity="relu")` (also its default
/// `leaky_relu` with slope 0): `N(0, 2 / fan)` for a weight of shape `(out, in, k…)`.
pub fn kaiming_normal(
    rng: &mut SeededRng,
    shape: &[usize],
    mode: FanMode,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let (fan_in, fan_out) = fans(shape).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "kaiming_normal needs a weight of at least 2 dimensions, got shape {shape:?}"
        ))
    })?;
    let fan = match mode {
        FanMode::FanIn => fan_in,
        FanMode::FanOut => fan_out,
    };
    let std = (2.0 / fan.max(1) as f64).sqrt();
    rng.normal_tensor(shape, 0.0, std, dtype, device)
}

/// PyTorch's default initialisation of a convolution (and of a linear layer): weight
/// `kaiming_uniform(a = √5)` = `U(±1/√fan_in)`, bias `U(±1/√fan_in)`. Returns
/// `(weight, bias)` for a weight of shape `(out, in, k…)`.
pub fn conv_default(
    rng: &mut SeededRng,
    shape: &[usize],
    bias: bool,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Option<Tensor>)> {
    let (fan_in, _) = fans(shape).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "conv_default needs a weight of at least 2 dimensions, got shape {shape:?}"
        ))
    })?;
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let w = rng.uniform_tensor(shape, -bound, bound, dtype, device)?;
    let b = if bias {
        Some(rng.uniform_tensor(shape[0], -bound, bound, dtype, device)?)
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
    #[test]
    fn fans_and_kaiming_normal_std() {
        assert_eq!(fans(&[8, 4, 3, 3, 3]), Some((108, 216)));
        assert_eq!(fans(&[5, 7]), Some((7, 5)));
        assert_eq!(fans(&[5]), None);
        let mut r = SeededRng::new(11);
        let shape = [64, 32, 3, 3, 3];
        for (mode, fan) in [
            (FanMode::FanIn, 32.0 * 27.0),
            (FanMode::FanOut, 64.0 * 27.0),
        ] {
            let w = kaiming_normal(&mut r, &shape, mode, DType::F64, &Device::Cpu).unwrap();
            let v = w.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
            let want: f64 = 2.0 / fan;
            assert!(mean.abs() < 0.05 * want.sqrt(), "{mean}");
            assert!((var / want - 1.0).abs() < 0.03, "{var} vs {want}");
        }
        assert!(kaiming_normal(&mut r, &[4], FanMode::FanIn, DType::F32, &Device::Cpu).is_err());
    }

    #[test]
    fn conv_default_bounds() {
        let mut r = SeededRng::new(5);
        let (w, b) =
            conv_default(&mut r, &[6, 2, 2, 2, 2], true, DType::F32, &Device::Cpu).unwrap();
        let bound = 1.0 / 4.0f32; // fan_in = 2 · 8 = 16
        let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(wv.iter().all(|v| v.abs() <= bound));
        assert!(wv.iter().any(|v| v.abs() > 0.5 * bound));
        assert_eq!(b.unwrap().dims(), &[6]);
        let (_, none) = conv_default(&mut r, &[6, 2, 1], false, DType::F32, &Device::Cpu).unwrap();
        assert!(none.is_none());
    }
}
