//! `conv3d` against a naive direct convolution (forward and both gradients), finite
//! differences, the `input_grad` switch, non-contiguous inputs, thread counts and every error
//! path.
//!
//! Tolerances: f64 results must match the naive f64 loops to 1e-12 relative to the largest
//! reference magnitude (both sum the same ≤ 1000 products, only in a different order, so the
//! difference is a few ulps); f32 results to 1e-5 (f32 rounding of sums of ≤ 350 products of
//! O(1) values); finite differences to 1e-6 relative (the loss is bilinear, so central
//! differences are exact up to rounding: ~1e-16/1e-6 = 1e-10).

use candle_core::{DType, Device, Tensor, Var};
use yaware_backbones::Error;
use yaware_backbones::ops::{Conv3dParams, conv3d};

/// Deterministic values in [-1, 1) (SplitMix64).
fn values(seed: u64, len: usize) -> Vec<f64> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Case {
    x: [usize; 5],
    c_out: usize,
    kernel: [usize; 3],
    params: Conv3dParams,
}

impl Case {
    fn new(x: [usize; 5], c_out: usize, k: usize, stride: usize, padding: usize) -> Self {
        Self {
            x,
            c_out,
            kernel: [k; 3],
            params: Conv3dParams::new(stride, padding),
        }
    }

    fn w_shape(&self) -> [usize; 5] {
        let [kd, kh, kw] = self.kernel;
        [self.c_out, self.x[1], kd, kh, kw]
    }

    fn out_spatial(&self) -> [usize; 3] {
        let p = &self.params;
        std::array::from_fn(|a| {
            (self.x[2 + a] + 2 * p.padding[a] - p.dilation[a] * (self.kernel[a] - 1) - 1)
                / p.stride[a]
                + 1
        })
    }

    fn y_shape(&self) -> [usize; 5] {
        let [od, oh, ow] = self.out_spatial();
        [self.x[0], self.c_out, od, oh, ow]
    }
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// Visits every (output position, kernel tap) pair whose input position is inside the volume,
/// with the flat indices of x, w and y.
fn for_each_tap(case: &Case, mut f: impl FnMut(usize, usize, usize)) {
    let [n, c_in, d, h, w] = case.x;
    let [kd, kh, kw] = case.kernel;
    let [od, oh, ow] = case.out_spatial();
    let Conv3dParams {
        stride: s,
        padding: p,
        dilation: dl,
        ..
    } = case.params;
    for b in 0..n {
        for co in 0..case.c_out {
            for z in 0..od {
                for y in 0..oh {
                    for x in 0..ow {
                        let yi = (((b * case.c_out + co) * od + z) * oh + y) * ow + x;
                        for ci in 0..c_in {
                            for i in 0..kd {
                                let iz = (z * s[0] + i * dl[0]) as isize - p[0] as isize;
                                if iz < 0 || iz >= d as isize {
                                    continue;
                                }
                                for j in 0..kh {
                                    let iy = (y * s[1] + j * dl[1]) as isize - p[1] as isize;
                                    if iy < 0 || iy >= h as isize {
                                        continue;
                                    }
                                    for k in 0..kw {
                                        let ix = (x * s[2] + k * dl[2]) as isize - p[2] as isize;
                                        if ix < 0 || ix >= w as isize {
                                            continue;
                                        }
                                        let (iz, iy, ix) = (iz as usize, iy as usize, ix as usize);
                                        let xi = (((b * c_in + ci) * d + iz) * h + iy) * w + ix;
                                        let wi = (((co * c_in + ci) * kd + i) * kh + j) * kw + k;
                                        f(xi, wi, yi);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Naive forward, input gradient and weight gradient for `dy`.
fn naive(case: &Case, x: &[f64], w: &[f64], dy: &[f64]) -> [Vec<f64>; 3] {
    let mut y = vec![0.0; numel(&case.y_shape())];
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    for_each_tap(case, |xi, wi, yi| {
        y[yi] += x[xi] * w[wi];
        dx[xi] += w[wi] * dy[yi];
        dw[wi] += x[xi] * dy[yi];
    });
    [y, dx, dw]
}

/// max |got − want| / max(max |want|, tiny).
fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-300_f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0.0_f64, |m, (g, w)| m.max((g - w).abs()))
        / scale
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

struct Computed {
    y: Vec<f64>,
    dx: Option<Vec<f64>>,
    dw: Vec<f64>,
}

/// Runs conv3d with autograd on `loss = Σ y · dy` and returns y, dx and dw.
fn run(case: &Case, dtype: DType, x: &[f64], w: &[f64], dy: &[f64]) -> Computed {
    let dev = Device::Cpu;
    let xt = Var::from_tensor(
        &Tensor::from_slice(x, &case.x[..], &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let wt = Var::from_tensor(
        &Tensor::from_slice(w, &case.w_shape()[..], &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let g = Tensor::from_slice(dy, &case.y_shape()[..], &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let y = conv3d(&xt, &wt, &case.params).unwrap();
    assert_eq!(y.dims(), &case.y_shape()[..], "{case:?}");
    assert_eq!(y.dtype(), dtype);
    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    Computed {
        y: to_f64(&y),
        dx: grads.get(&xt).map(to_f64),
        dw: to_f64(grads.get(&wt).expect("weight gradient")),
    }
}

fn inputs(case: &Case, seed: u64) -> [Vec<f64>; 3] {
    [
        values(seed, numel(&case.x)),
        values(seed + 1, numel(&case.w_shape())),
        values(seed + 2, numel(&case.y_shape())),
    ]
}

/// Rounds to f32 so that f32 runs and the f64 reference see the same inputs.
fn round_f32(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&a| a as f32 as f64).collect()
}

fn check_case(case: &Case, seed: u64) {
    let [x, w, dy] = inputs(case, seed);
    let [y0, dx0, dw0] = naive(case, &x, &w, &dy);
    let got = run(case, DType::F64, &x, &w, &dy);
    let tol = 1e-12;
    assert!(rel_err(&got.y, &y0) < tol, "f64 forward {case:?}");
    let dx = got.dx.expect("input gradient");
    assert!(rel_err(&dx, &dx0) < tol, "f64 dx {case:?}");
    assert!(rel_err(&got.dw, &dw0) < tol, "f64 dw {case:?}");

    let (x, w, dy) = (round_f32(&x), round_f32(&w), round_f32(&dy));
    let [y0, dx0, dw0] = naive(case, &x, &w, &dy);
    let got = run(case, DType::F32, &x, &w, &dy);
    let tol = 1e-5;
    let e = rel_err(&got.y, &y0);
    assert!(e < tol, "f32 forward {case:?}: {e}");
    let e = rel_err(&got.dx.expect("input gradient"), &dx0);
    assert!(e < tol, "f32 dx {case:?}: {e}");
    let e = rel_err(&got.dw, &dw0);
    assert!(e < tol, "f32 dw {case:?}: {e}");
}

fn cases() -> Vec<Case> {
    vec![
        Case::new([2, 3, 7, 6, 5], 4, 3, 1, 1),
        Case::new([2, 3, 9, 8, 7], 5, 3, 2, 1),
        // 1×1×1, stride 1 (pointwise path) and stride 2.
        Case::new([2, 3, 5, 4, 3], 4, 1, 1, 0),
        Case::new([2, 3, 7, 6, 5], 2, 1, 2, 0),
        // 1×1×1 with padding (not the pointwise path).
        Case::new([1, 2, 4, 3, 5], 3, 1, 1, 1),
        Case {
            params: Conv3dParams::new(1, 2).with_dilation([2; 3]),
            ..Case::new([1, 2, 7, 6, 8], 3, 3, 1, 2)
        },
        Case::new([2, 1, 12, 11, 10], 4, 7, 2, 3),
        // Anisotropic kernel with per-axis stride, padding and dilation.
        Case {
            x: [2, 3, 8, 7, 9],
            c_out: 5,
            kernel: [3, 1, 2],
            params: Conv3dParams::default()
                .with_stride([1, 2, 3])
                .with_padding([1, 0, 2])
                .with_dilation([2, 1, 1]),
        },
        // Stride 1 without padding (the transposed input gradient pads by k − 1).
        Case::new([2, 2, 6, 5, 7], 3, 3, 1, 0),
        // W smaller than the stride along W, with padding.
        Case {
            params: Conv3dParams::new(1, 1).with_stride([1, 2, 3]),
            ..Case::new([1, 2, 5, 4, 2], 3, 3, 1, 1)
        },
        // Output rows longer than a tile (runs cut at tile boundaries).
        Case {
            x: [1, 2, 1, 2, 700],
            c_out: 2,
            kernel: [1, 1, 3],
            params: Conv3dParams::default().with_padding([0, 0, 1]),
        },
        // Many tiles, some spanning two samples.
        Case::new([3, 2, 9, 9, 9], 3, 3, 1, 1),
        Case::new([3, 4, 9, 9, 9], 3, 1, 1, 0),
        // Tiny spatial size: one tile, parallel gemm; padding larger than the volume.
        Case::new([4, 8, 2, 2, 1], 16, 3, 1, 1),
        Case::new([3, 4, 1, 1, 1], 6, 3, 1, 2),
        // Kernels that reach past the volume on every side, where some taps only ever meet
        // padding: a 1³ volume with k3 p1 (the last ResNet layer on 32³ inputs), a 2³ volume
        // with k3 s2 p1, one such axis among ordinary ones, a dilated kernel.
        Case::new([2, 4, 1, 1, 1], 5, 3, 1, 1),
        Case::new([2, 3, 2, 2, 2], 4, 3, 2, 1),
        Case::new([1, 2, 1, 4, 3], 3, 3, 1, 1),
        Case {
            params: Conv3dParams::new(1, 2).with_dilation([2, 2, 2]),
            ..Case::new([2, 2, 1, 1, 1], 3, 3, 1, 2)
        },
        // Only the middle tap meets the volume, but cutting the kernel to it would need a
        // negative padding (dilation 2 > padding 1): the full kernel runs.
        Case {
            params: Conv3dParams::new(1, 1).with_dilation([2, 2, 2]),
            ..Case::new([1, 2, 3, 3, 3], 3, 3, 1, 1)
        },
        // Tiny volumes with enough output channels for the gemm rows to be split over the
        // threads: one live tap (1³), and every tap live (2³).
        Case::new([2, 6, 1, 1, 1], 40, 3, 1, 1),
        Case::new([2, 3, 2, 2, 2], 40, 3, 1, 1),
        // A kernel cut on two axes of three, with stride 2.
        Case::new([2, 3, 1, 1, 4], 36, 3, 2, 1),
        // Enough output positions (≥ 480) and channels for the f32 direct forward kernel,
        // which skips the products with padding at the borders: cubic, odd non-cubic with
        // short rows, and stride 2.
        Case::new([2, 5, 8, 8, 8], 20, 3, 1, 1),
        Case::new([3, 3, 7, 9, 6], 17, 3, 1, 1),
        Case::new([2, 2, 13, 12, 15], 16, 3, 2, 1),
    ]
}

#[test]
fn matches_naive_forward_and_gradients() {
    for (i, case) in cases().iter().enumerate() {
        check_case(case, 100 * i as u64);
    }
}

#[test]
fn random_small_geometries_match_naive() {
    // Tiny volumes with every combination of kernel reach, stride, padding and dilation drawn
    // at random: the paths for small problems (kernel taps cut when they only read padding,
    // gemm rows split over the threads, one tile) against the naive loops.
    let mut state = 0x5EED_u64;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % n
    };
    let mut checked = 0;
    while checked < 60 {
        let x = [
            1 + next(3),
            1 + next(4),
            1 + next(4),
            1 + next(4),
            1 + next(4),
        ];
        let kernel = [1 + next(3), 1 + next(3), 1 + next(3)];
        let params = Conv3dParams::default()
            .with_stride([1 + next(2), 1 + next(2), 1 + next(2)])
            .with_padding([next(3), next(3), next(3)])
            .with_dilation([1 + next(2), 1 + next(2), 1 + next(2)]);
        let case = Case {
            x,
            c_out: 1 + next(40),
            kernel,
            params,
        };
        // Skip draws whose dilated kernel does not fit the padded volume.
        let fits =
            (0..3).all(|a| params.dilation[a] * (kernel[a] - 1) < x[2 + a] + 2 * params.padding[a]);
        if !fits {
            continue;
        }
        check_case(&case, 1000 + checked);
        checked += 1;
    }
}

#[test]
fn matches_naive_with_one_and_three_threads() {
    // The tiling depends on the thread count (groups of tiles, round sizes, parallel gemm).
    let picks = [0, 1, 3, 7, 10, 11, 12, 13, 15, 19, 20, 21, 22];
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            for &i in &picks {
                check_case(&cases()[i], 7 + i as u64);
            }
        });
    }
}

#[test]
fn finite_differences() {
    let case = Case {
        x: [1, 2, 4, 3, 3],
        c_out: 2,
        kernel: [2, 3, 2],
        params: Conv3dParams::default()
            .with_stride([1, 2, 1])
            .with_padding([1, 1, 0])
            .with_dilation([1, 1, 2]),
    };
    let [x, w, dy] = inputs(&case, 42);
    let got = run(&case, DType::F64, &x, &w, &dy);
    let loss = |x: &[f64], w: &[f64]| -> f64 {
        let dev = Device::Cpu;
        let xt = Tensor::from_slice(x, &case.x[..], &dev).unwrap();
        let wt = Tensor::from_slice(w, &case.w_shape()[..], &dev).unwrap();
        let y = conv3d(&xt, &wt, &case.params)
            .unwrap()
            .flatten_all()
            .unwrap();
        let y: Vec<f64> = y.to_vec1().unwrap();
        y.iter().zip(&dy).map(|(a, b)| a * b).sum()
    };
    let eps = 1e-6;
    let fd = |which: usize| -> Vec<f64> {
        let base = if which == 0 { &x } else { &w };
        (0..base.len())
            .map(|i| {
                let (mut plus, mut minus) = (base.clone(), base.clone());
                plus[i] += eps;
                minus[i] -= eps;
                let (lp, lm) = if which == 0 {
                    (loss(&plus, &w), loss(&minus, &w))
                } else {
                    (loss(&x, &plus), loss(&x, &minus))
                };
                (lp - lm) / (2.0 * eps)
            })
            .collect()
    };
    let e = rel_err(&got.dx.unwrap(), &fd(0));
    assert!(e < 1e-6, "dx vs finite differences: {e}");
    let e = rel_err(&got.dw, &fd(1));
    assert!(e < 1e-6, "dw vs finite differences: {e}");
}

#[test]
fn taps_that_only_read_padding_are_cut() {
    // A 3³ kernel with padding 1 on 1³ volumes: only the middle tap (13) meets the input. A
    // NaN weight at another tap is never multiplied (PyTorch would give NaN, see PARITY), and
    // every cut tap gets an exact zero gradient.
    let dev = Device::Cpu;
    let (n, c_in, c_out) = (2, 3, 4);
    let mut wv = values(5, c_out * c_in * 27);
    wv[0] = f64::NAN;
    let xv = values(6, n * c_in);
    let x = Tensor::from_vec(xv.clone(), (n, c_in, 1, 1, 1), &dev).unwrap();
    let w = Var::from_tensor(&Tensor::from_vec(wv.clone(), (c_out, c_in, 3, 3, 3), &dev).unwrap())
        .unwrap();
    let y = conv3d(&x, w.as_tensor(), &Conv3dParams::new(1, 1)).unwrap();
    let got = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for b in 0..n {
        for co in 0..c_out {
            let want: f64 = (0..c_in)
                .map(|ci| wv[(co * c_in + ci) * 27 + 13] * xv[b * c_in + ci])
                .sum();
            let v = got[b * c_out + co];
            assert!(v.is_finite() && (v - want).abs() <= 1e-12, "{v} vs {want}");
        }
    }
    let grads = y.sum_all().unwrap().backward().unwrap();
    let dw = grads
        .get(&w)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>();
    for (i, g) in dw.unwrap().into_iter().enumerate() {
        if i % 27 == 13 {
            assert!(g != 0.0, "live tap {i} has no gradient");
        } else {
            assert_eq!(g, 0.0, "cut tap {i}");
        }
    }
}

#[test]
fn input_grad_false_skips_only_the_input_gradient() {
    let case = Case::new([2, 1, 12, 11, 10], 4, 7, 2, 3);
    let [x, w, dy] = inputs(&case, 5);
    let with = run(&case, DType::F64, &x, &w, &dy);
    let off = Case {
        params: case.params.with_input_grad(false),
        ..case
    };
    let without = run(&off, DType::F64, &x, &w, &dy);
    assert!(with.dx.is_some());
    assert!(
        without.dx.is_none(),
        "no input gradient when input_grad is false"
    );
    assert_eq!(with.y, without.y);
    assert_eq!(with.dw, without.dw);
}

#[test]
fn untracked_input_still_gives_the_weight_gradient() {
    let case = Case::new([2, 3, 7, 6, 5], 4, 3, 2, 1);
    let [x, w, dy] = inputs(&case, 9);
    let [_, _, dw0] = naive(&case, &x, &w, &dy);
    let dev = Device::Cpu;
    let xt = Tensor::from_slice(&x, &case.x[..], &dev).unwrap();
    let wt = Var::from_tensor(&Tensor::from_slice(&w, &case.w_shape()[..], &dev).unwrap()).unwrap();
    let g = Tensor::from_slice(&dy, &case.y_shape()[..], &dev).unwrap();
    let y = conv3d(&xt, &wt, &case.params).unwrap();
    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&xt).is_none());
    assert!(rel_err(&to_f64(grads.get(&wt).unwrap()), &dw0) < 1e-12);
}

#[test]
fn non_contiguous_inputs() {
    let case = Case {
        x: [2, 3, 6, 5, 7],
        c_out: 4,
        kernel: [3, 2, 3],
        params: Conv3dParams::default()
            .with_stride([2, 1, 2])
            .with_padding([1, 1, 1]),
    };
    let [x, w, dy] = inputs(&case, 11);
    let [y0, dx0, dw0] = naive(&case, &x, &w, &dy);
    let dev = Device::Cpu;
    let [n, c, d, h, wd] = case.x;
    // x lives in a wider buffer (W + 3) and is narrowed: non-contiguous view.
    let wide: Vec<f64> = (0..n * c * d * h)
        .flat_map(|r| {
            let mut row = vec![9.0; wd + 3];
            row[2..2 + wd].copy_from_slice(&x[r * wd..(r + 1) * wd]);
            row
        })
        .collect();
    let x_var =
        Var::from_tensor(&Tensor::from_vec(wide, (n, c, d, h, wd + 3), &dev).unwrap()).unwrap();
    let xv = x_var.narrow(4, 2, wd).unwrap();
    assert!(!xv.is_contiguous());
    // w stored as (C_out, C_in, kW, kH, kD) and transposed.
    let [co, ci, kd, kh, kw] = case.w_shape();
    let mut w_t = vec![0.0; w.len()];
    for o in 0..co * ci {
        for i in 0..kd {
            for j in 0..kh {
                for k in 0..kw {
                    w_t[((o * kw + k) * kh + j) * kd + i] = w[((o * kd + i) * kh + j) * kw + k];
                }
            }
        }
    }
    let w_var =
        Var::from_tensor(&Tensor::from_vec(w_t, (co, ci, kw, kh, kd), &dev).unwrap()).unwrap();
    let wv = w_var.transpose(2, 4).unwrap();
    assert!(!wv.is_contiguous());
    let g = Tensor::from_slice(&dy, &case.y_shape()[..], &dev).unwrap();
    let y = conv3d(&xv, &wv, &case.params).unwrap();
    assert!(rel_err(&to_f64(&y), &y0) < 1e-12);
    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let gx = grads.get(&x_var).unwrap();
    assert!(rel_err(&to_f64(&gx.narrow(4, 2, wd).unwrap()), &dx0) < 1e-12);
    let border = to_f64(&gx.narrow(4, 0, 2).unwrap());
    assert!(border.iter().all(|&v| v == 0.0));
    let gw = grads.get(&w_var).unwrap().transpose(2, 4).unwrap();
    assert!(rel_err(&to_f64(&gw), &dw0) < 1e-12);
}

#[test]
fn empty_batch() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((0, 2, 5, 5, 5), DType::F32, &dev).unwrap();
    let w = Tensor::ones((3, 2, 3, 3, 3), DType::F32, &dev).unwrap();
    let y = conv3d(&x, &w, &Conv3dParams::new(2, 1)).unwrap();
    assert_eq!(y.dims(), &[0, 3, 3, 3, 3]);
}

fn conv_err(x: &[usize], w: &[usize], xdt: DType, wdt: DType, params: Conv3dParams) -> Error {
    let dev = Device::Cpu;
    let x = Tensor::zeros(x, xdt, &dev).unwrap();
    let w = Tensor::zeros(w, wdt, &dev).unwrap();
    conv3d(&x, &w, &params).expect_err("conv3d should fail")
}

fn assert_input_err(e: Error, needles: &[&str]) {
    match &e {
        Error::Input { op, problem } => {
            assert_eq!(*op, "conv3d");
            for n in needles {
                assert!(problem.contains(n), "{problem:?} should mention {n:?}");
            }
        }
        other => panic!("expected Error::Input, got {other:?}"),
    }
}

fn assert_param_err(e: Error, want_name: &str, want_value: &str) {
    match &e {
        Error::InvalidParam { name, value, .. } => {
            assert_eq!(*name, want_name);
            assert_eq!(value, want_value);
        }
        other => panic!("expected Error::InvalidParam, got {other:?}"),
    }
}

#[test]
fn errors() {
    let f32_ = DType::F32;
    let p = Conv3dParams::new(1, 1);
    let x = [1, 2, 5, 5, 5];
    let w = [3, 2, 3, 3, 3];
    // Ranks.
    assert_input_err(
        conv_err(&[2, 5, 5, 5], &w, f32_, f32_, p),
        &["[2, 5, 5, 5]"],
    );
    assert_input_err(
        conv_err(&x, &[3, 2, 3, 3], f32_, f32_, p),
        &["[3, 2, 3, 3]"],
    );
    // Dtypes.
    assert_input_err(conv_err(&x, &w, DType::F16, f32_, p), &["F16"]);
    assert_input_err(conv_err(&x, &w, f32_, DType::BF16, p), &["BF16"]);
    assert_input_err(conv_err(&x, &w, DType::U32, DType::U32, p), &["U32"]);
    assert_input_err(conv_err(&x, &w, f32_, DType::F64, p), &["F32", "F64"]);
    // Channels.
    assert_input_err(
        conv_err(&x, &[3, 4, 3, 3, 3], f32_, f32_, p),
        &["2 channels", "4"],
    );
    assert_input_err(
        conv_err(&x, &[0, 2, 3, 3, 3], f32_, f32_, p),
        &["[0, 2, 3, 3, 3]"],
    );
    // Kernel sizes: zero, and too large for the padded input.
    assert_param_err(
        conv_err(&x, &[3, 2, 3, 0, 3], f32_, f32_, p),
        "kernel_size",
        "[3, 0, 3]",
    );
    assert_input_err(
        conv_err(&[1, 2, 5, 2, 5], &[3, 2, 3, 5, 3], f32_, f32_, p),
        &["[5, 2, 5]", "[3, 5, 3]", "4 < 5"],
    );
    let dilated = Conv3dParams::new(1, 0).with_dilation([1, 1, 3]);
    assert_input_err(
        conv_err(&x, &w, f32_, f32_, dilated),
        &["[1, 1, 3]", "5 < 7"],
    );
    // Zero stride and dilation.
    assert_param_err(
        conv_err(&x, &w, f32_, f32_, p.with_stride([1, 0, 2])),
        "stride",
        "[1, 0, 2]",
    );
    assert_param_err(
        conv_err(&x, &w, f32_, f32_, p.with_dilation([0, 1, 1])),
        "dilation",
        "[0, 1, 1]",
    );
    // The size helper reports the same errors.
    assert!(p.output_size([5, 5, 5], [3, 3, 3]).is_ok());
    assert_eq!(
        Conv3dParams::new(2, 3)
            .output_size([12, 11, 10], [7, 7, 7])
            .unwrap(),
        [6, 6, 5]
    );
}
