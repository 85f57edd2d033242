//! The fused Adam kernel never stores a subnormal moment: a parameter whose gradient stays
//! zero has moments that decay geometrically (`m ← β1·m`) through the subnormal range, where
//! arithmetic is slow on Intel CPUs. The fused kernel stores them as zero; the tensor-op path
//! (PyTorch's arithmetic) keeps the subnormal values. The parameters stay bit-identical.

use candle_core::{Device, Tensor, Var};
use yaware_optim::{Adam, AdamConfig, AdamW, AdamWConfig, Optimizer, ParamGroup};

const STEPS: usize = 800;

/// `STEPS` steps of `opt` on `var`: the gradient `g0` once, then zero gradients. Returns the
/// parameter after every step and the first moment after the last one.
fn run(opt: &mut dyn Optimizer, var: &Var, g0: &Tensor) -> (Vec<Vec<f32>>, Vec<f32>) {
    let mut thetas = Vec::with_capacity(STEPS);
    for step in 0..STEPS {
        let g = if step == 0 {
            g0.clone()
        } else {
            g0.zeros_like().unwrap()
        };
        // d/dθ Σ θ·g = g.
        let grads = (var.as_tensor() * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&grads).unwrap();
        thetas.push(var.as_tensor().to_vec1::<f32>().unwrap());
    }
    let state = opt.state_tensors().unwrap();
    let m = state
        .iter()
        .find(|(k, _)| k.ends_with(".exp_avg"))
        .map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .expect("the first moment is saved");
    (thetas, m)
}

/// `make(var, fused)` builds the optimizer with the fused kernel or the tensor-op path.
fn check(make: impl Fn(&Var, bool) -> Box<dyn Optimizer>) {
    let dev = Device::Cpu;
    let init = [0.5f32, -0.25, 1.0, 3.0];
    let g0 = Tensor::new(&[1e-3f32, -2e-3, 5e-4, 0.0], &dev).unwrap();
    let fused_var = Var::new(&init, &dev).unwrap();
    let plain_var = Var::new(&init, &dev).unwrap();
    let mut fused = make(&fused_var, true);
    let mut plain = make(&plain_var, false);
    let (theta_f, m_f) = run(fused.as_mut(), &fused_var, &g0);
    let (theta_p, m_p) = run(plain.as_mut(), &plain_var, &g0);
    // The regime is reached: PyTorch's arithmetic leaves subnormal first moments ...
    assert!(
        m_p.iter().any(|v| v.is_subnormal()),
        "the test no longer reaches subnormal moments: {m_p:?}"
    );
    // ... which the fused kernel stores as zero, never as subnormals.
    for (f, p) in m_f.iter().zip(&m_p) {
        assert!(!f.is_subnormal(), "{m_f:?}");
        if p.is_subnormal() {
            assert_eq!(*f, 0.0);
        } else {
            assert_eq!(f.to_bits(), p.to_bits());
        }
    }
    // The parameters are the same, bit for bit, after every step.
    for (step, (f, p)) in theta_f.iter().zip(&theta_p).enumerate() {
        let same = f.iter().zip(p).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "step {step}: {f:?} vs {p:?}");
    }
}

#[test]
fn adam_flushes_subnormal_moments_and_keeps_the_parameters() {
    check(|v, fused| {
        let group = vec![ParamGroup::from_vars("default", vec![v.clone()])];
        let mut opt = Adam::new(group, AdamConfig::default()).unwrap();
        opt.set_fused(fused);
        Box::new(opt)
    });
}

#[test]
fn adamw_flushes_subnormal_moments_and_keeps_the_parameters() {
    check(|v, fused| {
        let group = vec![ParamGroup::from_vars("default", vec![v.clone()])];
        let mut opt = AdamW::new(group, AdamWConfig::default()).unwrap();
        opt.set_fused(fused);
        Box::new(opt)
    });
}
