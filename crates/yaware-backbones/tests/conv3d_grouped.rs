//! Grouped `conv3d` (`groups > 1`) against a naive direct grouped convolution in f64 (forward
//! and both gradients), central finite differences, the `input_grad` switch and every
//! validation of the channel counts.
//!
//! Tolerances as in `conv3d.rs`: f64 to 1e-12 relative to the largest reference magnitude (the
//! same ≤ 300 products summed in another order: a few ulps); f32 to 1e-5 (f32 rounding of
//! those sums of O(1) values, inputs rounded to f32 for both sides); finite differences to
//! 1e-6 relative (the loss is bilinear, so central differences are exact up to rounding,
//! ~1e-16/1e-6 = 1e-10).

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
    /// Input shape `(N, C_in, D, H, W)`.
    x: [usize; 5],
    c_out: usize,
    kernel: [usize; 3],
    params: Conv3dParams,
}

impl Case {
    fn new(x: [usize; 5], c_out: usize, k: usize, params: Conv3dParams) -> Self {
        Self {
            x,
            c_out,
            kernel: [k; 3],
            params,
        }
    }

    fn w_shape(&self) -> [usize; 5] {
        let [kd, kh, kw] = self.kernel;
        [self.c_out, self.x[1] / self.params.groups, kd, kh, kw]
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

/// Naive grouped forward, input gradient and weight gradient for `dy`, straight from the
/// definition: output channel `co` of group `co / (C_out/G)` reads input channels
/// `g·C_in/G + ci` through `w[co, ci]`.
fn naive(case: &Case, x: &[f64], w: &[f64], dy: &[f64]) -> [Vec<f64>; 3] {
    let [n, c_in, d, h, wd] = case.x;
    let groups = case.params.groups;
    let (cig, cog) = (c_in / groups, case.c_out / groups);
    let [kd, kh, kw] = case.kernel;
    let [od, oh, ow] = case.out_spatial();
    let (s, p, dl) = (
        case.params.stride,
        case.params.padding,
        case.params.dilation,
    );
    let mut y = vec![0.0; numel(&case.y_shape())];
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let pos = |o: usize, k: usize, a: usize, len: usize| -> Option<usize> {
        let i = (o * s[a] + k * dl[a]) as isize - p[a] as isize;
        (0..len as isize).contains(&i).then_some(i as usize)
    };
    for b in 0..n {
        for co in 0..case.c_out {
            let g = co / cog;
            for z in 0..od {
                for yy in 0..oh {
                    for xx in 0..ow {
                        let yi = (((b * case.c_out + co) * od + z) * oh + yy) * ow + xx;
                        for ci in 0..cig {
                            let c = g * cig + ci;
                            for i in 0..kd {
                                let Some(iz) = pos(z, i, 0, d) else { continue };
                                for j in 0..kh {
                                    let Some(iy) = pos(yy, j, 1, h) else { continue };
                                    for k in 0..kw {
                                        let Some(ix) = pos(xx, k, 2, wd) else {
                                            continue;
                                        };
                                        let xi = (((b * c_in + c) * d + iz) * h + iy) * wd + ix;
                                        let wi = (((co * cig + ci) * kd + i) * kh + j) * kw + k;
                                        y[yi] += x[xi] * w[wi];
                                        dx[xi] += w[wi] * dy[yi];
                                        dw[wi] += x[xi] * dy[yi];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
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

fn tensor(v: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_slice(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Runs conv3d with autograd on `loss = Σ y · dy`: y, dx (if computed) and dw.
fn run(
    case: &Case,
    dtype: DType,
    x: &[f64],
    w: &[f64],
    dy: &[f64],
) -> (Vec<f64>, Option<Vec<f64>>, Vec<f64>) {
    let xt = Var::from_tensor(&tensor(x, &case.x, dtype)).unwrap();
    let wt = Var::from_tensor(&tensor(w, &case.w_shape(), dtype)).unwrap();
    let g = tensor(dy, &case.y_shape(), dtype);
    let y = conv3d(&xt, &wt, &case.params).unwrap();
    assert_eq!(y.dims(), &case.y_shape()[..], "{case:?}");
    assert_eq!(y.dtype(), dtype);
    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    (
        to_f64(&y),
        grads.get(&xt).map(to_f64),
        to_f64(grads.get(&wt).expect("weight gradient")),
    )
}

fn inputs(case: &Case, seed: u64) -> [Vec<f64>; 3] {
    [
        values(seed, numel(&case.x)),
        values(seed + 1, numel(&case.w_shape())),
        values(seed + 2, numel(&case.y_shape())),
    ]
}

fn round_f32(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&a| a as f32 as f64).collect()
}

fn cases() -> Vec<Case> {
    let p = |s: usize, pad: usize, g: usize| Conv3dParams::new(s, pad).with_groups(g);
    vec![
        // Two groups, odd non-cubic volume, stride 1 and padding.
        Case::new([2, 4, 5, 4, 3], 6, 3, p(1, 1, 2)),
        // Stride 2 on odd sizes, three groups of two input channels.
        Case::new([2, 6, 7, 6, 5], 3, 3, p(2, 1, 3)),
        // Depthwise (groups = C_in = C_out) and depthwise with channel multiplier 2.
        Case::new([1, 3, 5, 6, 4], 3, 3, p(1, 1, 3)),
        Case::new([2, 2, 5, 3, 4], 4, 3, p(2, 0, 2)),
        // 1×1×1, strided.
        Case::new([2, 4, 5, 4, 3], 4, 1, p(2, 0, 4)),
        // Anisotropic kernel with per-axis stride, padding and dilation.
        Case {
            x: [1, 4, 8, 7, 9],
            c_out: 4,
            kernel: [3, 1, 2],
            params: Conv3dParams::default()
                .with_stride([1, 2, 3])
                .with_padding([1, 0, 2])
                .with_dilation([2, 1, 1])
                .with_groups(2),
        },
    ]
}

#[test]
fn matches_naive_grouped_forward_and_gradients() {
    for (i, case) in cases().iter().enumerate() {
        let seed = 10 * i as u64;
        let [x, w, dy] = inputs(case, seed);
        let [y0, dx0, dw0] = naive(case, &x, &w, &dy);
        let (y, dx, dw) = run(case, DType::F64, &x, &w, &dy);
        let e = [
            rel_err(&y, &y0),
            rel_err(&dx.expect("input gradient"), &dx0),
            rel_err(&dw, &dw0),
        ];
        assert!(e.iter().all(|&e| e < 1e-12), "f64 {case:?}: {e:?}");

        let (x, w, dy) = (round_f32(&x), round_f32(&w), round_f32(&dy));
        let [y0, dx0, dw0] = naive(case, &x, &w, &dy);
        let (y, dx, dw) = run(case, DType::F32, &x, &w, &dy);
        let e = [
            rel_err(&y, &y0),
            rel_err(&dx.expect("input gradient"), &dx0),
            rel_err(&dw, &dw0),
        ];
        assert!(e.iter().all(|&e| e < 1e-5), "f32 {case:?}: {e:?}");
    }
}

/// A grouped convolution is not the ungrouped one: the naive oracle itself must see the
/// groups (guards against a test that would pass with groups ignored).
#[test]
fn groups_change_the_result() {
    let case = cases()[0];
    let [x, w, _] = inputs(&case, 3);
    let grouped = conv3d(
        &tensor(&x, &case.x, DType::F64),
        &tensor(&w, &case.w_shape(), DType::F64),
        &case.params,
    )
    .unwrap();
    // The same weights placed block-diagonally in an ungrouped weight give the same output.
    let [c_out, cig, kd, kh, kw] = case.w_shape();
    let groups = case.params.groups;
    let (c_in, cog, kv) = (cig * groups, c_out / groups, kd * kh * kw);
    let mut full = vec![0.0; c_out * c_in * kv];
    for co in 0..c_out {
        let g = co / cog;
        for ci in 0..cig {
            let src = (co * cig + ci) * kv;
            let dst = (co * c_in + g * cig + ci) * kv;
            full[dst..dst + kv].copy_from_slice(&w[src..src + kv]);
        }
    }
    let dense = conv3d(
        &tensor(&x, &case.x, DType::F64),
        &tensor(&full, &[c_out, c_in, kd, kh, kw], DType::F64),
        &Conv3dParams {
            groups: 1,
            ..case.params
        },
    )
    .unwrap();
    assert!(rel_err(&to_f64(&grouped), &to_f64(&dense)) < 1e-12);
    // And a full (non-block-diagonal) weight differs.
    let other = values(99, c_out * c_in * kv);
    let dense = conv3d(
        &tensor(&x, &case.x, DType::F64),
        &tensor(&other, &[c_out, c_in, kd, kh, kw], DType::F64),
        &Conv3dParams {
            groups: 1,
            ..case.params
        },
    )
    .unwrap();
    assert!(rel_err(&to_f64(&grouped), &to_f64(&dense)) > 1e-3);
}

#[test]
fn finite_differences() {
    let case = Case {
        x: [1, 4, 4, 3, 5],
        c_out: 2,
        kernel: [2, 3, 2],
        params: Conv3dParams::default()
            .with_stride([2, 1, 2])
            .with_padding([1, 1, 0])
            .with_groups(2),
    };
    let [x, w, dy] = inputs(&case, 42);
    let (_, dx, dw) = run(&case, DType::F64, &x, &w, &dy);
    let loss = |x: &[f64], w: &[f64]| -> f64 {
        let y = conv3d(
            &tensor(x, &case.x, DType::F64),
            &tensor(w, &case.w_shape(), DType::F64),
            &case.params,
        )
        .unwrap();
        to_f64(&y).iter().zip(&dy).map(|(a, b)| a * b).sum()
    };
    let eps = 1e-6;
    let fd = |base: &[f64], f: &dyn Fn(&[f64]) -> f64| -> Vec<f64> {
        (0..base.len())
            .map(|i| {
                let (mut plus, mut minus) = (base.to_vec(), base.to_vec());
                plus[i] += eps;
                minus[i] -= eps;
                (f(&plus) - f(&minus)) / (2.0 * eps)
            })
            .collect()
    };
    let fdx = fd(&x, &|v| loss(v, &w));
    let fdw = fd(&w, &|v| loss(&x, v));
    assert!(rel_err(&dx.expect("input gradient"), &fdx) < 1e-6);
    assert!(rel_err(&dw, &fdw) < 1e-6);
}

#[test]
fn input_gradient_can_be_skipped() {
    let case = cases()[1];
    let [x, w, dy] = inputs(&case, 5);
    let skip = Case {
        params: case.params.with_input_grad(false),
        ..case
    };
    let (y, dx, dw) = run(&skip, DType::F64, &x, &w, &dy);
    let [y0, _, dw0] = naive(&case, &x, &w, &dy);
    assert!(dx.is_none());
    assert!(rel_err(&y, &y0) < 1e-12);
    assert!(rel_err(&dw, &dw0) < 1e-12);
}

fn conv_err(x: &[usize], w: &[usize], groups: usize) -> Error {
    let dev = Device::Cpu;
    let xt = Tensor::zeros(x, DType::F32, &dev).unwrap();
    let wt = Tensor::zeros(w, DType::F32, &dev).unwrap();
    conv3d(&xt, &wt, &Conv3dParams::new(1, 1).with_groups(groups)).unwrap_err()
}

#[test]
fn channel_counts_must_divide_into_groups() {
    // Input channels not divisible by groups.
    match conv_err(&[1, 5, 4, 4, 4], &[4, 2, 3, 3, 3], 2) {
        Error::InvalidParam {
            name: "groups",
            value,
            reason,
        } => {
            assert_eq!(value, "2");
            assert!(reason.contains("input channels (5"), "{reason}");
        }
        e => panic!("unexpected {e:?}"),
    }
    // Output channels not divisible by groups.
    match conv_err(&[1, 6, 4, 4, 4], &[4, 2, 3, 3, 3], 3) {
        Error::InvalidParam {
            name: "groups",
            value,
            reason,
        } => {
            assert_eq!(value, "3");
            assert!(reason.contains("output channels (4"), "{reason}");
        }
        e => panic!("unexpected {e:?}"),
    }
    // Weight input channels ≠ C_in / groups.
    match conv_err(&[1, 6, 4, 4, 4], &[6, 3, 3, 3, 3], 3) {
        Error::Input {
            op: "conv3d",
            problem,
        } => {
            assert!(problem.contains("6 channels"), "{problem}");
            assert!(problem.contains("expects 9"), "{problem}");
        }
        e => panic!("unexpected {e:?}"),
    }
    // Zero groups.
    match conv_err(&[1, 6, 4, 4, 4], &[6, 3, 3, 3, 3], 0) {
        Error::InvalidParam {
            name: "groups",
            value,
            ..
        } => assert_eq!(value, "0"),
        e => panic!("unexpected {e:?}"),
    }
    // Wrong ranks.
    match conv_err(&[6, 4, 4, 4], &[6, 3, 3, 3, 3], 2) {
        Error::Input {
            op: "conv3d",
            problem,
        } => assert!(problem.contains("[6, 4, 4, 4]")),
        e => panic!("unexpected {e:?}"),
    }
    match conv_err(&[1, 6, 4, 4, 4], &[6, 3, 3, 3], 2) {
        Error::Input {
            op: "conv3d",
            problem,
        } => assert!(problem.contains("[6, 3, 3, 3]")),
        e => panic!("unexpected {e:?}"),
    }
    // The per-group checks still apply (a kernel larger than the padded input).
    match conv_err(&[1, 4, 1, 1, 1], &[2, 2, 5, 5, 5], 2) {
        Error::Input { op: "conv3d", .. } => {}
        e => panic!("unexpected {e:?}"),
    }
}
