//! Augmentations: shapes kept, probability 0 is the identity and 1 changes the data, every
//! error, statistics, and determinism whatever the number of threads.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use yaware_data::Error;
use yaware_data::augment::{
    Compose, CropOrPad, EraseValue, KeepShape, MultiViews, PadMode, PaperCrop, PaperCutout,
    PaperFlip, RandomApply, RandomErasing, RandomFlip, RandomGaussianBlur, RandomGaussianNoise,
    RandomResizedCrop, RandomRotation, Resize, RobustRescaling, SampleRng, Transform, Volume,
    ZNormalization, paper_all_tf, paper_cutout,
};

/// A deterministic, non-constant volume.
fn volume(shape: [usize; 4]) -> Volume {
    let n: usize = shape.iter().product();
    Volume::new(
        shape,
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 3.0)
            .collect(),
    )
    .unwrap()
}

fn rng(i: u64) -> SampleRng {
    SampleRng::new(42, 0, i, 0)
}

fn mean_std(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let v = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n;
    (m, v.sqrt())
}

fn transforms() -> Vec<(&'static str, Box<dyn Transform>)> {
    vec![
        (
            "flip",
            Box::new(RandomFlip::new(vec![0, 1, 2], 1.0).unwrap()),
        ),
        ("noise", Box::new(RandomGaussianNoise::default())),
        ("erasing", Box::new(RandomErasing::default())),
        ("znorm", Box::new(ZNormalization::default())),
        (
            "blur",
            Box::new(RandomGaussianBlur::new(&[0.5, 1.5]).unwrap()),
        ),
        (
            "rotation",
            Box::new(RandomRotation::new(vec![(0, 1), (1, 2)], 1.0, KeepShape::CropOrPad).unwrap()),
        ),
        ("rescaling", Box::new(RobustRescaling::default())),
        (
            "paper_flip",
            Box::new(RandomApply::new(PaperFlip, 1.0).unwrap()),
        ),
        ("paper_cutout", Box::new(PaperCutout)),
        ("paper_crop", Box::new(PaperCrop)),
        ("paper_all_tf", Box::new(paper_all_tf())),
        ("paper_cutout_recipe", Box::new(paper_cutout())),
    ]
}

#[test]
fn shape_is_kept_p0_is_identity_and_p1_changes_the_data() {
    let v = volume([2, 9, 8, 7]);
    for (name, t) in transforms() {
        let out = t.apply(v.clone(), &mut rng(1)).unwrap();
        assert_eq!(out.shape(), v.shape(), "{name}");
        assert_ne!(out.data(), v.data(), "{name}: p = 1 must change the data");
        let never = RandomApply::new(t, 0.0).unwrap();
        assert_eq!(
            never.apply(v.clone(), &mut rng(1)).unwrap(),
            v,
            "{name}: p = 0 is the identity"
        );
    }
    let c = CropOrPad::new([5, 10, 7], 0.0)
        .unwrap()
        .apply(v.clone(), &mut rng(1))
        .unwrap();
    assert_eq!(c.shape(), [2, 5, 10, 7]);
}

#[test]
fn probability_outside_zero_one_is_an_error() {
    for p in [-1.0, 3.0, f64::NAN] {
        let e = RandomApply::new(ZNormalization::default(), p).unwrap_err();
        assert!(matches!(e, Error::InvalidParam { name: "p", .. }), "{p}");
        assert!(matches!(
            RandomFlip::new(vec![0], p),
            Err(Error::InvalidParam {
                name: "flip_probability",
                ..
            })
        ));
    }
}

#[test]
fn transform_parameters_are_validated() {
    assert!(matches!(
        RandomFlip::new(vec![3], 1.0),
        Err(Error::InvalidParam { name: "axes", .. })
    ));
    assert!(matches!(
        RandomGaussianNoise::new((0.0, 0.0), (-0.1, 1.0)),
        Err(Error::InvalidParam { name: "std", .. })
    ));
    assert!(matches!(
        RandomGaussianNoise::new((1.0, 0.0), (0.1, 1.0)),
        Err(Error::InvalidParam { name: "mean", .. })
    ));
    let e = |r: Result<RandomErasing, Error>| match r {
        Err(Error::InvalidParam { name, .. }) => name,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        e(RandomErasing::new(
            (0.5, 0.2),
            (1.0, 3.0),
            1,
            EraseValue::Mean
        )),
        "scale"
    );
    assert_eq!(
        e(RandomErasing::new(
            (0.1, 1.5),
            (1.0, 3.0),
            1,
            EraseValue::Mean
        )),
        "scale"
    );
    assert_eq!(
        e(RandomErasing::new(
            (0.1, 0.2),
            (0.0, 3.0),
            1,
            EraseValue::Mean
        )),
        "ratio"
    );
    assert_eq!(
        e(RandomErasing::new(
            (0.1, 0.2),
            (1.0, 3.0),
            0,
            EraseValue::Mean
        )),
        "num_iterations"
    );
    assert_eq!(
        e(RandomErasing::new(
            (0.1, 0.2),
            (1.0, 3.0),
            1,
            EraseValue::Number(f32::NAN)
        )),
        "value"
    );
    assert!(matches!(
        CropOrPad::new([0, 4, 4], 0.0),
        Err(Error::InvalidParam {
            name: "target_shape",
            ..
        })
    ));
    assert!(matches!(
        MultiViews::with_views(ZNormalization::default(), 0),
        Err(Error::InvalidParam {
            name: "n_views",
            ..
        })
    ));
}

#[test]
fn volumes_from_tensors() {
    let t3 = Tensor::zeros((4, 5, 6), DType::F64, &Device::Cpu).unwrap();
    assert_eq!(Volume::from_tensor(&t3).unwrap().shape(), [1, 4, 5, 6]);
    let v = volume([2, 3, 4, 5]);
    let back = Volume::from_tensor(&v.to_tensor(&Device::Cpu).unwrap()).unwrap();
    assert_eq!(back, v);
    let t2 = Tensor::zeros((4, 5), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(Volume::from_tensor(&t2), Err(Error::Volume(_))));
    assert!(matches!(
        Volume::new([1, 2, 2, 2], vec![0.0; 7]),
        Err(Error::Volume(_))
    ));
}

#[test]
fn flip_reverses_an_axis_and_twice_is_the_identity() {
    let v = volume([1, 2, 3, 4]);
    let flip_w = RandomFlip::new(vec![2], 1.0).unwrap();
    let out = flip_w.apply(v.clone(), &mut rng(0)).unwrap();
    for row in 0..6 {
        let (a, b) = (
            &v.data()[row * 4..row * 4 + 4],
            &out.data()[row * 4..row * 4 + 4],
        );
        assert_eq!(a.iter().rev().copied().collect::<Vec<_>>(), b);
    }
    let flip_all = RandomFlip::new(vec![0, 1, 2], 1.0).unwrap();
    let twice = flip_all
        .apply(flip_all.apply(v.clone(), &mut rng(0)).unwrap(), &mut rng(0))
        .unwrap();
    assert_eq!(twice, v);
}

#[test]
fn flips_of_any_axes_match_the_index_formula() {
    // Odd and even sizes (middle planes and rows), several channels; every subset of axes
    // (one pass in place must equal out[c, z, y, x] = in[c, z', y', x']).
    for shape in [[2, 3, 4, 5], [1, 4, 3, 2], [1, 5, 5, 5], [3, 1, 2, 1]] {
        let v = volume(shape);
        let [c, d, h, w] = shape;
        for mask in 0..8usize {
            let axes: Vec<usize> = (0..3).filter(|a| mask >> a & 1 == 1).collect();
            let out = RandomFlip::new(axes.clone(), 1.0)
                .unwrap()
                .apply(v.clone(), &mut rng(0))
                .unwrap();
            let f = |a: usize, i: usize, n: usize| if axes.contains(&a) { n - 1 - i } else { i };
            for ci in 0..c {
                for z in 0..d {
                    for y in 0..h {
                        for x in 0..w {
                            let src = ((ci * d + f(0, z, d)) * h + f(1, y, h)) * w + f(2, x, w);
                            let dst = ((ci * d + z) * h + y) * w + x;
                            assert_eq!(out.data()[dst], v.data()[src], "{shape:?} {axes:?}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn noise_has_the_requested_std() {
    let v = Volume::new([1, 40, 40, 40], vec![1.0; 64_000]).unwrap();
    let noise = RandomGaussianNoise::new((0.0, 0.0), (0.1, 0.1)).unwrap();
    let out = noise.apply(v, &mut rng(3)).unwrap();
    let (m, s) = mean_std(out.data());
    assert!(
        (m - 1.0).abs() < 0.005 && (s - 0.1).abs() < 0.003,
        "mean {m}, std {s}"
    );
}

#[test]
fn erased_fraction_is_within_five_percent_of_the_scale() {
    let ones = Volume::new([1, 96, 96, 96], vec![1.0; 96 * 96 * 96]).unwrap();
    for scale in [0.05, 0.2, 0.33] {
        let erase =
            RandomErasing::new((scale, scale), (1.0, 1.0), 1, EraseValue::Number(0.0)).unwrap();
        let out = erase.apply(ones.clone(), &mut rng(7)).unwrap();
        let fraction =
            out.data().iter().filter(|&&x| x == 0.0).count() as f64 / out.data().len() as f64;
        assert!(
            (fraction / scale - 1.0).abs() <= 0.05,
            "scale {scale}: erased {fraction}"
        );
    }
}

#[test]
fn erasing_with_the_mean_keeps_the_global_mean() {
    let v = volume([2, 20, 20, 20]);
    let erase = RandomErasing::new((0.1, 0.3), (1.0, 3.0), 2, EraseValue::Mean).unwrap();
    let out = erase.apply(v.clone(), &mut rng(9)).unwrap();
    assert_ne!(out, v);
    let (m0, _) = mean_std(v.data());
    let (m1, _) = mean_std(out.data());
    assert!((m0 - m1).abs() < 1e-5, "{m0} vs {m1}");
    let random = RandomErasing::new((0.1, 0.3), (1.0, 3.0), 1, EraseValue::Random).unwrap();
    assert_ne!(random.apply(v.clone(), &mut rng(9)).unwrap(), v);
}

#[test]
fn z_normalisation_gives_mean_zero_std_one_per_channel_and_honours_a_mask() {
    let v = volume([3, 10, 11, 12]);
    let out = ZNormalization::default().apply(v, &mut rng(0)).unwrap();
    for channel in out.channels() {
        let (m, s) = mean_std(channel);
        assert!(m.abs() < 1e-3 && (s - 1.0).abs() < 1e-3, "{m} {s}");
    }
    let masked = ZNormalization::with_mask(std::sync::Arc::new(|x| x > 0.0));
    let v = volume([1, 10, 11, 12]);
    let inside: Vec<bool> = v.data().iter().map(|&x| x > 0.0).collect();
    let out = masked.apply(v, &mut rng(0)).unwrap();
    let sel: Vec<f32> = out
        .data()
        .iter()
        .zip(&inside)
        .filter(|(_, m)| **m)
        .map(|(x, _)| *x)
        .collect();
    let (m, s) = mean_std(&sel);
    assert!(m.abs() < 1e-3 && (s - 1.0).abs() < 1e-3, "{m} {s}");
    let none = ZNormalization::with_mask(std::sync::Arc::new(|_| false));
    assert!(matches!(
        none.apply(volume([1, 2, 2, 2]), &mut rng(0)),
        Err(Error::Volume(_))
    ));
}

#[test]
fn crop_or_pad_centres() {
    let v = Volume::new([1, 1, 1, 3], vec![1.0, 2.0, 3.0]).unwrap();
    let pad = CropOrPad::new([1, 1, 6], -1.0)
        .unwrap()
        .apply(v.clone(), &mut rng(0))
        .unwrap();
    assert_eq!(pad.data(), [-1.0, 1.0, 2.0, 3.0, -1.0, -1.0]);
    let crop = CropOrPad::new([1, 1, 1], 0.0)
        .unwrap()
        .apply(v, &mut rng(0))
        .unwrap();
    assert_eq!(crop.data(), [2.0]);
    let big = volume([2, 6, 7, 8]);
    let round_trip = CropOrPad::new([6, 7, 8], 0.0)
        .unwrap()
        .apply(
            CropOrPad::new([9, 10, 11], 0.0)
                .unwrap()
                .apply(big.clone(), &mut rng(0))
                .unwrap(),
            &mut rng(0),
        )
        .unwrap();
    assert_eq!(round_trip, big);
}

/// `values` along spatial `axis` of a one-channel volume, padded to `out` along that axis.
fn pad_1d(values: &[f32], axis: usize, out: usize, mode: PadMode) -> Vec<f32> {
    let mut shape = [1, 1, 1, 1];
    shape[axis + 1] = values.len();
    let mut target = [1, 1, 1];
    target[axis] = out;
    let v = Volume::new(shape, values.to_vec()).unwrap();
    let padded = CropOrPad::with_mode(target, mode)
        .unwrap()
        .apply(v, &mut rng(0))
        .unwrap();
    assert_eq!(padded.spatial(), target);
    padded.data().to_vec()
}

#[test]
fn pad_modes_follow_numpy() {
    // numpy's `np.pad([1, 2, 3, 4, 5], (2, 3), mode)` documentation examples (CropOrPad to 10
    // pads 2 before and 3 after), along each axis.
    let a = [1.0, 2.0, 3.0, 4.0, 5.0];
    let cases = [
        (
            PadMode::Constant(-1.0),
            [-1., -1., 1., 2., 3., 4., 5., -1., -1., -1.],
        ),
        (PadMode::Edge, [1., 1., 1., 2., 3., 4., 5., 5., 5., 5.]),
        (PadMode::Reflect, [3., 2., 1., 2., 3., 4., 5., 4., 3., 2.]),
        (PadMode::Symmetric, [2., 1., 1., 2., 3., 4., 5., 5., 4., 3.]),
        (PadMode::Wrap, [4., 5., 1., 2., 3., 4., 5., 1., 2., 3.]),
    ];
    for (mode, expected) in cases {
        for axis in 0..3 {
            assert_eq!(
                pad_1d(&a, axis, 10, mode),
                expected,
                "{mode:?} along axis {axis}"
            );
        }
    }
    // Pads wider than the input: numpy pads again from what it padded, i.e. the periodic
    // extension of one reflection (hand-computed for [1, 2, 3] padded by 5 on each side).
    let b = [1.0, 2.0, 3.0];
    let wide = [
        (
            PadMode::Reflect,
            [2., 1., 2., 3., 2., 1., 2., 3., 2., 1., 2., 3., 2.],
        ),
        (
            PadMode::Symmetric,
            [2., 3., 3., 2., 1., 1., 2., 3., 3., 2., 1., 1., 2.],
        ),
        (
            PadMode::Wrap,
            [2., 3., 1., 2., 3., 1., 2., 3., 1., 2., 3., 1., 2.],
        ),
        (
            PadMode::Edge,
            [1., 1., 1., 1., 1., 1., 2., 3., 3., 3., 3., 3., 3.],
        ),
    ];
    for (mode, expected) in wide {
        assert_eq!(pad_1d(&b, 2, 13, mode), expected, "{mode:?}");
    }
    // `reflect` on an axis of size 1 repeats the voxel, as numpy.
    assert_eq!(pad_1d(&[7.0], 1, 4, PadMode::Reflect), [7.0; 4]);
    assert_eq!(pad_1d(&[7.0], 1, 4, PadMode::Symmetric), [7.0; 4]);
}

#[test]
fn pad_modes_combine_axis_by_axis_and_mix_with_crops() {
    // np.pad([[1, 2], [3, 4]], 1, mode): the corners come from padding one axis, then the other.
    let v = Volume::new([1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    let pad = |mode| {
        CropOrPad::with_mode([1, 4, 4], mode)
            .unwrap()
            .apply(v.clone(), &mut rng(0))
            .unwrap()
            .data()
            .to_vec()
    };
    #[rustfmt::skip]
    let edge = [1., 1., 2., 2.,  1., 1., 2., 2.,  3., 3., 4., 4.,  3., 3., 4., 4.];
    #[rustfmt::skip]
    let reflect = [4., 3., 4., 3.,  2., 1., 2., 1.,  4., 3., 4., 3.,  2., 1., 2., 1.];
    #[rustfmt::skip]
    let constant = [0., 0., 0., 0.,  0., 1., 2., 0.,  0., 3., 4., 0.,  0., 0., 0., 0.];
    assert_eq!(pad(PadMode::Edge), edge);
    assert_eq!(pad(PadMode::Reflect), reflect);
    assert_eq!(pad(PadMode::Constant(0.0)), constant);
    // Two channels, a crop along D (4 → 2: planes 1 and 2) and an edge pad along W (1 → 3).
    let v = Volume::new([2, 4, 1, 1], vec![1., 2., 3., 4., 5., 6., 7., 8.]).unwrap();
    let out = CropOrPad::with_mode([2, 1, 3], PadMode::Edge)
        .unwrap()
        .apply(v, &mut rng(0))
        .unwrap();
    assert_eq!(out.shape(), [2, 2, 1, 3]);
    assert_eq!(out.data(), [2., 2., 2., 3., 3., 3., 6., 6., 6., 7., 7., 7.]);
    assert!(CropOrPad::with_mode([1, 0, 1], PadMode::Wrap).is_err());
}

/// numpy's source index of padded position `s` (an input coordinate) on an axis of size `n`.
fn numpy_source(mode: PadMode, s: isize, n: isize) -> Option<usize> {
    let i = match mode {
        _ if (0..n).contains(&s) => s,
        PadMode::Constant(_) => return None,
        PadMode::Edge => s.clamp(0, n - 1),
        PadMode::Reflect if n == 1 => 0,
        PadMode::Reflect => {
            let m = s.rem_euclid(2 * n - 2);
            m.min(2 * n - 2 - m)
        }
        PadMode::Symmetric => {
            let m = s.rem_euclid(2 * n);
            m.min(2 * n - 1 - m)
        }
        PadMode::Wrap => s.rem_euclid(n),
    };
    Some(i as usize)
}

#[test]
fn crop_or_pad_matches_the_per_voxel_formula_for_every_mode() {
    let v = volume([2, 5, 6, 7]);
    let modes = [
        PadMode::Constant(9.0),
        PadMode::Edge,
        PadMode::Reflect,
        PadMode::Symmetric,
        PadMode::Wrap,
    ];
    for target in [[3, 9, 4], [8, 2, 16], [5, 13, 7], [1, 1, 1], [12, 12, 12]] {
        for mode in modes {
            let out = CropOrPad::with_mode(target, mode)
                .unwrap()
                .apply(v.clone(), &mut rng(0))
                .unwrap();
            assert_eq!(out.spatial(), target);
            let src = |o: usize, out: usize, inp: usize| {
                let off = if out >= inp {
                    -(((out - inp) / 2) as isize)
                } else {
                    ((inp - out) / 2) as isize
                };
                numpy_source(mode, o as isize + off, inp as isize)
            };
            let [od, oh, ow] = target;
            let mut k = 0;
            for c in 0..2 {
                for z in 0..od {
                    for y in 0..oh {
                        for x in 0..ow {
                            let expected = match (src(z, od, 5), src(y, oh, 6), src(x, ow, 7)) {
                                (Some(sz), Some(sy), Some(sx)) => {
                                    v.data()[((c * 5 + sz) * 6 + sy) * 7 + sx]
                                }
                                _ => 9.0,
                            };
                            assert_eq!(out.data()[k], expected, "{target:?} {mode:?}");
                            k += 1;
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn views_are_reproducible_whatever_the_thread_count() {
    let recipe = || {
        MultiViews::new(Compose(vec![
            Box::new(ZNormalization::default()),
            Box::new(RandomApply::new(RandomFlip::new(vec![0, 1, 2], 0.5).unwrap(), 0.5).unwrap()),
            Box::new(RandomApply::new(RandomGaussianNoise::default(), 0.5).unwrap()),
            Box::new(RandomApply::new(RandomErasing::default(), 0.5).unwrap()),
        ]))
    };
    let v = volume([1, 12, 12, 12]);
    let run = |threads: usize| {
        let views = recipe();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            (0..16u64)
                .into_par_iter()
                .map(|i| views.views(&v, 7, 3, i).unwrap())
                .collect::<Vec<_>>()
        })
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one, two);
    assert_ne!(one[0][0], one[0][1], "the two views differ");
    assert_ne!(one[0], one[1], "samples differ");
    let other_epoch = recipe().views(&v, 7, 4, 0).unwrap();
    assert_ne!(other_epoch, one[0], "epochs differ");
}

#[test]
fn blur_keeps_constants_and_validates_sigma() {
    let c = Volume::new([1, 6, 7, 8], vec![2.5; 336]).unwrap();
    let out = RandomGaussianBlur::default()
        .apply(c.clone(), &mut rng(2))
        .unwrap();
    assert!(out.data().iter().all(|&x| (x - 2.5).abs() < 1e-5));
    for bad in [&[1.0][..], &[1.0, 2.0, 3.0], &[-1.0, 1.0], &[2.0, 1.0]] {
        assert!(
            matches!(
                RandomGaussianBlur::new(bad),
                Err(Error::InvalidParam { name: "sigma", .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn rotations_keep_the_shape_of_non_cubic_volumes() {
    let v = volume([1, 6, 9, 7]);
    for keep in [KeepShape::CropOrPad, KeepShape::EqualSidesOnly] {
        let rot = RandomRotation::new(vec![(0, 1), (1, 2), (0, 2)], 1.0, keep).unwrap();
        for i in 0..8 {
            assert_eq!(
                rot.apply(v.clone(), &mut rng(i)).unwrap().shape(),
                v.shape(),
                "{keep:?}"
            );
        }
    }
    // Only half turns on unequal sides: the voxels are a permutation of the input's.
    let rot = RandomRotation::new(vec![(0, 1)], 1.0, KeepShape::EqualSidesOnly).unwrap();
    let mut a = rot.apply(v.clone(), &mut rng(1)).unwrap().data().to_vec();
    let mut b = v.data().to_vec();
    a.sort_by(f32::total_cmp);
    b.sort_by(f32::total_cmp);
    assert_eq!(a, b);
    assert!(matches!(
        RandomRotation::new(vec![(1, 1)], 1.0, KeepShape::default()),
        Err(Error::InvalidParam { name: "axes", .. })
    ));
    assert!(matches!(
        RandomRotation::new(vec![(0, 3)], 1.0, KeepShape::default()),
        Err(Error::InvalidParam { name: "axes", .. })
    ));
}

#[test]
fn robust_rescaling_maps_each_channel_to_the_range() {
    let mut v = volume([2, 8, 8, 8]);
    let half = v.data().len() / 2;
    v.data_mut()[half..]
        .iter_mut()
        .for_each(|x| *x = *x * 100.0 + 5000.0);
    let out = RobustRescaling::default().apply(v, &mut rng(0)).unwrap();
    for channel in out.channels() {
        let (lo, hi) = channel
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        assert!(
            lo.abs() < 1e-6 && (hi - 1.0).abs() < 1e-6,
            "each channel spans [0, 1]: {lo} {hi}"
        );
    }
    let constant = Volume::new([1, 2, 2, 2], vec![3.0; 8]).unwrap();
    let out = RobustRescaling::default()
        .apply(constant, &mut rng(0))
        .unwrap();
    assert!(out.data().iter().all(|&x| x == 0.0));
    assert!(matches!(
        RobustRescaling::new((0.0, 1.0), (1.0, 101.0)),
        Err(Error::InvalidParam {
            name: "percentiles",
            ..
        })
    ));
    assert!(matches!(
        RobustRescaling::new((1.0, 0.0), (1.0, 99.0)),
        Err(Error::InvalidParam {
            name: "out_min_max",
            ..
        })
    ));
}

fn ramp(values: &[f32], axis: usize) -> Volume {
    let mut shape = [1, 1, 1, 1];
    shape[axis + 1] = values.len();
    Volume::new(shape, values.to_vec()).unwrap()
}

#[test]
fn resize_is_trilinear_with_align_corners_false() {
    // PyTorch's interpolate(mode="linear", align_corners=False) on [0, 1, 2, 3] → 8 samples.
    for axis in 0..3 {
        let mut target = [1, 1, 1];
        target[axis] = 8;
        let up = Resize::new(target)
            .unwrap()
            .apply(ramp(&[0.0, 1.0, 2.0, 3.0], axis), &mut rng(0))
            .unwrap();
        assert_eq!(
            up.data(),
            [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0],
            "axis {axis}"
        );
        target[axis] = 4;
        let ramp8: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let down = Resize::new(target)
            .unwrap()
            .apply(ramp(&ramp8, axis), &mut rng(0))
            .unwrap();
        assert_eq!(down.data(), [0.5, 2.5, 4.5, 6.5], "axis {axis}");
    }
    let v = volume([2, 5, 6, 7]);
    assert_eq!(
        Resize::new([5, 6, 7])
            .unwrap()
            .apply(v.clone(), &mut rng(0))
            .unwrap(),
        v
    );
    let c = Volume::new([1, 4, 5, 6], vec![1.5; 120]).unwrap();
    let r = Resize::new([7, 3, 9])
        .unwrap()
        .apply(c, &mut rng(0))
        .unwrap();
    assert_eq!(r.shape(), [1, 7, 3, 9]);
    assert!(r.data().iter().all(|&x| x == 1.5));
    assert!(matches!(
        Resize::new([0, 1, 1]),
        Err(Error::InvalidParam {
            name: "target_shape",
            ..
        })
    ));
}

#[test]
fn random_resized_crop_gives_the_target_shape() {
    let v = volume([2, 20, 24, 22]);
    let t = RandomResizedCrop::new([16, 16, 16], (0.08, 1.0), (0.75, 1.33)).unwrap();
    for i in 0..5 {
        assert_eq!(
            t.apply(v.clone(), &mut rng(i)).unwrap().shape(),
            [2, 16, 16, 16]
        );
    }
    assert!(matches!(
        RandomResizedCrop::new([4, 4, 4], (0.5, 1.5), (1.0, 1.0)),
        Err(Error::InvalidParam { name: "scale", .. })
    ));
    assert!(matches!(
        RandomResizedCrop::new([4, 4, 4], (0.5, 1.0), (-1.0, 1.0)),
        Err(Error::InvalidParam { name: "ratio", .. })
    ));
    assert!(matches!(
        RandomResizedCrop::new([4, 0, 4], (0.5, 1.0), (1.0, 1.0)),
        Err(Error::InvalidParam {
            name: "target_shape",
            ..
        })
    ));
}

#[test]
fn paper_cutout_zeroes_a_quarter_box() {
    let ones = Volume::new([1, 13, 17, 11], vec![1.0; 13 * 17 * 11]).unwrap();
    let out = PaperCutout.apply(ones, &mut rng(4)).unwrap();
    let zeros = out.data().iter().filter(|&&x| x == 0.0).count();
    assert_eq!(zeros, 4 * 5 * 3, "ceil(size / 4) per axis");
}

#[test]
fn paper_flip_reverses_one_of_the_four_axes() {
    let v = volume([2, 3, 4, 5]);
    let mut seen = std::collections::HashSet::new();
    for i in 0..40 {
        let out = PaperFlip.apply(v.clone(), &mut rng(i)).unwrap();
        let which = (0..3)
            .find(|&axis| {
                RandomFlip::new(vec![axis], 1.0)
                    .unwrap()
                    .apply(v.clone(), &mut rng(0))
                    .unwrap()
                    == out
            })
            .map(|a| a + 1)
            .unwrap_or_else(|| {
                let n = v.data().len() / 2;
                assert_eq!(
                    out.data()[..n],
                    v.data()[n..],
                    "otherwise the channels are swapped"
                );
                0
            });
        seen.insert(which);
    }
    assert_eq!(seen.len(), 4, "all four axes are drawn");
}

#[test]
fn paper_recipes_keep_the_shape_and_are_seeded() {
    let v = volume([1, 16, 18, 14]);
    let recipe = paper_all_tf();
    let a = recipe.apply(v.clone(), &mut rng(5)).unwrap();
    assert_eq!(a.shape(), v.shape());
    assert_eq!(a, recipe.apply(v.clone(), &mut rng(5)).unwrap());
    assert_ne!(a, recipe.apply(v.clone(), &mut rng(6)).unwrap());
    assert_eq!(
        paper_cutout()
            .apply(v.clone(), &mut rng(1))
            .unwrap()
            .shape(),
        v.shape()
    );
}
