//! Construction, initialisation, loading errors and input checks of the heads.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use yaware_heads::{Error, Head, HeadConfig, ProjectionHead};

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
}

fn small(config: fn(usize, usize, usize) -> HeadConfig) -> (VarMap, ProjectionHead) {
    let varmap = VarMap::new();
    let head = ProjectionHead::new(config(8, 6, 4), &varmap, 0, DType::F32, &Device::Cpu).unwrap();
    (varmap, head)
}

fn names(varmap: &VarMap) -> Vec<String> {
    let mut v: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    v.sort();
    v
}

#[test]
fn defaults_follow_the_reference_code() {
    assert_eq!(HeadConfig::default(), HeadConfig::YAWARE);
    assert_eq!(HeadConfig::YAWARE.dims(), (2048, 512, 128));
    assert_eq!(HeadConfig::SIMCLR.dims(), (2048, 2048, 128));
    assert_eq!(HeadConfig::BARLOW_TWINS.dims(), (2048, 8192, 8192));
    // 1,114,752 parameters at the y-Aware defaults (SPEC §3).
    let varmap = VarMap::new();
    ProjectionHead::new(HeadConfig::YAWARE, &varmap, 1, DType::F32, &Device::Cpu).unwrap();
    let count: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(count, 1_114_752);
}

#[test]
fn parameter_names_are_the_reference_state_dict_keys() {
    let (vm, _) = small(|i, h, o| HeadConfig::YAware {
        input_dim: i,
        hidden_dim: h,
        output_dim: o,
    });
    assert_eq!(
        names(&vm),
        [
            "layers.0.bias",
            "layers.0.weight",
            "layers.2.bias",
            "layers.2.weight"
        ]
    );
    let (vm, _) = small(|i, h, o| HeadConfig::BarlowTwins {
        input_dim: i,
        hidden_dim: h,
        output_dim: o,
    });
    assert_eq!(
        names(&vm),
        [
            "layers.0.weight",
            "layers.1.bias",
            "layers.1.running_mean",
            "layers.1.running_var",
            "layers.1.weight",
            "layers.3.weight",
            "layers.4.bias",
            "layers.4.running_mean",
            "layers.4.running_var",
            "layers.4.weight",
            "layers.6.bias",
            "layers.6.weight",
        ]
    );
}

#[test]
fn initialisation_is_seeded_and_within_torch_bounds() {
    let config = HeadConfig::SimClr {
        input_dim: 64,
        hidden_dim: 32,
        output_dim: 8,
    };
    let (a, b, c) = (VarMap::new(), VarMap::new(), VarMap::new());
    ProjectionHead::new(config, &a, 5, DType::F32, &Device::Cpu).unwrap();
    ProjectionHead::new(config, &b, 5, DType::F32, &Device::Cpu).unwrap();
    ProjectionHead::new(config, &c, 6, DType::F32, &Device::Cpu).unwrap();
    let get = |vm: &VarMap, n: &str| {
        vm.data().lock().unwrap()[n]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(get(&a, "layers.0.weight"), get(&b, "layers.0.weight"));
    assert_ne!(get(&a, "layers.0.weight"), get(&c, "layers.0.weight"));
    for (name, fan_in) in [
        ("layers.0.weight", 64.0),
        ("layers.0.bias", 64.0),
        ("layers.2.weight", 32.0),
    ] {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let v = get(&a, name);
        assert!(v.iter().all(|x| x.abs() <= bound), "{name}");
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            max > 0.8 * bound,
            "{name}: values should fill U(±1/√fan_in)"
        );
    }
}

#[test]
fn every_head_projects_to_its_output_width() {
    for config in [
        HeadConfig::YAware {
            input_dim: 8,
            hidden_dim: 6,
            output_dim: 4,
        },
        HeadConfig::SimClr {
            input_dim: 8,
            hidden_dim: 6,
            output_dim: 4,
        },
        HeadConfig::BarlowTwins {
            input_dim: 8,
            hidden_dim: 6,
            output_dim: 4,
        },
    ] {
        let head =
            ProjectionHead::new(config, &VarMap::new(), 0, DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1., (5, 8), &Device::Cpu).unwrap();
        for train in [false, true] {
            assert_eq!(
                head.forward_t(&x, train).unwrap().dims(),
                &[5, 4],
                "{config:?}"
            );
        }
    }
    let x = zeros(&[3, 8]);
    assert_eq!(Head::Identity.forward_t(&x, true).unwrap().dims(), &[3, 8]);
}

#[test]
fn wrong_encoder_width_names_both_widths() {
    let (_, head) = small(|i, h, o| HeadConfig::YAware {
        input_dim: i,
        hidden_dim: h,
        output_dim: o,
    });
    let e = head.forward(&zeros(&[2, 10])).unwrap_err();
    assert!(matches!(
        e,
        Error::InputDim {
            got: 10,
            expected: 8
        }
    ));
    assert_eq!(
        e.to_string(),
        "Encoder output dim (10) does not match proj_input_dim (8). Either set proj_input_dim correctly or use an encoder whose output dimension matches."
    );
}

#[test]
fn encoder_output_of_rank_one() {
    let (_, head) = small(|i, h, o| HeadConfig::YAware {
        input_dim: i,
        hidden_dim: h,
        output_dim: o,
    });
    let e = head.forward(&zeros(&[8])).unwrap_err();
    assert!(matches!(e, Error::Rank { .. }));
    assert!(
        e.to_string()
            .starts_with("Encoder output must be at least a 2D tensor")
    );
}

#[test]
fn zero_dimension() {
    let e = ProjectionHead::new(
        HeadConfig::YAware {
            input_dim: 8,
            hidden_dim: 0,
            output_dim: 4,
        },
        &VarMap::new(),
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(matches!(
        e,
        Error::ZeroDim {
            name: "hidden_dim",
            ..
        }
    ));
}

#[test]
fn loading_reports_missing_or_misshaped_weights_by_name() {
    let config = HeadConfig::YAware {
        input_dim: 8,
        hidden_dim: 6,
        output_dim: 4,
    };
    let mut ws = HashMap::from([
        ("layers.0.weight".to_string(), zeros(&[6, 8])),
        ("layers.0.bias".to_string(), zeros(&[6])),
        ("layers.2.weight".to_string(), zeros(&[4, 6])),
    ]);
    let e = ProjectionHead::load(
        config,
        VarBuilder::from_tensors(ws.clone(), DType::F32, &Device::Cpu),
    )
    .unwrap_err();
    assert!(e.to_string().contains("layers.2.bias"), "{e}");
    ws.insert("layers.2.bias".into(), zeros(&[5]));
    let e = ProjectionHead::load(
        config,
        VarBuilder::from_tensors(ws, DType::F32, &Device::Cpu),
    )
    .unwrap_err();
    assert!(e.to_string().contains("layers.2.bias"), "{e}");
}
