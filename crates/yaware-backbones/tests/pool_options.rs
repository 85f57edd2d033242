//! 3D pooling options (`dilation`, `ceil_mode`, `count_include_pad`) against naive f64 loops
//! written here from PyTorch's definitions, finite differences, PyTorch's output-size rule
//! for `ceil_mode` (the last window must start inside the volume or its left padding), empty
//! dilated windows, and the error paths.

use candle_core::{DType, Device, Tensor, Var};
use yaware_backbones::Error;
use yaware_backbones::ops::{
    Pool3dParams, avg_pool3d, avg_pool3d_with, max_pool3d, max_pool3d_with,
};

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

/// PyTorch's `pooling_output_shape`, from its definition.
fn torch_out(l: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> usize {
    let num =
        (l + 2 * p) as isize - (d * (k - 1)) as isize - 1 + if ceil { s as isize - 1 } else { 0 };
    let mut o = num.div_euclid(s as isize) + 1;
    if ceil && (o - 1) * s as isize >= (l + p) as isize {
        o -= 1;
    }
    o as usize
}

/// One naive output window: in-volume flat indices in (d, h, w) tap order, and the divisors
/// of average pooling (window clipped to the padded volume, and to the volume).
struct Window {
    taps: Vec<usize>,
    div_pad: usize,
    div_in: usize,
}

/// Every window of every (n, c) volume, in output order, and the output shape.
fn windows(shape: [usize; 5], p: &Pool3dParams) -> ([usize; 5], Vec<Window>) {
    let [n, c, d, h, w] = shape;
    let vol = [d, h, w];
    let out: [usize; 3] = std::array::from_fn(|a| {
        torch_out(
            vol[a],
            p.kernel[a],
            p.stride[a],
            p.padding[a],
            p.dilation[a],
            p.ceil_mode,
        )
    });
    // Per axis and output: (in-volume taps, clipped-to-padded length, clipped-to-volume length).
    let axis = |a: usize| -> Vec<(Vec<usize>, usize, usize)> {
        (0..out[a])
            .map(|o| {
                let start = (o * p.stride[a]) as isize - p.padding[a] as isize;
                let taps: Vec<usize> = (0..p.kernel[a])
                    .map(|j| start + (j * p.dilation[a]) as isize)
                    .filter(|&i| i >= 0 && i < vol[a] as isize)
                    .map(|i| i as usize)
                    .collect();
                let end = start + p.kernel[a] as isize;
                let pad_end = (vol[a] + p.padding[a]) as isize;
                let div_pad = (end.min(pad_end) - start) as usize;
                let div_in = (end.min(vol[a] as isize) - start.max(0)) as usize;
                (taps, div_pad, div_in)
            })
            .collect()
    };
    let (ad, ah, aw) = (axis(0), axis(1), axis(2));
    let mut all = Vec::new();
    for b in 0..n * c {
        for (td, pd, id) in &ad {
            for (th, ph, ih) in &ah {
                for (tw, pw, iw) in &aw {
                    let mut taps = Vec::new();
                    for &z in td {
                        for &y in th {
                            for &x in tw {
                                taps.push(((b * d + z) * h + y) * w + x);
                            }
                        }
                    }
                    all.push(Window {
                        taps,
                        div_pad: pd * ph * pw,
                        div_in: id * ih * iw,
                    });
                }
            }
        }
    }
    ([n, c, out[0], out[1], out[2]], all)
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
        .map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() })
        .fold(0.0, f64::max)
}

type PoolWith = fn(&Tensor, &Pool3dParams) -> yaware_backbones::Result<Tensor>;

/// Output and `d(Σ w·pool(x))/dx` from candle's autograd.
fn run(
    pool: PoolWith,
    x: &[f64],
    shape: [usize; 5],
    p: &Pool3dParams,
    dtype: DType,
    w: &[f64],
) -> (Tensor, Vec<f64>) {
    let xv = Var::from_tensor(
        &Tensor::from_slice(x, &shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let y = pool(xv.as_tensor(), p).unwrap();
    let wt = Tensor::from_slice(w, y.shape(), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let grads = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
    (y, flat(grads.get(&xv).unwrap()))
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Odd, non-cubic max-pooling cases with dilation and/or `ceil_mode`.
fn max_cases() -> Vec<([usize; 5], Pool3dParams)> {
    let p = Pool3dParams::new;
    vec![
        // ceil_mode adds a last, partial window on every axis (7 → 4, 6 → 3, 5 → 3 with k3 s2).
        (
            [2, 3, 7, 6, 5],
            p([3; 3], [2; 3], [0; 3]).with_ceil_mode(true),
        ),
        // The last-window rule: L = 5, k 2, s 2, p 1 gives 4 by the ceiling formula, but the
        // 4th window would start at 6 ≥ L + p = 6, so 3; likewise H = 3 gives 2, not 3; W = 4
        // keeps its 3rd window (start 4 < 5).
        (
            [1, 2, 5, 3, 4],
            p([2; 3], [2; 3], [1; 3]).with_ceil_mode(true),
        ),
        (
            [1, 2, 9, 8, 7],
            p([2, 3, 2], [3, 2, 2], [1, 1, 0]).with_ceil_mode(true),
        ),
        // Dilation, with and without padding and ceil_mode.
        (
            [2, 2, 9, 8, 7],
            p([3; 3], [2; 3], [1; 3]).with_dilation([2; 3]),
        ),
        (
            [1, 3, 7, 9, 6],
            p([2, 3, 2], [1, 2, 3], [1, 1, 0]).with_dilation([3, 2, 1]),
        ),
        (
            [1, 2, 8, 7, 6],
            p([3; 3], [2, 2, 3], [1, 0, 1])
                .with_dilation([2, 1, 2])
                .with_ceil_mode(true),
        ),
        // Dilated windows entirely in the padding: W = 2, k 2, p 1, d 3 taps −1 and 2.
        (
            [1, 1, 3, 4, 2],
            p([1, 2, 2], [1, 1, 1], [0, 1, 1]).with_dilation([1, 1, 3]),
        ),
    ]
}

#[test]
fn max_pool_options_match_naive_forward_and_backward() {
    for (ci, (shape, p)) in max_cases().into_iter().enumerate() {
        let x = values(10 + ci as u64, numel(&shape));
        let (oshape, wins) = windows(shape, &p);
        // PyTorch's rule: the first tap initialises the argmax with −∞, a later value replaces
        // it only if strictly greater (no NaN here). An empty window gives −∞, no gradient.
        let (want, arg): (Vec<f64>, Vec<Option<usize>>) = wins
            .iter()
            .map(|win| {
                let mut best = win.taps.first().copied();
                let mut max = f64::NEG_INFINITY;
                for &i in &win.taps {
                    if x[i] > max {
                        max = x[i];
                        best = Some(i);
                    }
                }
                (max, best)
            })
            .unzip();
        let w = values(100 + ci as u64, want.len());
        let mut want_dx = vec![0.0; x.len()];
        for (&i, &g) in arg.iter().zip(&w) {
            if let Some(i) = i {
                want_dx[i] += g;
            }
        }
        // f64 is exact (max and sums of the same numbers); f32 rounds the inputs (2^-24
        // relative) and sums at most 27 gradients per voxel: 1e-6 absolute on values ≤ 1.
        for (dtype, tol) in [(DType::F64, 0.0), (DType::F32, 1e-6)] {
            let (y, dx) = run(max_pool3d_with, &x, shape, &p, dtype, &w);
            assert_eq!(y.dims(), &oshape, "case {ci} {p:?}");
            assert!(max_abs_diff(&flat(&y), &want) <= tol, "case {ci} {dtype:?}");
            assert!(
                max_abs_diff(&dx, &want_dx) <= tol * 30.0,
                "case {ci} {dtype:?}"
            );
        }
    }
}

#[test]
fn ceil_mode_last_window_rule_and_empty_dilated_windows() {
    let x = Tensor::from_slice(&values(1, 125), (1, 1, 5, 5, 5), &Device::Cpu).unwrap();
    // k 2, s 2, p 1 on L = 5: floor 3; ceiling 4, but the 4th window would start in the
    // right padding (6 ≥ L + p), so 3 again.
    let p = Pool3dParams::new([2; 3], [2; 3], [1; 3]);
    assert_eq!(max_pool3d_with(&x, &p).unwrap().dims(), &[1, 1, 3, 3, 3]);
    assert_eq!(
        max_pool3d_with(&x, &p.with_ceil_mode(true)).unwrap().dims(),
        &[1, 1, 3, 3, 3]
    );
    // Without padding the ceiling adds a window (it starts at 4 < 5).
    let p = Pool3dParams::new([2; 3], [2; 3], [0; 3]).with_ceil_mode(true);
    assert_eq!(p.output_size("test", [5, 4, 3]).unwrap(), [3, 2, 2]);
    assert_eq!(
        avg_pool3d_with(&x, &p).unwrap().dims(),
        &[1, 1, 3, 3, 3],
        "avg pooling follows the same rule"
    );
    // ceil_mode admits a window larger than the padded volume (L = 2, k = 3, s = 2).
    let p = Pool3dParams::new([3; 3], [2; 3], [0; 3]).with_ceil_mode(true);
    assert_eq!(p.output_size("test", [2, 2, 2]).unwrap(), [1, 1, 1]);
    let x2 = Tensor::from_slice(
        &[1.0, 5.0, 2.0, 3.0, 0.0, 4.0, 1.0, 2.0],
        (1, 1, 2, 2, 2),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(flat(&max_pool3d_with(&x2, &p).unwrap()), [5.0]);
    assert_eq!(flat(&avg_pool3d_with(&x2, &p).unwrap()), [18.0 / 8.0]);
    // A dilated window with every tap in the padding: −∞, and no gradient anywhere for it.
    let xv = Var::from_tensor(&Tensor::ones((1, 1, 1, 1, 2), DType::F64, &Device::Cpu).unwrap())
        .unwrap();
    let p = Pool3dParams::new([1, 1, 2], [1; 3], [0, 0, 1]).with_dilation([1, 1, 3]);
    let y = max_pool3d_with(xv.as_tensor(), &p).unwrap();
    assert_eq!(flat(&y), [f64::NEG_INFINITY]);
    // (−∞ · 0 would be NaN: weight the output by 1 and check the gradient stays zero.)
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(flat(grads.get(&xv).unwrap()), [0.0, 0.0]);
}

/// Odd, non-cubic average-pooling cases with `ceil_mode` and/or `count_include_pad = false`.
fn avg_cases() -> Vec<([usize; 5], Pool3dParams)> {
    let p = Pool3dParams::new;
    vec![
        (
            [2, 3, 7, 6, 5],
            p([3; 3], [2; 3], [0; 3]).with_ceil_mode(true),
        ),
        // Last windows clipped by L + p (divisor < k) and windows in the padding.
        (
            [1, 2, 6, 7, 5],
            p([3; 3], [2; 3], [1; 3]).with_ceil_mode(true),
        ),
        (
            [1, 2, 7, 6, 5],
            p([3; 3], [2; 3], [1; 3]).with_count_include_pad(false),
        ),
        (
            [2, 1, 9, 8, 7],
            p([4, 3, 2], [3, 2, 2], [2, 1, 1])
                .with_ceil_mode(true)
                .with_count_include_pad(false),
        ),
        (
            [1, 2, 6, 9, 4],
            p([5, 4, 2], [2, 3, 1], [2, 2, 1]).with_ceil_mode(true),
        ),
    ]
}

#[test]
fn avg_pool_options_match_naive_forward_and_backward() {
    for (ci, (shape, p)) in avg_cases().into_iter().enumerate() {
        let x = values(20 + ci as u64, numel(&shape));
        let (oshape, wins) = windows(shape, &p);
        let div = |win: &Window| {
            (if p.count_include_pad {
                win.div_pad
            } else {
                win.div_in
            }) as f64
        };
        let want: Vec<f64> = wins
            .iter()
            .map(|win| win.taps.iter().map(|&i| x[i]).sum::<f64>() / div(win))
            .collect();
        let w = values(200 + ci as u64, want.len());
        let mut want_dx = vec![0.0; x.len()];
        for (win, &g) in wins.iter().zip(&w) {
            for &i in &win.taps {
                want_dx[i] += g / div(win);
            }
        }
        // The divisors differ from k³ somewhere in every case (else the case tests nothing new).
        let k3 = numel(&p.kernel) as f64;
        assert!(wins.iter().any(|w| div(w) != k3), "case {ci}");
        // Sums of ≤ 40 terms of magnitude ≤ 1: 1e-12 in f64, 1e-5 in f32.
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let (y, dx) = run(avg_pool3d_with, &x, shape, &p, dtype, &w);
            assert_eq!(y.dims(), &oshape, "case {ci} {p:?}");
            assert!(max_abs_diff(&flat(&y), &want) <= tol, "case {ci} {dtype:?}");
            assert!(max_abs_diff(&dx, &want_dx) <= tol, "case {ci} {dtype:?}");
        }
    }
}

/// Central finite differences of `Σ w·pool(x)` in f64 against the autograd gradient (both
/// ops are piecewise linear and the inputs have no ties closer than `eps`: exact up to
/// rounding, ~1e-16 / 1e-6).
#[test]
fn option_gradients_match_finite_differences() {
    let cases: [(PoolWith, [usize; 5], Pool3dParams); 3] = [
        (
            max_pool3d_with,
            [1, 2, 5, 4, 5],
            Pool3dParams::new([2; 3], [2; 3], [1; 3])
                .with_dilation([2, 1, 2])
                .with_ceil_mode(true),
        ),
        (
            avg_pool3d_with,
            [1, 2, 5, 4, 5],
            Pool3dParams::new([3; 3], [2; 3], [1; 3]).with_ceil_mode(true),
        ),
        (
            avg_pool3d_with,
            [2, 1, 4, 5, 3],
            Pool3dParams::new([3, 2, 3], [2; 3], [1; 3])
                .with_ceil_mode(true)
                .with_count_include_pad(false),
        ),
    ];
    for (ci, (pool, shape, p)) in cases.into_iter().enumerate() {
        let x = values(30 + ci as u64, numel(&shape));
        let tensor = |x: &[f64]| Tensor::from_slice(x, &shape, &Device::Cpu).unwrap();
        let y0 = pool(&tensor(&x), &p).unwrap();
        let w = values(40 + ci as u64, y0.elem_count());
        let wt = Tensor::from_slice(&w, y0.shape(), &Device::Cpu).unwrap();
        let loss = |x: &[f64]| -> f64 {
            (pool(&tensor(x), &p).unwrap() * &wt)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let (_, dx) = run(pool, &x, shape, &p, DType::F64, &w);
        let eps = 1e-6;
        for i in 0..x.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += eps;
            xm[i] -= eps;
            let fd = (loss(&xp) - loss(&xm)) / (2.0 * eps);
            assert!(
                (fd - dx[i]).abs() < 1e-8,
                "case {ci} at {i}: {fd} vs {}",
                dx[i]
            );
        }
    }
}

/// The plain functions are the `_with` ones at the default options.
#[test]
fn defaults_equal_the_plain_functions() {
    let shape = [2, 2, 7, 6, 5];
    let x = Tensor::from_slice(&values(5, numel(&shape)), &shape, &Device::Cpu).unwrap();
    let p = Pool3dParams::new([3; 3], [2; 3], [1; 3]);
    assert_eq!(
        flat(&max_pool3d(&x, p.kernel, p.stride, p.padding).unwrap()),
        flat(&max_pool3d_with(&x, &p).unwrap())
    );
    assert_eq!(
        flat(&avg_pool3d(&x, p.kernel, p.stride, p.padding).unwrap()),
        flat(&avg_pool3d_with(&x, &p).unwrap())
    );
}

#[test]
fn option_errors_are_typed() {
    let x = Tensor::zeros((1, 1, 4, 3, 2), DType::F32, &Device::Cpu).unwrap();
    let p = Pool3dParams::new([2; 3], [1; 3], [0; 3]);
    // Zero dilation.
    match max_pool3d_with(&x, &p.with_dilation([1, 0, 1])) {
        Err(Error::InvalidParam { name, value, .. }) => {
            assert_eq!((name, value.as_str()), ("dilation", "[1, 0, 1]"));
        }
        other => panic!("{other:?}"),
    }
    // Average pooling has no dilation.
    match avg_pool3d_with(&x, &p.with_dilation([2, 1, 1])) {
        Err(Error::InvalidParam { name, value, .. }) => {
            assert_eq!((name, value.as_str()), ("dilation", "[2, 1, 1]"));
        }
        other => panic!("{other:?}"),
    }
    // A dilated window longer than the padded volume (W = 2: span 2·(2 − 1) + 1 = 3 > 2).
    match max_pool3d_with(&x, &p.with_dilation([1, 1, 2])) {
        Err(Error::Input { op, problem }) => {
            assert_eq!(op, "max_pool3d");
            assert!(problem.contains("[1, 1, 4, 3, 2]"), "{problem}");
            assert!(problem.contains("too small"), "{problem}");
        }
        other => panic!("{other:?}"),
    }
    // ceil_mode does not rescue a window that cannot fit (W = 2, k = 5, s = 1).
    let big = Pool3dParams::new([1, 1, 5], [1; 3], [0; 3]).with_ceil_mode(true);
    for r in [max_pool3d_with(&x, &big), avg_pool3d_with(&x, &big)] {
        assert!(matches!(r, Err(Error::Input { .. })), "{r:?}");
    }
    // The padding rule is checked against the undilated kernel, as in PyTorch.
    let pad = Pool3dParams::new([2; 3], [1; 3], [0, 0, 2]).with_dilation([1, 1, 3]);
    match max_pool3d_with(&x, &pad) {
        Err(Error::InvalidParam { name, value, .. }) => {
            assert_eq!((name, value.as_str()), ("padding", "[0, 0, 2]"));
        }
        other => panic!("{other:?}"),
    }
}
