//! 3D pooling against naive direct implementations (f64) written here, finite differences
//! for the backward passes, PyTorch's tie and NaN rules, and every error path.

use candle_core::{DType, Device, Tensor, Var};
use yaware_backbones::Error;
use yaware_backbones::ops::{adaptive_avg_pool3d_1, adaptive_max_pool3d_1, avg_pool3d, max_pool3d};

type Pool = fn(&Tensor, [usize; 3], [usize; 3], [usize; 3]) -> yaware_backbones::Result<Tensor>;

/// SplitMix64 → uniform in [-1, 1): distinct values (no ties) with overwhelming probability.
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

/// (shape, kernel, stride, padding).
type Case = ([usize; 5], [usize; 3], [usize; 3], [usize; 3]);

/// Cases on odd, non-cubic volumes.
fn cases() -> Vec<Case> {
    vec![
        ([2, 3, 7, 6, 5], [3; 3], [2; 3], [1; 3]),
        ([1, 2, 9, 8, 7], [3; 3], [2; 3], [1; 3]),
        ([2, 3, 7, 6, 5], [2; 3], [2; 3], [0; 3]),
        ([1, 2, 9, 8, 7], [3; 3], [3; 3], [0; 3]),
        ([1, 2, 9, 8, 7], [3; 3], [1; 3], [1; 3]),
        ([2, 1, 7, 6, 5], [3, 2, 1], [1, 2, 3], [1, 1, 0]),
        ([1, 2, 5, 9, 4], [5, 4, 2], [2, 3, 1], [2, 2, 1]),
    ]
}

/// Direct pooling: for each output, the in-volume `(flat index, value)` list of its window in
/// (d, h, w) order, padding positions left out. Returns the output dims and the windows.
fn windows(
    shape: [usize; 5],
    k: [usize; 3],
    s: [usize; 3],
    p: [usize; 3],
) -> ([usize; 5], Vec<Vec<usize>>) {
    let [n, c, d, h, w] = shape;
    let out: Vec<usize> = (0..3)
        .map(|a| (shape[a + 2] + 2 * p[a] - k[a]) / s[a] + 1)
        .collect();
    let mut all = Vec::new();
    for b in 0..n * c {
        for od in 0..out[0] {
            for oh in 0..out[1] {
                for ow in 0..out[2] {
                    let mut win = Vec::new();
                    for kd in 0..k[0] {
                        for kh in 0..k[1] {
                            for kw in 0..k[2] {
                                let zd = (od * s[0] + kd) as isize - p[0] as isize;
                                let zh = (oh * s[1] + kh) as isize - p[1] as isize;
                                let zw = (ow * s[2] + kw) as isize - p[2] as isize;
                                let inside = (0..d as isize).contains(&zd)
                                    && (0..h as isize).contains(&zh)
                                    && (0..w as isize).contains(&zw);
                                if inside {
                                    let (zd, zh, zw) = (zd as usize, zh as usize, zw as usize);
                                    win.push(((b * d + zd) * h + zh) * w + zw);
                                }
                            }
                        }
                    }
                    all.push(win);
                }
            }
        }
    }
    ([n, c, out[0], out[1], out[2]], all)
}

/// Naive max pooling: outputs and the index of each window's first maximum.
fn naive_max(x: &[f64], wins: &[Vec<usize>]) -> (Vec<f64>, Vec<usize>) {
    wins.iter()
        .map(|win| {
            let mut best = win[0];
            for &i in win {
                if x[i] > x[best] {
                    best = i;
                }
            }
            (x[best], best)
        })
        .unzip()
}

fn naive_avg(x: &[f64], wins: &[Vec<usize>], k: [usize; 3]) -> Vec<f64> {
    let size = (k[0] * k[1] * k[2]) as f64;
    wins.iter()
        .map(|win| win.iter().map(|&i| x[i]).sum::<f64>() / size)
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

/// Output and `d(Σ w·pool(x))/dx` from candle's autograd.
fn run(pool: Pool, x: &[f64], case: Case, dtype: DType, w: &[f64]) -> (Tensor, Vec<f64>) {
    let (shape, k, s, p) = case;
    let xv = Var::from_tensor(
        &Tensor::from_slice(x, &shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let y = pool(xv.as_tensor(), k, s, p).unwrap();
    let wt = Tensor::from_slice(w, y.shape(), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let grads = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = flat(grads.get(&xv).unwrap());
    (y, dx)
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

#[test]
fn max_pool_matches_naive_forward_and_backward() {
    for (ci, case) in cases().into_iter().enumerate() {
        let (shape, k, s, p) = case;
        let x = values(10 + ci as u64, numel(&shape));
        let (oshape, wins) = windows(shape, k, s, p);
        let (want, arg) = naive_max(&x, &wins);
        let w = values(100 + ci as u64, want.len());
        let mut want_dx = vec![0.0; x.len()];
        for (&i, &g) in arg.iter().zip(&w) {
            want_dx[i] += g;
        }
        // f64 is exact (max and sums of the same numbers); f32 rounds the inputs (2^-24
        // relative) and sums at most 27 gradients per voxel: 1e-6 absolute on values ≤ 1.
        for (dtype, tol) in [(DType::F64, 0.0), (DType::F32, 1e-6)] {
            let (y, dx) = run(max_pool3d, &x, case, dtype, &w);
            assert_eq!(y.dims(), &oshape, "case {case:?}");
            assert!(
                max_abs_diff(&flat(&y), &want) <= tol,
                "case {case:?} {dtype:?}"
            );
            assert!(
                max_abs_diff(&dx, &want_dx) <= tol * 30.0,
                "case {case:?} {dtype:?}"
            );
        }
    }
}

#[test]
fn avg_pool_matches_naive_forward_and_backward() {
    for (ci, case) in cases().into_iter().enumerate() {
        let (shape, k, s, p) = case;
        let x = values(20 + ci as u64, numel(&shape));
        let (oshape, wins) = windows(shape, k, s, p);
        let want = naive_avg(&x, &wins, k);
        let w = values(200 + ci as u64, want.len());
        let size = (k[0] * k[1] * k[2]) as f64;
        let mut want_dx = vec![0.0; x.len()];
        for (win, &g) in wins.iter().zip(&w) {
            for &i in win {
                want_dx[i] += g / size;
            }
        }
        // Sums of ≤ 40 terms of magnitude ≤ 1: 1e-12 in f64, 1e-5 in f32.
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let (y, dx) = run(avg_pool3d, &x, case, dtype, &w);
            assert_eq!(y.dims(), &oshape, "case {case:?}");
            assert!(
                max_abs_diff(&flat(&y), &want) <= tol,
                "case {case:?} {dtype:?}"
            );
            assert!(
                max_abs_diff(&dx, &want_dx) <= tol,
                "case {case:?} {dtype:?}"
            );
        }
    }
}

/// Central finite differences of `Σ w·pool(x)` in f64 against the autograd gradient.
fn check_finite_differences(pool: Pool, case: Case, seed: u64) {
    let (shape, k, s, p) = case;
    let x = values(seed, numel(&shape));
    let loss = |x: &[f64], w: &Tensor| -> f64 {
        let xt = Tensor::from_slice(x, &shape, &Device::Cpu).unwrap();
        let y = pool(&xt, k, s, p).unwrap();
        (y * w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let y0 = pool(
        &Tensor::from_slice(&x, &shape, &Device::Cpu).unwrap(),
        k,
        s,
        p,
    )
    .unwrap();
    let w = values(seed + 1, y0.elem_count());
    let wt = Tensor::from_slice(&w, y0.shape(), &Device::Cpu).unwrap();
    let (_, dx) = run(pool, &x, case, DType::F64, &w);
    // Both ops are piecewise linear and the inputs have no ties closer than `eps`, so central
    // differences are exact up to rounding (~1e-16 / 1e-6).
    let eps = 1e-6;
    for i in 0..x.len() {
        let mut xp = x.clone();
        xp[i] += eps;
        let mut xm = x.clone();
        xm[i] -= eps;
        let fd = (loss(&xp, &wt) - loss(&xm, &wt)) / (2.0 * eps);
        assert!(
            (fd - dx[i]).abs() < 1e-8,
            "{case:?} at {i}: fd {fd} vs {}",
            dx[i]
        );
    }
}

#[test]
fn max_pool_gradient_matches_finite_differences() {
    check_finite_differences(max_pool3d, ([1, 2, 5, 4, 3], [3; 3], [2; 3], [1; 3]), 7);
    check_finite_differences(max_pool3d, ([2, 1, 4, 5, 3], [2; 3], [2; 3], [0; 3]), 8);
}

#[test]
fn avg_pool_gradient_matches_finite_differences() {
    check_finite_differences(avg_pool3d, ([1, 2, 5, 4, 3], [3; 3], [2; 3], [1; 3]), 9);
    check_finite_differences(avg_pool3d, ([2, 1, 4, 5, 3], [2; 3], [2; 3], [0; 3]), 10);
}

#[test]
fn max_pool_first_maximum_wins_ties() {
    // A constant volume: every window is a tie, so each window's gradient goes to its first
    // in-volume voxel in (d, h, w) order. With k2 s2 on 4³ the windows tile the volume and
    // the first voxel of each window is the one with even (d, h, w).
    let x = Var::ones((1, 1, 4, 4, 4), DType::F64, &Device::Cpu).unwrap();
    let y = max_pool3d(x.as_tensor(), [2; 3], [2; 3], [0; 3]).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let dx = flat(grads.get(&x).unwrap());
    for d in 0..4 {
        for h in 0..4 {
            for w in 0..4 {
                let want = if d % 2 == 0 && h % 2 == 0 && w % 2 == 0 {
                    1.0
                } else {
                    0.0
                };
                assert_eq!(dx[(d * 4 + h) * 4 + w], want, "at ({d}, {h}, {w})");
            }
        }
    }
    // With padding: the k3 s2 p1 window of output (0, 0, 0) covers input [0, 2)³, whose first
    // voxel (0, 0, 0) wins over the later equal maximum at (1, 1, 1).
    let mut v = vec![0.0; 27];
    v[0] = 5.0;
    v[(9 + 3) + 1] = 5.0;
    let x = Var::from_vec(v, (1, 1, 3, 3, 3), &Device::Cpu).unwrap();
    let y = max_pool3d(x.as_tensor(), [3; 3], [2; 3], [1; 3]).unwrap();
    let y0 = y.flatten_all().unwrap().get(0).unwrap();
    let grads = y0.backward().unwrap();
    let dx = flat(grads.get(&x).unwrap());
    assert_eq!(dx[0], 1.0);
    assert_eq!(dx[13], 0.0);
    // Adaptive max pooling follows the same rule.
    let x = Var::from_vec(vec![1.0, 3.0, 2.0, 3.0], (1, 1, 1, 2, 2), &Device::Cpu).unwrap();
    let y = adaptive_max_pool3d_1(x.as_tensor()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(flat(grads.get(&x).unwrap()), vec![0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn max_pool_propagates_nan_like_pytorch() {
    // A NaN counts as a maximum: the output is NaN and the NaN receives the gradient.
    let x = Var::from_vec(
        vec![1.0, 9.0, f64::NAN, 2.0, 0.0, 0.0, 0.0, 0.0],
        (1, 1, 2, 2, 2),
        &Device::Cpu,
    )
    .unwrap();
    for y in [
        max_pool3d(x.as_tensor(), [2; 3], [2; 3], [0; 3]).unwrap(),
        adaptive_max_pool3d_1(x.as_tensor()).unwrap(),
    ] {
        assert!(flat(&y)[0].is_nan());
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(
            flat(grads.get(&x).unwrap()),
            vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
    }
}

#[test]
fn adaptive_pools_match_naive() {
    let shape = [2, 3, 5, 4, 3];
    let x = values(30, numel(&shape));
    let vol = 5 * 4 * 3;
    let w = values(31, 6);
    let (want_max, arg): (Vec<f64>, Vec<usize>) = (0..6)
        .map(|b| {
            let v = &x[b * vol..(b + 1) * vol];
            let mut best = 0;
            for i in 0..vol {
                if v[i] > v[best] {
                    best = i;
                }
            }
            (v[best], b * vol + best)
        })
        .unzip();
    let want_mean: Vec<f64> = (0..6)
        .map(|b| x[b * vol..(b + 1) * vol].iter().sum::<f64>() / vol as f64)
        .collect();
    for dtype in [DType::F64, DType::F32] {
        // f32: inputs rounded to 2^-24 relative and a 60-term mean: 1e-6.
        let tol = if dtype == DType::F64 { 1e-14 } else { 1e-6 };
        let xv = Var::from_tensor(
            &Tensor::from_slice(&x, &shape, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap();
        let wt = Tensor::from_slice(&w, (2, 3, 1, 1, 1), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let ymax = adaptive_max_pool3d_1(xv.as_tensor()).unwrap();
        let ymean = adaptive_avg_pool3d_1(xv.as_tensor()).unwrap();
        assert_eq!(ymax.dims(), &[2, 3, 1, 1, 1]);
        assert_eq!(ymean.dims(), &[2, 3, 1, 1, 1]);
        assert!(max_abs_diff(&flat(&ymax), &want_max) <= tol);
        assert!(max_abs_diff(&flat(&ymean), &want_mean) <= tol);
        let loss = ((&ymax * &wt).unwrap() + (&ymean * &wt).unwrap().affine(2.0, 0.0).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let dx = flat(loss.backward().unwrap().get(&xv).unwrap());
        let mut want_dx: Vec<f64> = (0..x.len())
            .map(|i| 2.0 * w[i / vol] / vol as f64)
            .collect();
        for (b, &i) in arg.iter().enumerate() {
            want_dx[i] += w[b];
        }
        assert!(max_abs_diff(&dx, &want_dx) <= tol);
    }
}

#[test]
fn non_contiguous_inputs_are_pooled_like_contiguous_ones() {
    let x = Tensor::from_vec(values(40, 2 * 3 * 5 * 6 * 7), (2, 5, 6, 7, 3), &Device::Cpu)
        .unwrap()
        .permute((0, 4, 1, 2, 3))
        .unwrap();
    assert!(!x.is_contiguous());
    let xc = x.contiguous().unwrap();
    for pool in [max_pool3d as Pool, avg_pool3d] {
        let a = flat(&pool(&x, [3; 3], [2; 3], [1; 3]).unwrap());
        let b = flat(&pool(&xc, [3; 3], [2; 3], [1; 3]).unwrap());
        assert_eq!(a, b);
    }
    assert_eq!(
        flat(&adaptive_max_pool3d_1(&x).unwrap()),
        flat(&adaptive_max_pool3d_1(&xc).unwrap())
    );
}

fn input_error(r: yaware_backbones::Result<Tensor>, op: &str, needle: &str) {
    match r {
        Err(Error::Input { op: o, problem }) => {
            assert_eq!(o, op);
            assert!(problem.contains(needle), "{problem:?} lacks {needle:?}");
        }
        other => panic!("expected an input error from {op}, got {other:?}"),
    }
}

fn param_error(r: yaware_backbones::Result<Tensor>, name: &str, value: &str) {
    match r {
        Err(Error::InvalidParam {
            name: n, value: v, ..
        }) => {
            assert_eq!(n, name);
            assert_eq!(v, value);
        }
        other => panic!("expected an invalid `{name}`, got {other:?}"),
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let dev = Device::Cpu;
    let x4 = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap();
    let xi = Tensor::zeros((1, 1, 4, 4, 4), DType::U32, &dev).unwrap();
    let x = Tensor::zeros((1, 1, 4, 3, 2), DType::F32, &dev).unwrap();
    for (pool, op) in [
        (max_pool3d as Pool, "max_pool3d"),
        (avg_pool3d, "avg_pool3d"),
    ] {
        input_error(pool(&x4, [2; 3], [2; 3], [0; 3]), op, "[2, 3, 4, 4]");
        input_error(pool(&xi, [2; 3], [2; 3], [0; 3]), op, "U32");
        param_error(
            pool(&x, [2, 0, 1], [1; 3], [0; 3]),
            "kernel_size",
            "[2, 0, 1]",
        );
        param_error(pool(&x, [2; 3], [1, 1, 0], [0; 3]), "stride", "[1, 1, 0]");
        param_error(
            pool(&x, [3, 3, 2], [1; 3], [1, 1, 2]),
            "padding",
            "[1, 1, 2]",
        );
        // W = 2 with padding 1 gives 4 < kernel 5.
        input_error(pool(&x, [1, 1, 5], [1; 3], [0, 0, 1]), op, "too small");
        input_error(pool(&x, [5, 1, 1], [1; 3], [0; 3]), op, "[1, 1, 4, 3, 2]");
        // An empty volume, even with padding that would make room for the kernel.
        let empty = Tensor::zeros((1, 1, 4, 3, 0), DType::F32, &dev).unwrap();
        input_error(pool(&empty, [2; 3], [2; 3], [1; 3]), op, "empty volumes");
    }
    input_error(
        adaptive_max_pool3d_1(&x4),
        "adaptive_max_pool3d",
        "[2, 3, 4, 4]",
    );
    input_error(
        adaptive_avg_pool3d_1(&x4),
        "adaptive_avg_pool3d",
        "[2, 3, 4, 4]",
    );
    input_error(adaptive_max_pool3d_1(&xi), "adaptive_max_pool3d", "U32");
    input_error(adaptive_avg_pool3d_1(&xi), "adaptive_avg_pool3d", "U32");
    let empty = Tensor::zeros((1, 2, 3, 0, 2), DType::F32, &dev).unwrap();
    input_error(
        adaptive_max_pool3d_1(&empty),
        "adaptive_max_pool3d",
        "[1, 2, 3, 0, 2]",
    );
    input_error(
        adaptive_avg_pool3d_1(&empty),
        "adaptive_avg_pool3d",
        "[1, 2, 3, 0, 2]",
    );
}
