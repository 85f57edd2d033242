//! `BatchNorm3d` against direct f64 formulas: train and eval outputs, the running-statistic
//! update (momentum 0.1, unbiased variance), `num_batches_tracked`, gradients against finite
//! differences, the fused ReLU, `VarMap` names and checkpoints, loading from plain tensors,
//! and every error path.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use yaware_backbones::Error;
use yaware_backbones::ops::BatchNorm3d;

const EPS: f64 = 1e-5;

/// SplitMix64 → uniform in [-1, 1).
fn values(seed: u64, len: usize) -> Vec<f64> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            2.0 * ((z >> 11) as f64 / (1u64 << 53) as f64) - 1.0
        })
        .collect()
}

/// Inputs with a different mean and spread per channel.
fn input(seed: u64, shape: [usize; 5]) -> Vec<f64> {
    let s: usize = shape[2..].iter().product();
    values(seed, shape.iter().product())
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let c = (i / s) % shape[1];
            3.0 - c as f64 + (1.0 + c as f64) * v
        })
        .collect()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Per-channel mean and biased variance, directly.
fn naive_stats(x: &[f64], shape: [usize; 5]) -> (Vec<f64>, Vec<f64>) {
    let [n, c, ..] = shape;
    let s: usize = shape[2..].iter().product();
    let channel = |ch: usize| (0..n).flat_map(move |b| (0..s).map(move |j| (b * c + ch) * s + j));
    let count = (n * s) as f64;
    (0..c)
        .map(|ch| {
            let mean = channel(ch).map(|i| x[i]).sum::<f64>() / count;
            let var = channel(ch).map(|i| (x[i] - mean).powi(2)).sum::<f64>() / count;
            (mean, var)
        })
        .unzip()
}

/// `γ (x − μ) / sqrt(σ² + eps) + β`, then ReLU if asked.
fn naive_bn(
    x: &[f64],
    shape: [usize; 5],
    mean: &[f64],
    var: &[f64],
    g: &[f64],
    b: &[f64],
    relu: bool,
) -> Vec<f64> {
    let s: usize = shape[2..].iter().product();
    let c = shape[1];
    x.iter()
        .enumerate()
        .map(|(i, v)| {
            let ch = (i / s) % c;
            let y = g[ch] * (v - mean[ch]) / (var[ch] + EPS).sqrt() + b[ch];
            if relu { y.max(0.0) } else { y }
        })
        .collect()
}

/// A batch norm in a fresh VarMap under `bn`, with γ and β set to non-trivial values.
fn layer(c: usize, dtype: DType) -> (VarMap, BatchNorm3d, Vec<f64>, Vec<f64>) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, dtype, &Device::Cpu);
    let bn = BatchNorm3d::new(c, vb.pp("bn")).unwrap();
    let g: Vec<f64> = (0..c).map(|i| 0.5 + 0.75 * i as f64).collect();
    let b: Vec<f64> = (0..c).map(|i| 0.3 - 0.4 * i as f64).collect();
    set(bn.weight(), &g);
    set(bn.bias(), &b);
    (vm, bn, g, b)
}

fn set(var: &Var, v: &[f64]) {
    let t = Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
    var.set(&t.to_dtype(var.dtype()).unwrap()).unwrap();
}

fn tensor(x: &[f64], shape: [usize; 5], dtype: DType) -> Tensor {
    Tensor::from_slice(x, &shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn forward(bn: &BatchNorm3d, x: &Tensor, train: bool, relu: bool) -> Tensor {
    if relu {
        bn.forward_relu_t(x, train).unwrap()
    } else {
        bn.forward_t(x, train).unwrap()
    }
}

#[test]
fn train_and_eval_outputs_and_running_statistics_match_direct_formulas() {
    // Tiny planes too (1–2 values per (sample, channel)): the eval pass splits work over
    // planes there, not channels.
    for shape in [
        [2, 3, 7, 6, 5],
        [1, 2, 9, 8, 7],
        [4, 7, 1, 1, 1],
        [3, 5, 1, 2, 1],
    ] {
        // f64: rounding only; f32: inputs and outputs of magnitude ≤ ~10 rounded at 2^-24
        // relative, statistics accumulated in f64: 2e-5 absolute.
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
            for relu in [false, true] {
                let c = shape[1];
                let (_vm, bn, g, b) = layer(c, dtype);
                assert_eq!(bn.num_features(), c);
                let x1 = input(1, shape);
                let x2: Vec<f64> = input(2, shape).iter().map(|v| 2.0 * v - 1.0).collect();
                let (mut rm, mut rv) = (vec![0.0; c], vec![1.0; c]);
                let count: usize = shape[0] * shape[2..].iter().product::<usize>();
                let unbias = count as f64 / (count - 1) as f64;
                for (step, x) in [&x1, &x2].into_iter().enumerate() {
                    let y = forward(&bn, &tensor(x, shape, dtype), true, relu);
                    let (mean, var) = naive_stats(x, shape);
                    let want = naive_bn(x, shape, &mean, &var, &g, &b, relu);
                    assert!(max_abs_diff(&flat(&y), &want) <= tol, "{shape:?} {dtype:?}");
                    for ch in 0..c {
                        rm[ch] = 0.9 * rm[ch] + 0.1 * mean[ch];
                        rv[ch] = 0.9 * rv[ch] + 0.1 * var[ch] * unbias;
                    }
                    let stat_tol = if dtype == DType::F64 { 1e-12 } else { 1e-6 };
                    assert!(max_abs_diff(&flat(bn.running_mean()), &rm) <= stat_tol);
                    assert!(max_abs_diff(&flat(bn.running_var()), &rv) <= stat_tol);
                    assert_eq!(bn.num_batches_tracked().unwrap(), step as i64 + 1);
                }
                // Eval mode: running statistics, which it leaves alone.
                let y = forward(&bn, &tensor(&x1, shape, dtype), false, relu);
                let (rm32, rv32) = (flat(bn.running_mean()), flat(bn.running_var()));
                let want = naive_bn(&x1, shape, &rm32, &rv32, &g, &b, relu);
                assert!(max_abs_diff(&flat(&y), &want) <= tol);
                assert_eq!(flat(bn.running_mean()), rm32);
                assert_eq!(flat(bn.running_var()), rv32);
                assert_eq!(bn.num_batches_tracked().unwrap(), 2);
            }
        }
    }
}

#[test]
fn fused_relu_equals_relu_of_batch_norm() {
    let shape = [2, 3, 5, 4, 3];
    let x = Var::from_tensor(&tensor(&input(3, shape), shape, DType::F32)).unwrap();
    let w = tensor(&values(4, 360), shape, DType::F32);
    for train in [true, false] {
        let (_, bn, _, _) = layer(3, DType::F32);
        let (_, bn2, _, _) = layer(3, DType::F32);
        let fused = bn.forward_relu_t(&x, train).unwrap();
        let composed = bn2.forward_t(&x, train).unwrap().relu().unwrap();
        assert_eq!(flat(&fused), flat(&composed));
        let gf = (&fused * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (&composed * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // Same math, different summation order in f32: 1e-5.
        for (a, b) in [
            (x.as_tensor(), x.as_tensor()),
            (bn.weight(), bn2.weight()),
            (bn.bias(), bn2.bias()),
        ] {
            let d = max_abs_diff(&flat(gf.get(a).unwrap()), &flat(gc.get(b).unwrap()));
            assert!(d <= 1e-5, "train {train}: {d}");
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let shape = [2, 2, 3, 2, 3];
    let x0 = input(5, shape);
    let w = values(6, x0.len());
    let wt = tensor(&w, shape, DType::F64);
    for train in [true, false] {
        for relu in [false, true] {
            let (_, bn, g0, b0) = layer(2, DType::F64);
            // Eval mode with running statistics that do not normalise exactly.
            set(bn.running_mean(), &[0.5, 1.5]);
            set(bn.running_var(), &[2.0, 0.7]);
            let loss = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
                set(bn.weight(), g);
                set(bn.bias(), b);
                let y = forward(&bn, &tensor(x, shape, DType::F64), train, relu);
                (y * &wt)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            set(bn.weight(), &g0);
            set(bn.bias(), &b0);
            let xv = Var::from_tensor(&tensor(&x0, shape, DType::F64)).unwrap();
            let y = forward(&bn, xv.as_tensor(), train, relu);
            let grads = (y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = flat(grads.get(&xv).unwrap());
            let dg = flat(grads.get(bn.weight()).unwrap());
            let db = flat(grads.get(bn.bias()).unwrap());
            // Central differences with h = 1e-6 on a smooth (away from ReLU kinks, which these
            // inputs avoid) function of O(1) inputs: truncation ~1e-12, rounding ~1e-10.
            let h = 1e-6;
            let fd = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
            for i in 0..x0.len() {
                let d = fd(&|e| {
                    let mut x = x0.clone();
                    x[i] += e;
                    loss(&x, &g0, &b0)
                });
                assert!(
                    (d - dx[i]).abs() < 1e-7,
                    "x[{i}] train {train} relu {relu}: {d} vs {}",
                    dx[i]
                );
            }
            for ch in 0..2 {
                let d = fd(&|e| {
                    let mut g = g0.clone();
                    g[ch] += e;
                    loss(&x0, &g, &b0)
                });
                assert!(
                    (d - dg[ch]).abs() < 1e-7,
                    "γ[{ch}] train {train} relu {relu}"
                );
                let d = fd(&|e| {
                    let mut b = b0.clone();
                    b[ch] += e;
                    loss(&x0, &g0, &b)
                });
                assert!(
                    (d - db[ch]).abs() < 1e-7,
                    "β[{ch}] train {train} relu {relu}"
                );
            }
        }
    }
}

#[test]
fn varmap_holds_pytorch_names_and_round_trips() {
    let (vm, bn, _, _) = layer(4, DType::F32);
    let mut names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bn.bias",
            "bn.num_batches_tracked",
            "bn.running_mean",
            "bn.running_var",
            "bn.weight"
        ]
    );
    let data = vm.data().lock().unwrap().clone();
    let nbt = &data["bn.num_batches_tracked"];
    assert_eq!((nbt.dtype(), nbt.dims()), (DType::I64, &[][..]));
    assert_eq!(data["bn.running_var"].dims(), &[4]);
    // Fresh defaults: weight 1 (set by `layer` here), running mean 0, variance 1, counter 0.
    let vm0 = VarMap::new();
    let fresh =
        BatchNorm3d::new(4, VarBuilder::from_varmap(&vm0, DType::F32, &Device::Cpu)).unwrap();
    assert_eq!(flat(fresh.weight()), vec![1.0; 4]);
    assert_eq!(flat(fresh.bias()), vec![0.0; 4]);
    assert_eq!(flat(fresh.running_mean()), vec![0.0; 4]);
    assert_eq!(flat(fresh.running_var()), vec![1.0; 4]);
    assert_eq!(fresh.num_batches_tracked().unwrap(), 0);

    // One train step, then the map's own Vars carry the new statistics and the gradients.
    let shape = [2, 4, 3, 3, 2];
    let y = bn
        .forward_t(&tensor(&input(7, shape), shape, DType::F32), true)
        .unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&data["bn.weight"]).is_some());
    assert!(grads.get(&data["bn.bias"]).is_some());
    assert_eq!(flat(&data["bn.running_mean"]), flat(bn.running_mean()));
    assert_eq!(
        data["bn.num_batches_tracked"].to_scalar::<i64>().unwrap(),
        1
    );

    let path = std::env::temp_dir().join(format!(
        "yaware_bn_roundtrip_{}.safetensors",
        std::process::id()
    ));
    vm.save(&path).unwrap();
    let mut vm2 = VarMap::new();
    let bn2 = BatchNorm3d::new(
        4,
        VarBuilder::from_varmap(&vm2, DType::F32, &Device::Cpu).pp("bn"),
    )
    .unwrap();
    vm2.load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    for (a, b) in [
        (bn.weight(), bn2.weight()),
        (bn.bias(), bn2.bias()),
        (bn.running_mean(), bn2.running_mean()),
        (bn.running_var(), bn2.running_var()),
    ] {
        assert_eq!(flat(a), flat(b));
    }
    assert_eq!(bn2.num_batches_tracked().unwrap(), 1);
}

#[test]
fn loads_from_plain_tensors_and_updates_its_own_copies() {
    let dev = Device::Cpu;
    let t = |v: &[f64]| Tensor::new(v, &dev).unwrap();
    let mut map: HashMap<String, Tensor> = HashMap::from([
        ("l.weight".to_string(), t(&[2.0, 0.5])),
        ("l.bias".to_string(), t(&[1.0, -1.0])),
        ("l.running_mean".to_string(), t(&[0.25, -0.5])),
        ("l.running_var".to_string(), t(&[4.0, 0.25])),
        (
            "l.num_batches_tracked".to_string(),
            Tensor::new(7i64, &dev).unwrap(),
        ),
    ]);
    let shape = [1, 2, 3, 2, 2];
    let x = input(8, shape);
    let vb = VarBuilder::from_tensors(map.clone(), DType::F64, &dev);
    let bn = BatchNorm3d::new(2, vb.pp("l")).unwrap();
    assert_eq!(bn.num_batches_tracked().unwrap(), 7);
    let y = bn.forward_t(&tensor(&x, shape, DType::F64), false).unwrap();
    let want = naive_bn(
        &x,
        shape,
        &[0.25, -0.5],
        &[4.0, 0.25],
        &[2.0, 0.5],
        &[1.0, -1.0],
        false,
    );
    assert!(max_abs_diff(&flat(&y), &want) <= 1e-12);
    // Train mode updates the layer's copies, not the caller's tensors.
    let y = bn.forward_t(&tensor(&x, shape, DType::F64), true).unwrap();
    let (mean, _) = naive_stats(&x, shape);
    let want: Vec<f64> = [0.25, -0.5]
        .iter()
        .zip(&mean)
        .map(|(r, m)| 0.9 * r + 0.1 * m)
        .collect();
    assert!(max_abs_diff(&flat(bn.running_mean()), &want) <= 1e-12);
    assert_eq!(bn.num_batches_tracked().unwrap(), 8);
    assert_eq!(flat(&map["l.running_mean"]), vec![0.25, -0.5]);
    // Gradients reach the layer's γ and β.
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(bn.weight()).is_some() && grads.get(bn.bias()).is_some());

    // A checkpoint without the counter loads it as 0 (PyTorch does the same).
    map.remove("l.num_batches_tracked");
    let vb = VarBuilder::from_tensors(map.clone(), DType::F32, &dev);
    assert_eq!(
        BatchNorm3d::new(2, vb.pp("l"))
            .unwrap()
            .num_batches_tracked()
            .unwrap(),
        0
    );
    // A missing or misshapen variable is a typed error naming it.
    map.remove("l.running_var");
    let vb = VarBuilder::from_tensors(map.clone(), DType::F32, &dev);
    match BatchNorm3d::new(2, vb.pp("l")) {
        Err(Error::MissingWeight { name, expected }) => {
            assert_eq!((name.as_str(), expected), ("l.running_var", vec![2]));
        }
        other => panic!("expected a missing weight, got {other:?}"),
    }
    map.insert("l.running_var".into(), t(&[1.0, 1.0, 1.0]));
    let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
    match BatchNorm3d::new(2, vb.pp("l")) {
        Err(Error::WeightShape {
            name,
            got,
            expected,
        }) => {
            assert_eq!(
                (name.as_str(), got, expected),
                ("l.running_var", vec![3], vec![2])
            );
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
}

#[test]
fn non_contiguous_inputs_are_normalised_like_contiguous_ones() {
    let x = Tensor::from_vec(input(9, [2, 5, 4, 3, 3]), (2, 5, 4, 3, 3), &Device::Cpu)
        .unwrap()
        .permute((0, 4, 1, 2, 3))
        .unwrap();
    assert!(!x.is_contiguous());
    let (_, a, _, _) = layer(3, DType::F64);
    let (_, b, _, _) = layer(3, DType::F64);
    let ya = a.forward_t(&x, true).unwrap();
    let yb = b.forward_t(&x.contiguous().unwrap(), true).unwrap();
    assert_eq!(flat(&ya), flat(&yb));
    assert_eq!(flat(a.running_var()), flat(b.running_var()));
}

fn input_error(r: yaware_backbones::Result<Tensor>, needle: &str) {
    match r {
        Err(Error::Input { op, problem }) => {
            assert_eq!(op, "batch_norm3d");
            assert!(problem.contains(needle), "{problem:?} lacks {needle:?}");
        }
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn bad_inputs_and_parameters_are_typed_errors() {
    let dev = Device::Cpu;
    let (_, bn, _, _) = layer(3, DType::F32);
    let x4 = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap();
    let xc = Tensor::zeros((2, 4, 2, 2, 2), DType::F32, &dev).unwrap();
    let x64 = Tensor::zeros((2, 3, 2, 2, 2), DType::F64, &dev).unwrap();
    let one = Tensor::zeros((1, 3, 1, 1, 1), DType::F32, &dev).unwrap();
    for relu in [false, true] {
        let f = |x: &Tensor, train: bool| {
            if relu {
                bn.forward_relu_t(x, train)
            } else {
                bn.forward_t(x, train)
            }
        };
        input_error(f(&x4, true), "[2, 3, 4, 4]");
        input_error(
            f(&xc, false),
            "expected 3 channels, got shape [2, 4, 2, 2, 2]",
        );
        input_error(f(&x64, true), "F64");
        input_error(f(&one, true), "more than 1 value per channel");
        // Eval mode takes a single value per channel.
        assert_eq!(f(&one, false).unwrap().dims(), &[1, 3, 1, 1, 1]);
    }
    let vm = VarMap::new();
    match BatchNorm3d::new(0, VarBuilder::from_varmap(&vm, DType::F32, &dev)) {
        Err(Error::InvalidParam { name, value, .. }) => {
            assert_eq!((name, value.as_str()), ("num_features", "0"))
        }
        other => panic!("expected an invalid num_features, got {other:?}"),
    }
    match BatchNorm3d::new(2, VarBuilder::from_varmap(&vm, DType::BF16, &dev)) {
        Err(Error::Input { problem, .. }) => assert!(problem.contains("BF16"), "{problem}"),
        other => panic!("expected a dtype error, got {other:?}"),
    }
}
