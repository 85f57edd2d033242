//! One test per validation rule: every bad input is a typed error, never a panic.

use candle_core::{DType, Device, Tensor};
use yaware_losses::{
    Bandwidth, BandwidthError, Error, InfoNce, Kernel, KernelMetric, YAwareInfoNce,
    YAwareInfoNceConfig,
};

fn dev() -> Device {
    Device::Cpu
}

fn views(n: usize, d: usize) -> (Tensor, Tensor) {
    let z1 = Tensor::arange(0f64, (n * d) as f64, &dev())
        .unwrap()
        .reshape((n, d))
        .unwrap();
    let z2 = (z1.clone() * 0.5).unwrap().cos().unwrap();
    (z1.sin().unwrap(), z2)
}

fn ages(n: usize) -> Tensor {
    Tensor::arange(0f64, n as f64, &dev())
        .unwrap()
        .affine(5.0, 20.0)
        .unwrap()
}

fn bw_err(b: Bandwidth) -> BandwidthError {
    match b.validate() {
        Err(Error::Bandwidth(e)) => e,
        other => panic!("expected a bandwidth error, got {other:?}"),
    }
}

fn fit_err(b: Bandwidth, y: &Tensor) -> Error {
    let mut m = KernelMetric::new(Kernel::Gaussian, b).expect("valid bandwidth");
    m.fit(y).map(|_| ()).expect_err("fit should fail")
}

// ---- bandwidth rules (reference: KernelMetric._check_bandwidth / set_bandwidth) ----

#[test]
fn nan_or_infinite_bandwidth() {
    assert!(matches!(
        bw_err(Bandwidth::Scalar(f64::NAN)),
        BandwidthError::NonFinite { .. }
    ));
    assert!(matches!(
        bw_err(Bandwidth::Diagonal(vec![1.0, f64::INFINITY])),
        BandwidthError::NonFinite { .. }
    ));
    assert!(matches!(
        bw_err(Bandwidth::Full(vec![vec![1.0, 0.0], vec![0.0, f64::NAN]])),
        BandwidthError::NonFinite { .. }
    ));
}

#[test]
fn negative_bandwidth() {
    let e = bw_err(Bandwidth::Scalar(-1.0));
    assert_eq!(e, BandwidthError::Negative { value: -1.0 });
    assert!(e.to_string().starts_with("`bandwidth` must be positive"));
    assert!(
        matches!(bw_err(Bandwidth::Diagonal(vec![1.0, -2.0])), BandwidthError::Negative { value } if value == -2.0)
    );
    // The reference's own test: -eye(3) is refused.
    let minus_eye = (0..3)
        .map(|i| (0..3).map(|j| if i == j { -1.0 } else { 0.0 }).collect())
        .collect();
    assert!(matches!(
        bw_err(Bandwidth::Full(minus_eye)),
        BandwidthError::Negative { .. }
    ));
}

#[test]
fn negative_off_diagonal_of_a_positive_definite_matrix_is_accepted() {
    // Deliberate difference from the reference, which refuses any negative entry.
    let h = Bandwidth::Full(vec![vec![2.0, -1.0], vec![-1.0, 2.0]]);
    let mut m = KernelMetric::new(Kernel::Gaussian, h).unwrap();
    let y = Tensor::new(&[[0f64, 1.], [1., 0.], [2., 2.]], &dev()).unwrap();
    let k = m.fit_pairwise(&y).unwrap().to_vec2::<f64>().unwrap();
    assert!(k.iter().flatten().all(|v| v.is_finite()));
}

#[test]
fn non_square_bandwidth() {
    let e = bw_err(Bandwidth::Full(vec![vec![1.0, 0.0], vec![0.0]]));
    assert_eq!(e, BandwidthError::NotSquare { rows: 2, cols: 1 });
    assert!(
        e.to_string()
            .starts_with("`bandwidth` must be a squared matrix")
    );
    assert!(matches!(
        bw_err(Bandwidth::Full(vec![vec![1.0, 0.0, 0.0]])),
        BandwidthError::NotSquare { .. }
    ));
}

#[test]
fn bandwidth_tensor_of_rank_three() {
    let t = Tensor::ones((2, 2, 2), DType::F64, &dev()).unwrap();
    let e = Bandwidth::from_tensor(&t).unwrap_err();
    assert!(matches!(
        e,
        Error::Bandwidth(BandwidthError::WrongRank { rank: 3 })
    ));
    assert_eq!(e.to_string(), "`bandwidth` must be 1d or 2d array, got 3d");
}

#[test]
fn empty_bandwidth() {
    assert_eq!(bw_err(Bandwidth::Diagonal(vec![])), BandwidthError::Empty);
    assert_eq!(bw_err(Bandwidth::Full(vec![])), BandwidthError::Empty);
}

#[test]
fn bandwidth_length_must_match_the_label_features() {
    let y = Tensor::new(&[[1f64, 2.], [3., 4.], [5., 7.]], &dev()).unwrap();
    let e = fit_err(Bandwidth::Diagonal(vec![1.0, 2.0, 3.0]), &y);
    assert!(matches!(
        e,
        Error::Bandwidth(BandwidthError::WrongLength {
            got: 3,
            expected: 2
        })
    ));
    assert_eq!(
        e.to_string(),
        "Length of `bandwidth` must match number of features in X, got 3, expected 2."
    );
    let e = fit_err(Bandwidth::Full(vec![vec![1.0]]), &y);
    assert!(matches!(
        e,
        Error::Bandwidth(BandwidthError::WrongLength {
            got: 1,
            expected: 2
        })
    ));
}

#[test]
fn non_symmetric_bandwidth() {
    // The reference's own test matrix.
    let m = vec![
        vec![1.0, 2.0, 3.0],
        vec![4.0, 5.0, 6.0],
        vec![7.0, 8.0, 9.0],
    ];
    let e = bw_err(Bandwidth::Full(m));
    assert!(matches!(
        e,
        BandwidthError::NotSymmetric { row: 0, col: 1, .. }
    ));
    assert!(e.to_string().starts_with("`bandwidth` is not symmetric"));
}

#[test]
fn non_positive_definite_bandwidth() {
    let e = bw_err(Bandwidth::Full(vec![vec![1.0, 2.0], vec![2.0, 1.0]]));
    match e {
        BandwidthError::NotPositiveDefinite { eigenvalue } => {
            assert!((eigenvalue + 1.0).abs() < 1e-12)
        }
        other => panic!("{other:?}"),
    }
    assert!(
        bw_err(Bandwidth::Full(vec![vec![1.0, 1.0], vec![1.0, 1.0]]))
            .to_string()
            .starts_with("`bandwidth` is not positive definite")
    );
}

#[test]
fn rule_bandwidth_needs_two_samples() {
    let y = Tensor::new(&[3f64], &dev()).unwrap();
    let e = fit_err(Bandwidth::Scott, &y);
    assert!(matches!(
        e,
        Error::Bandwidth(BandwidthError::TooFewSamples {
            rule: "scott",
            n: 1
        })
    ));
}

#[test]
fn unknown_bandwidth_rule() {
    let e = "scot".parse::<Bandwidth>().unwrap_err();
    assert!(matches!(&e, Error::UnknownBandwidthRule { name } if name == "scot"));
}

#[test]
fn unknown_kernel() {
    assert!(matches!(
        "rbf".parse::<Kernel>(),
        Err(Error::UnknownKernel { .. })
    ));
}

#[test]
fn zero_variance_feature_is_ignored_and_tiny_off_diagonals_do_not_blow_up() {
    let y = Tensor::new(&[[0f64, 1.], [5., 2.]], &dev()).unwrap();
    let mut m = KernelMetric::new(Kernel::Gaussian, Bandwidth::Diagonal(vec![0.0, 4.0])).unwrap();
    m.fit(&y).unwrap();
    assert_eq!(
        m.inv_sqr_bandwidth().unwrap().to_vec2::<f64>().unwrap(),
        [[0.0, 0.0], [0.0, 0.5]]
    );
    // The reference turns a 1e-9 off-diagonal into 31623 in H^{-1/2}; it is treated as 0 here.
    let tiny = Bandwidth::Full(vec![vec![1.0, 1e-9], vec![1e-9, 4.0]]);
    let mut m = KernelMetric::new(Kernel::Gaussian, tiny).unwrap();
    m.fit(&y).unwrap();
    assert_eq!(
        m.inv_sqr_bandwidth().unwrap().to_vec2::<f64>().unwrap(),
        [[1.0, 0.0], [0.0, 0.5]]
    );
}

// ---- KernelMetric state ----

#[test]
fn unfitted_metric() {
    let m = KernelMetric::default();
    let y = ages(3);
    assert!(matches!(m.pairwise(&y), Err(Error::NotFitted)));
    assert!(matches!(m.sqr_bandwidth(), Err(Error::NotFitted)));
    assert!(matches!(m.inv_sqr_bandwidth(), Err(Error::NotFitted)));
    let e = YAwareInfoNce::with_metric(m, 0.1).unwrap_err();
    assert!(matches!(e, Error::UnfittedMetricBandwidth));
    assert_eq!(
        e.to_string(),
        "If `bandwidth` is a KernelMetric, it should be already fitted on your training data"
    );
}

#[test]
fn feature_count_mismatch_after_fit() {
    let mut m = KernelMetric::new(Kernel::Gaussian, Bandwidth::Scalar(1.0)).unwrap();
    m.fit(&ages(4)).unwrap();
    let y2 = Tensor::ones((4, 2), DType::F64, &dev()).unwrap();
    let e = m.pairwise(&y2).unwrap_err();
    assert!(matches!(
        e,
        Error::FeatureMismatch {
            got: 2,
            expected: 1
        }
    ));
    assert_eq!(e.to_string(), "Wrong data dimension, got 2 (expected 1)");
}

#[test]
fn lazily_fitted_loss_refuses_a_later_batch_with_other_features() {
    let (z1, z2) = views(4, 3);
    let loss = YAwareInfoNce::default();
    loss.forward(&z1, &z2, Some(&ages(4))).unwrap();
    let y2 = Tensor::ones((4, 2), DType::F64, &dev()).unwrap();
    let e = loss.forward(&z1, &z2, Some(&y2)).unwrap_err();
    assert!(matches!(
        e,
        Error::FeatureMismatch {
            got: 2,
            expected: 1
        }
    ));
}

// ---- loss inputs ----

#[test]
fn temperature_must_be_positive_and_finite() {
    for t in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        let e = YAwareInfoNce::new(Kernel::Gaussian, Bandwidth::Scalar(1.0), t).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidParam {
                    name: "temperature",
                    ..
                }
            ),
            "{t}"
        );
        assert!(matches!(
            InfoNce::new(t),
            Err(Error::InvalidParam {
                name: "temperature",
                ..
            })
        ));
    }
}

#[test]
fn config_build_validates_the_bandwidth() {
    let cfg = YAwareInfoNceConfig {
        bandwidth: Bandwidth::Scalar(-2.0),
        ..Default::default()
    };
    assert!(matches!(
        cfg.build(),
        Err(Error::Bandwidth(BandwidthError::Negative { .. }))
    ));
}

#[test]
fn views_of_different_shapes() {
    let (z1, _) = views(4, 3);
    let (z2, _) = views(5, 3);
    let e = YAwareInfoNce::default()
        .forward(&z1, &z2, None)
        .unwrap_err();
    assert!(matches!(e, Error::ViewShapeMismatch { .. }));
    assert!(
        e.to_string()
            .starts_with("Two tensors z1, z2 must have same shape, got")
    );
    let (z3, _) = views(4, 2);
    assert!(matches!(
        InfoNce::default().forward(&z1, &z3),
        Err(Error::ViewShapeMismatch { .. })
    ));
}

#[test]
fn labels_of_the_wrong_length() {
    let (z1, z2) = views(4, 3);
    let e = YAwareInfoNce::default()
        .forward(&z1, &z2, Some(&ages(3)))
        .unwrap_err();
    assert!(matches!(
        e,
        Error::LabelsLength {
            labels: 3,
            vectors: 4
        }
    ));
    assert_eq!(e.to_string(), "Labels length 3 != vectors length 4");
}

#[test]
fn inputs_of_the_wrong_rank() {
    let loss = YAwareInfoNce::default();
    let v = ages(4);
    assert!(matches!(
        loss.forward(&v, &v, None),
        Err(Error::Rank { name: "z1", .. })
    ));
    let (z1, z2) = views(4, 3);
    let y3 = Tensor::ones((4, 1, 1), DType::F64, &dev()).unwrap();
    assert!(matches!(
        loss.forward(&z1, &z2, Some(&y3)),
        Err(Error::Rank { name: "y", .. })
    ));
    let y0 = Tensor::new(1f64, &dev()).unwrap();
    assert!(matches!(
        loss.forward(&z1, &z2, Some(&y0)),
        Err(Error::Rank { name: "y", .. })
    ));
}

#[test]
fn empty_inputs() {
    let loss = YAwareInfoNce::default();
    let z = Tensor::zeros((0, 3), DType::F32, &dev()).unwrap();
    assert!(matches!(
        loss.forward(&z, &z, None),
        Err(Error::Empty { .. })
    ));
    let z = Tensor::zeros((3, 0), DType::F32, &dev()).unwrap();
    assert!(matches!(
        loss.forward(&z, &z, None),
        Err(Error::Empty { .. })
    ));
    let (z1, z2) = views(2, 3);
    let y = Tensor::zeros((2, 0), DType::F64, &dev()).unwrap();
    assert!(matches!(
        loss.forward(&z1, &z2, Some(&y)),
        Err(Error::Empty { name: "y", .. })
    ));
}

#[test]
fn non_finite_labels() {
    let (z1, z2) = views(3, 2);
    let loss = YAwareInfoNce::default();
    for bad in [f64::NAN, f64::INFINITY] {
        let y = Tensor::new(&[1.0, bad, 3.0], &dev()).unwrap();
        let e = loss.forward(&z1, &z2, Some(&y)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NonFinite {
                    name: "y",
                    row: 1,
                    ..
                }
            ),
            "{e}"
        );
    }
    let mut m = KernelMetric::default();
    let x = Tensor::new(&[1.0, f64::NAN], &dev()).unwrap();
    assert!(matches!(m.fit(&x), Err(Error::NonFinite { name: "X", .. })));
}

#[test]
fn unsupported_embedding_dtypes() {
    let loss = YAwareInfoNce::default();
    let zi = Tensor::zeros((3, 2), DType::U32, &dev()).unwrap();
    assert!(matches!(
        loss.forward(&zi, &zi, None),
        Err(Error::Dtype { name: "z1", .. })
    ));
    let (z1, _) = views(3, 2);
    let z2 = z1.to_dtype(DType::F32).unwrap();
    assert!(matches!(
        loss.forward(&z1, &z2, None),
        Err(Error::Dtype { name: "z2", .. })
    ));
}
