//! The 3D networks: parameter counts and names (the reference's), initialisation, every
//! validation rule, loading by name, and (with the 3D ops) forward passes.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use yaware_backbones::{
    AlexNet, AlexNetConfig, Backbone, BackboneConfig, DenseNet, DenseNetConfig, Error, ResNet,
    ResNetBlock, ResNetConfig, ResNetTruncated, buffer_vars, trainable_vars,
};

fn cpu() -> Device {
    Device::Cpu
}

fn n_params(varmap: &VarMap) -> usize {
    trainable_vars(varmap)
        .iter()
        .map(|(_, v)| v.as_tensor().elem_count())
        .sum()
}

fn names(varmap: &VarMap) -> Vec<String> {
    let mut v: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    v.sort();
    v
}

fn values(varmap: &VarMap, name: &str) -> Vec<f64> {
    varmap.data().lock().unwrap()[name]
        .as_tensor()
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The whole map as a name → tensor table (a "state dict").
fn state_dict(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
        .collect()
}

// ---- parameter counts (SPEC §5, in_channels 1, n_embedding 128) ----

#[test]
fn resnet18_count_and_init() {
    let vm = VarMap::new();
    let cfg = ResNetConfig::resnet18().with_n_embedding(128);
    let net = ResNet::new(cfg, &vm, 0, DType::F32, &cpu()).unwrap();
    assert_eq!(n_params(&vm), 33_225_664);
    assert_eq!(net.output_dim(), 128);
    // Every batch norm has its three buffers.
    let bns = trainable_vars(&vm)
        .iter()
        .filter(|(n, v)| n.ends_with(".weight") && v.rank() == 1)
        .count();
    assert_eq!(bns, 20);
    assert_eq!(buffer_vars(&vm).len(), 3 * bns);
    // conv: N(0, 2/fan_out) with fan_out = 128 · 27 for layer2.0.conv2.
    let (m, s) = mean_std(&values(&vm, "layer2.1.conv1.weight"));
    let want = (2.0f64 / (128.0 * 27.0)).sqrt();
    assert!(
        m.abs() < 0.02 * want && (s / want - 1.0).abs() < 0.02,
        "{m} {s}"
    );
    // stem fan_out = 64 · 343.
    let (_, s) = mean_std(&values(&vm, "conv1.weight"));
    let want = (2.0f64 / (64.0 * 343.0)).sqrt();
    assert!((s / want - 1.0).abs() < 0.05, "{s} vs {want}");
    // embedding N(0, 0.01²), bias 0; batch norms 1 / 0, running stats 0 / 1, counter 0.
    let (_, s) = mean_std(&values(&vm, "embedding.weight"));
    assert!((s / 0.01 - 1.0).abs() < 0.05, "{s}");
    assert!(values(&vm, "embedding.bias").iter().all(|&v| v == 0.0));
    assert!(values(&vm, "layer1.0.bn2.weight").iter().all(|&v| v == 1.0));
    assert!(values(&vm, "layer1.0.bn2.bias").iter().all(|&v| v == 0.0));
    assert!(values(&vm, "bn1.running_var").iter().all(|&v| v == 1.0));
    let data = vm.data().lock().unwrap();
    let counter = data["layer4.1.bn2.num_batches_tracked"].as_tensor();
    assert_eq!((counter.dtype(), counter.dims()), (DType::I64, &[][..]));
}

#[test]
fn resnet50_count_and_names() {
    let vm = VarMap::new();
    let cfg = ResNetConfig::resnet50().with_n_embedding(128);
    ResNet::new(cfg, &vm, 1, DType::F32, &cpu()).unwrap();
    assert_eq!(n_params(&vm), 46_417_344);
    let n = names(&vm);
    for want in [
        "layer1.0.conv3.weight",
        "layer1.0.bn3.running_var",
        "layer1.0.downsample.0.weight",
        "layer3.5.conv2.weight",
        "layer4.0.downsample.1.num_batches_tracked",
        "embedding.weight",
    ] {
        assert!(n.iter().any(|k| k == want), "{want} missing");
    }
    let data = vm.data().lock().unwrap();
    assert_eq!(
        data["layer1.0.downsample.0.weight"].dims(),
        &[256, 64, 1, 1, 1]
    );
    assert_eq!(data["layer4.2.conv2.weight"].dims(), &[512, 512, 3, 3, 3]);
    assert_eq!(data["embedding.weight"].dims(), &[128, 2048]);
}

#[test]
fn densenet121_count_names_and_init() {
    let vm = VarMap::new();
    let cfg = DenseNetConfig::densenet121().with_n_embedding(128);
    assert_eq!(cfg.feature_channels(), 1024);
    DenseNet::new(cfg, &vm, 2, DType::F32, &cpu()).unwrap();
    assert_eq!(n_params(&vm), 11_371_776);
    let n = names(&vm);
    for want in [
        "features.conv0.weight",
        "features.norm0.running_mean",
        "features.denseblock1.denselayer6.conv2.weight",
        "features.denseblock4.denselayer16.norm2.num_batches_tracked",
        "features.transition3.norm.weight",
        "features.transition3.conv.weight",
        "embedding.bias",
    ] {
        assert!(n.iter().any(|k| k == want), "{want} missing");
    }
    assert!(
        !n.iter()
            .any(|k| k.contains("transition4") || k.contains("norm5"))
    );
    // kaiming_normal(fan_in): conv1 of denselayer 12 of block 2 has fan_in 128 + 11·32 = 480.
    let (_, s) = mean_std(&values(
        &vm,
        "features.denseblock2.denselayer12.conv1.weight",
    ));
    let want = (2.0f64 / 480.0).sqrt();
    assert!((s / want - 1.0).abs() < 0.03, "{s} vs {want}");
    // embedding: U(±1/√1024), bias 0.
    let w = values(&vm, "embedding.weight");
    assert!(w.iter().all(|v| v.abs() <= 1.0 / 32.0) && w.iter().any(|v| v.abs() > 0.9 / 32.0));
    assert!(values(&vm, "embedding.bias").iter().all(|&v| v == 0.0));
}

#[test]
fn densenet_class_default_blocks() {
    let cfg = DenseNetConfig::default();
    assert_eq!(cfg.block_config, vec![3, 12, 24, 16]);
    // 64 + 3·32 = 160 → 80 → 80 + 384 = 464 → 232 → 232 + 768 = 1000 → 500 → 500 + 512.
    assert_eq!(cfg.feature_channels(), 1012);
    let parsed: DenseNetConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(parsed, cfg);
}

#[test]
fn alexnet_count_names_and_init() {
    let vm = VarMap::new();
    let net = AlexNet::new(AlexNetConfig::default(), &vm, 3, DType::F32, &cpu()).unwrap();
    assert_eq!(n_params(&vm), 2_570_240);
    assert_eq!(net.output_dim(), 128);
    let trainable: Vec<String> = trainable_vars(&vm).into_iter().map(|(n, _)| n).collect();
    let mut want: Vec<String> = [0, 1, 4, 5, 8, 9, 11, 12, 14, 15]
        .iter()
        .flat_map(|i| [format!("features.{i}.weight"), format!("features.{i}.bias")])
        .chain(["regressor.weight".into(), "regressor.bias".into()])
        .collect();
    want.sort();
    assert_eq!(trainable, want);
    // Default conv init: U(±1/√fan_in), fan_in = 64 · 27 for features.4.
    let bound = 1.0 / (64.0f64 * 27.0).sqrt();
    for name in ["features.4.weight", "features.4.bias"] {
        let v = values(&vm, name);
        assert!(v.iter().all(|x| x.abs() <= bound * (1.0 + 1e-6)), "{name}");
        assert!(v.iter().any(|x| x.abs() > 0.5 * bound), "{name}");
    }
    assert!(values(&vm, "features.5.weight").iter().all(|&v| v == 1.0));
    let c: AlexNetConfig = serde_json::from_str(r#"{"n_channels": 2}"#).unwrap();
    assert_eq!(c.in_channels, 2);
}

// ---- smaller configurations: structure options ----

#[test]
fn zero_init_residual_zeroes_the_last_bn_of_each_block() {
    for (cfg, last) in [
        (ResNetConfig::resnet18(), "bn2"),
        (ResNetConfig::resnet50(), "bn3"),
    ] {
        let cfg = ResNetConfig {
            zero_init_residual: true,
            ..cfg
        };
        let vm = VarMap::new();
        ResNetTruncated::new(cfg, 1, &vm, 0, DType::F32, &cpu()).unwrap();
        for n in names(&vm) {
            if n.ends_with(".weight") && n.contains(".bn") {
                let zero = n.ends_with(&format!("{last}.weight"));
                let v = values(&vm, &n);
                assert!(v.iter().all(|&x| x == if zero { 0.0 } else { 1.0 }), "{n}");
            }
        }
        assert!(values(&vm, "bn1.weight").iter().all(|&v| v == 1.0));
    }
}

#[test]
fn initial_kernel_3_and_wide_bottleneck() {
    let vm = VarMap::new();
    let cfg = ResNetConfig {
        initial_kernel_size: 3,
        width_per_group: 128,
        in_channels: 2,
        ..ResNetConfig::resnet50()
    };
    ResNetTruncated::new(cfg, 1, &vm, 0, DType::F32, &cpu()).unwrap();
    let data = vm.data().lock().unwrap();
    assert_eq!(data["conv1.weight"].dims(), &[64, 2, 3, 3, 3]);
    // width = planes · 128 / 64 = 128 for layer 1.
    assert_eq!(data["layer1.0.conv2.weight"].dims(), &[128, 128, 3, 3, 3]);
    assert_eq!(data["layer1.0.conv3.weight"].dims(), &[256, 128, 1, 1, 1]);
}

#[test]
fn truncated_builds_only_the_used_part() {
    // Depths 3 and 4 allocate most of the network: the small ones show the rule.
    for depth in 0..=2 {
        let vm = VarMap::new();
        let cfg = ResNetConfig::resnet18();
        let net = ResNetTruncated::new(cfg, depth, &vm, 0, DType::F32, &cpu()).unwrap();
        assert_eq!(net.depth(), depth);
        let n = names(&vm);
        assert!(!n.iter().any(|k| k.starts_with("embedding")));
        for l in 1..=4 {
            assert_eq!(
                n.iter().any(|k| k.starts_with(&format!("layer{l}."))),
                l <= depth,
                "depth {depth}, layer {l}"
            );
        }
        assert_eq!(net.output_dim(), [64, 64, 128][depth]);
    }
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let build = |seed| {
        let vm = VarMap::new();
        AlexNet::new(AlexNetConfig::default(), &vm, seed, DType::F32, &cpu()).unwrap();
        values(&vm, "features.8.weight")
    };
    assert_eq!(build(4), build(4));
    assert_ne!(build(4), build(5));
}

// ---- validation: one test per rule ----

fn invalid(r: Result<(), Error>) -> (&'static str, String, String) {
    match r {
        Err(Error::InvalidParam {
            name,
            value,
            reason,
        }) => (name, value, reason),
        other => panic!("expected InvalidParam, got {other:?}"),
    }
}

#[test]
fn truncated_depth_out_of_range() {
    let e = ResNetTruncated::new(
        ResNetConfig::resnet18(),
        5,
        &VarMap::new(),
        0,
        DType::F32,
        &cpu(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, Error::InvalidParam { name: "depth", value, .. } if value == "5"),
        "{msg}"
    );
    assert!(
        msg.contains("'depth' must be between 0 and 4 (included)"),
        "{msg}"
    );
}

#[test]
fn basic_block_groups_or_width() {
    let cfg = ResNetConfig {
        groups: 2,
        ..ResNetConfig::resnet18()
    };
    let (name, value, reason) = invalid(cfg.validate());
    assert_eq!((name, value.as_str()), ("groups", "2"));
    assert!(reason.contains("BasicBlock only supports groups=1 and base_width=64"));
    let cfg = ResNetConfig {
        width_per_group: 32,
        ..ResNetConfig::resnet34()
    };
    assert_eq!(invalid(cfg.validate()).0, "width_per_group");
    // The error comes from the constructor too, before any allocation.
    let e = ResNet::new(cfg, &VarMap::new(), 0, DType::F32, &cpu()).unwrap_err();
    assert!(matches!(
        e,
        Error::InvalidParam {
            name: "width_per_group",
            ..
        }
    ));
}

#[test]
fn basic_block_dilation() {
    let cfg = ResNetConfig {
        replace_stride_with_dilation: [false, false, true],
        ..ResNetConfig::resnet18()
    };
    let (name, _, reason) = invalid(cfg.validate());
    assert_eq!(name, "replace_stride_with_dilation");
    assert!(reason.contains("Dilation > 1 not supported in BasicBlock"));
    // Bottleneck blocks support it: layer 4's later blocks get dilation 2.
    let cfg = ResNetConfig {
        replace_stride_with_dilation: [false, false, true],
        ..ResNetConfig::resnet50()
    };
    cfg.validate().unwrap();
}

/// Trainable parameters of a Bottleneck ResNet from the architecture's formula
/// (torchvision's ResNeXt rule: the `3³` convolution has `⌊planes · w / 64⌋ · groups` channels
/// and a `(width, width / groups, 3, 3, 3)` weight).
fn bottleneck_param_count(cfg: &ResNetConfig) -> usize {
    let bn = |c: usize| 2 * c;
    let k = cfg.initial_kernel_size;
    let mut total = 64 * cfg.in_channels * k * k * k + bn(64);
    let mut inplanes = 64;
    for (planes, &blocks) in [64, 128, 256, 512].into_iter().zip(&cfg.layers) {
        let width = planes * cfg.width_per_group / 64 * cfg.groups;
        let out = 4 * planes;
        for b in 0..blocks {
            total += inplanes * width + bn(width);
            total += width * (width / cfg.groups) * 27 + bn(width);
            total += width * out + bn(out);
            if b == 0 {
                total += inplanes * out + bn(out);
            }
            inplanes = out;
        }
    }
    total + 2048 * cfg.n_embedding + cfg.n_embedding
}

#[test]
fn grouped_bottleneck_count_and_shapes() {
    // The formula reproduces the reference's ResNet-50 count (SPEC §5) …
    let r50 = ResNetConfig::resnet50().with_n_embedding(128);
    assert_eq!(bottleneck_param_count(&r50), 46_417_344);
    // … and a small ResNeXt-style network built with groups has the formula's count.
    let cfg = ResNetConfig {
        groups: 4,
        width_per_group: 8,
        ..ResNetConfig::new(ResNetBlock::Bottleneck, [1, 2, 1, 1])
            .with_in_channels(2)
            .with_n_embedding(8)
    };
    cfg.validate().unwrap();
    let vm = VarMap::new();
    ResNet::new(cfg.clone(), &vm, 3, DType::F32, &cpu()).unwrap();
    let want = bottleneck_param_count(&cfg);
    assert_eq!(n_params(&vm), want);
    // Grouping changes the count: the same widths ungrouped have more weights.
    assert_ne!(
        want,
        bottleneck_param_count(&ResNetConfig {
            groups: 1,
            ..cfg.clone()
        })
    );
    // kaiming fan_out of a grouped weight is C_out · k³ (PyTorch's rule on the weight shape).
    let (_, s) = mean_std(&values(&vm, "layer4.0.conv2.weight"));
    let want = (2.0f64 / (256.0 * 27.0)).sqrt();
    assert!((s / want - 1.0).abs() < 0.05, "{s} vs {want}");
    let data = vm.data().lock().unwrap();
    // layer1: width = ⌊64 · 8 / 64⌋ · 4 = 32, the 3³ weight sees 32 / 4 channels.
    assert_eq!(data["layer1.0.conv1.weight"].dims(), &[32, 64, 1, 1, 1]);
    assert_eq!(data["layer1.0.conv2.weight"].dims(), &[32, 8, 3, 3, 3]);
    assert_eq!(data["layer1.0.conv3.weight"].dims(), &[256, 32, 1, 1, 1]);
    // layer4: width = ⌊512 · 8 / 64⌋ · 4 = 256.
    assert_eq!(data["layer4.0.conv2.weight"].dims(), &[256, 64, 3, 3, 3]);
}

#[test]
fn zero_sizes() {
    let r = ResNetConfig::resnet18();
    for (cfg, want) in [
        (r.clone().with_in_channels(0), "in_channels"),
        (r.clone().with_n_embedding(0), "n_embedding"),
        (
            ResNetConfig {
                initial_kernel_size: 0,
                ..r.clone()
            },
            "initial_kernel_size",
        ),
        (
            ResNetConfig {
                layers: [2, 0, 2, 2],
                ..r.clone()
            },
            "layers",
        ),
        (
            ResNetConfig {
                groups: 0,
                ..r.clone()
            },
            "groups",
        ),
    ] {
        assert_eq!(invalid(cfg.validate()).0, want);
    }
    let d = DenseNetConfig::default();
    for (cfg, want) in [
        (
            DenseNetConfig {
                growth_rate: 0,
                ..d.clone()
            },
            "growth_rate",
        ),
        (
            DenseNetConfig {
                bn_size: 0,
                ..d.clone()
            },
            "bn_size",
        ),
        (
            DenseNetConfig {
                num_init_features: 0,
                ..d.clone()
            },
            "num_init_features",
        ),
        (
            DenseNetConfig {
                in_channels: 0,
                ..d.clone()
            },
            "in_channels",
        ),
        (d.clone().with_n_embedding(0), "n_embedding"),
        (
            DenseNetConfig {
                block_config: vec![],
                ..d.clone()
            },
            "block_config",
        ),
        (
            DenseNetConfig {
                block_config: vec![2, 0],
                ..d.clone()
            },
            "block_config",
        ),
    ] {
        assert_eq!(invalid(cfg.validate()).0, want);
    }
    for (cfg, want) in [
        (
            AlexNetConfig {
                n_embedding: 0,
                in_channels: 1,
            },
            "n_embedding",
        ),
        (
            AlexNetConfig {
                n_embedding: 8,
                in_channels: 0,
            },
            "in_channels",
        ),
    ] {
        assert_eq!(invalid(cfg.validate()).0, want);
        let e = BackboneConfig::AlexNet(cfg).build(&VarMap::new(), 0, DType::F32, &cpu());
        assert!(matches!(e, Err(Error::InvalidParam { name, .. }) if name == want));
    }
}

// ---- loading by name ----

#[test]
fn load_names_the_missing_or_misshaped_weight() {
    let vm = VarMap::new();
    let cfg = AlexNetConfig {
        n_embedding: 16,
        in_channels: 1,
    };
    AlexNet::new(cfg.clone(), &vm, 0, DType::F32, &cpu()).unwrap();
    let full = state_dict(&vm);

    let mut t = full.clone();
    t.remove("features.9.running_var");
    let vb = VarBuilder::from_tensors(t, DType::F32, &cpu());
    let e = AlexNet::load(cfg.clone(), vb).unwrap_err();
    assert!(
        matches!(&e, Error::MissingWeight { name, expected } if name == "features.9.running_var" && expected == &vec![192]),
        "{e}"
    );

    let mut t = full.clone();
    t.insert(
        "regressor.weight".into(),
        Tensor::zeros((16, 64), DType::F32, &cpu()).unwrap(),
    );
    let vb = VarBuilder::from_tensors(t, DType::F32, &cpu());
    let e = BackboneConfig::AlexNet(cfg.clone())
        .load(vb)
        .err()
        .expect("load must fail");
    assert!(
        matches!(&e, Error::WeightShape { name, got, expected } if name == "regressor.weight" && got == &vec![16, 64] && expected == &vec![16, 128]),
        "{e}"
    );

    // A counter of the wrong size is named too; a missing counter counts as 0 (PyTorch).
    let mut t = full.clone();
    t.insert(
        "features.1.num_batches_tracked".into(),
        Tensor::zeros(3, DType::I64, &cpu()).unwrap(),
    );
    let vb = VarBuilder::from_tensors(t, DType::F32, &cpu());
    let e = AlexNet::load(cfg.clone(), vb).unwrap_err();
    assert!(
        matches!(&e, Error::WeightShape { name, .. } if name == "features.1.num_batches_tracked"),
        "{e}"
    );
    let mut t = full.clone();
    t.remove("features.1.num_batches_tracked");
    t.insert(
        "features.5.num_batches_tracked".into(),
        Tensor::new(7i64, &cpu()).unwrap(),
    );
    let vb = VarBuilder::from_tensors(t, DType::F64, &cpu());
    let net = AlexNet::load(cfg, vb).unwrap();
    let data = net.varmap().data().lock().unwrap();
    let c = |n: &str| data[n].as_tensor().to_scalar::<i64>().unwrap();
    assert_eq!(
        (
            c("features.1.num_batches_tracked"),
            c("features.5.num_batches_tracked")
        ),
        (0, 7)
    );
    // Loaded in the builder's dtype, every value equal.
    assert_eq!(data["features.8.weight"].dtype(), DType::F64);
    assert_eq!(data.len(), full.len());
    for (name, t) in &full {
        let got = data[name].as_tensor().to_dtype(DType::F64).unwrap();
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let want = t.to_dtype(DType::F64).unwrap();
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f64>().unwrap(), 0.0, "{name}");
    }
}

#[test]
fn load_resnet_and_densenet_name_their_weights() {
    let cfg = ResNetConfig::resnet18();
    let vm = VarMap::new();
    ResNetTruncated::new(cfg.clone(), 2, &vm, 0, DType::F32, &cpu()).unwrap();
    let mut t = state_dict(&vm);
    t.remove("layer2.0.downsample.0.weight");
    let vb = VarBuilder::from_tensors(t, DType::F32, &cpu());
    let e = ResNetTruncated::load(cfg.clone(), 2, vb.clone()).unwrap_err();
    assert!(
        matches!(&e, Error::MissingWeight { name, .. } if name == "layer2.0.downsample.0.weight"),
        "{e}"
    );
    // Depth 1 does not need it.
    ResNetTruncated::load(cfg.clone(), 1, vb.clone()).unwrap();
    // The full network needs layer3.
    let e = BackboneConfig::ResNet(cfg)
        .load(vb)
        .err()
        .expect("load must fail");
    assert!(matches!(&e, Error::MissingWeight { .. }), "{e}");

    let cfg = DenseNetConfig {
        block_config: vec![1, 2],
        growth_rate: 4,
        num_init_features: 8,
        bn_size: 2,
        ..DenseNetConfig::default()
    };
    let vm = VarMap::new();
    DenseNet::new(cfg.clone(), &vm, 0, DType::F32, &cpu()).unwrap();
    let mut t = state_dict(&vm);
    t.insert(
        "features.transition1.conv.weight".into(),
        Tensor::zeros((6, 11, 1, 1, 1), DType::F32, &cpu()).unwrap(),
    );
    let vb = VarBuilder::from_tensors(t, DType::F32, &cpu());
    let e = DenseNet::load(cfg, vb).unwrap_err();
    assert!(
        matches!(&e, Error::WeightShape { name, expected, .. } if name == "features.transition1.conv.weight" && expected == &vec![6, 12, 1, 1, 1]),
        "{e}"
    );
}

#[test]
fn backbone_config_serde_and_dims() {
    let c: BackboneConfig = serde_json::from_str(
        r#"{"name": "resnet", "block": "bottleneck", "layers": [3, 4, 6, 3], "n_embedding": 64, "zero_init_residual": true}"#,
    )
    .unwrap();
    let want = ResNetConfig {
        zero_init_residual: true,
        ..ResNetConfig::resnet50().with_n_embedding(64)
    };
    assert_eq!(c, BackboneConfig::ResNet(want));
    assert_eq!(c.output_dim(), 64);
    c.validate().unwrap();
    let back: BackboneConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    let c: BackboneConfig =
        serde_json::from_str(r#"{"name": "alexnet", "n_embedding": 32}"#).unwrap();
    assert_eq!(c.output_dim(), 32);
    let c: BackboneConfig = serde_json::from_str(
        r#"{"name": "densenet", "block_config": [6, 12, 24, 16], "n_embedding": 128}"#,
    )
    .unwrap();
    assert_eq!(
        c,
        BackboneConfig::DenseNet(DenseNetConfig::densenet121().with_n_embedding(128))
    );
    let c: BackboneConfig = serde_json::from_str(
        r#"{"name": "resnet", "block": "basic", "layers": [2, 2, 2, 2], "groups": 2}"#,
    )
    .unwrap();
    assert!(matches!(
        c.validate(),
        Err(Error::InvalidParam { name: "groups", .. })
    ));
    assert_eq!(ResNetBlock::Bottleneck.expansion(), 4);
}

// ---- forward passes (need the 3D ops) ----

fn volume(shape: (usize, usize, usize, usize, usize), seed: u64, dtype: DType) -> Tensor {
    let mut rng = yaware_backbones::init::SeededRng::new(seed);
    rng.normal_tensor(shape, 0.0, 1.0, dtype, &cpu()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Small networks of every kind: output shape, eval determinism, train mode updates the
/// running statistics and counters in the network's map, gradients reach every parameter,
/// and a save → load round trip gives the same outputs.
fn exercise(config: BackboneConfig, x: &Tensor) {
    let vm = VarMap::new();
    let net = config.build(&vm, 7, x.dtype(), &cpu()).unwrap();
    let n = x.dim(0).unwrap();
    let e1 = net.forward_t(x, false).unwrap();
    assert_eq!(e1.dims(), &[n, config.output_dim()]);
    let e2 = net.forward_t(x, false).unwrap();
    assert_eq!(max_abs_diff(&e1, &e2), 0.0);
    // Loaded copy, before any training: same eval output.
    let loaded = config
        .load(VarBuilder::from_tensors(state_dict(&vm), x.dtype(), &cpu()))
        .unwrap();
    assert_eq!(max_abs_diff(&loaded.forward_t(x, false).unwrap(), &e1), 0.0);

    let before = state_dict(&vm);
    let y = net.forward_t(x, true).unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for (name, var) in trainable_vars(&vm) {
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "no gradient for {name}"
        );
    }
    for (name, var) in buffer_vars(&vm) {
        let t = var.as_tensor();
        if name.ends_with("num_batches_tracked") {
            assert_eq!(t.to_scalar::<i64>().unwrap(), 1, "{name}");
        } else {
            assert!(max_abs_diff(t, &before[&name]) > 0.0, "{name} not updated");
        }
    }
    // The eval output now uses the updated statistics.
    assert!(max_abs_diff(&net.forward_t(x, false).unwrap(), &e1) > 0.0);
}

#[test]
fn small_resnets_forward_train_and_reload() {
    let x = volume((2, 2, 12, 10, 9), 1, DType::F64);
    for cfg in [
        ResNetConfig::new(ResNetBlock::Basic, [1, 1, 1, 1]),
        ResNetConfig {
            initial_kernel_size: 3,
            zero_init_residual: true,
            ..ResNetConfig::new(ResNetBlock::Bottleneck, [1, 2, 1, 1])
        },
        ResNetConfig {
            replace_stride_with_dilation: [false, true, true],
            ..ResNetConfig::new(ResNetBlock::Bottleneck, [1, 1, 2, 2])
        },
        // ResNeXt-style grouped Bottleneck 3³ convolutions.
        ResNetConfig {
            groups: 4,
            width_per_group: 4,
            ..ResNetConfig::new(ResNetBlock::Bottleneck, [1, 1, 1, 1])
        },
    ] {
        exercise(
            BackboneConfig::ResNet(cfg.with_in_channels(2).with_n_embedding(5)),
            &x,
        );
    }
}

#[test]
fn small_densenet_forward_train_and_reload() {
    let cfg = DenseNetConfig {
        growth_rate: 4,
        block_config: vec![2, 3, 1],
        num_init_features: 8,
        bn_size: 2,
        in_channels: 1,
        n_embedding: 6,
        memory_efficient: false,
    };
    exercise(
        BackboneConfig::DenseNet(cfg),
        &volume((2, 1, 16, 16, 17), 2, DType::F64),
    );
}

#[test]
fn alexnet_forward_train_and_reload() {
    // 33 voxels is the smallest side AlexNet accepts.
    let cfg = AlexNetConfig {
        n_embedding: 4,
        in_channels: 1,
    };
    exercise(
        BackboneConfig::AlexNet(cfg),
        &volume((2, 1, 33, 34, 35), 3, DType::F32),
    );
}

#[test]
fn truncated_is_the_body_of_the_full_network() {
    // The same seed draws the body's weights first, so a truncated depth-4 network and the full
    // one share them: pooling the feature map and applying the embedding gives the output.
    let x = volume((2, 1, 16, 16, 16), 4, DType::F64);
    let cfg = ResNetConfig::new(ResNetBlock::Basic, [1, 1, 1, 1]).with_n_embedding(3);
    let (vm_full, vm_trunc) = (VarMap::new(), VarMap::new());
    let full = ResNet::new(cfg.clone(), &vm_full, 9, DType::F64, &cpu()).unwrap();
    let trunc = ResNetTruncated::new(cfg, 4, &vm_trunc, 9, DType::F64, &cpu()).unwrap();
    let f = trunc.forward_t(&x, false).unwrap();
    assert_eq!(f.dim(1).unwrap(), trunc.output_dim());
    let data = vm_full.data().lock().unwrap();
    let (w, b) = (
        data["embedding.weight"].as_tensor(),
        data["embedding.bias"].as_tensor(),
    );
    let pooled = f.mean((2, 3, 4)).unwrap();
    let want = pooled
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(b)
        .unwrap();
    let got = full.forward_t(&x, false).unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-12);
}

#[test]
fn forward_refuses_a_bad_input() {
    let vm = VarMap::new();
    let net = AlexNet::new(AlexNetConfig::default(), &vm, 0, DType::F32, &cpu()).unwrap();
    for shape in [vec![2, 2, 40, 40, 40], vec![2, 40, 40, 40]] {
        let x = Tensor::zeros(shape.clone(), DType::F32, &cpu()).unwrap();
        let e = net.forward_t(&x, false).unwrap_err();
        assert!(
            matches!(&e, Error::Input { op: "AlexNet", problem } if problem.contains(&format!("{shape:?}"))),
            "{e}"
        );
    }
    let net =
        ResNetTruncated::new(ResNetConfig::resnet18(), 0, &vm, 0, DType::F32, &cpu()).unwrap();
    let x = Tensor::zeros((1, 3, 8, 8, 8), DType::F32, &cpu()).unwrap();
    assert!(matches!(
        net.forward_t(&x, false),
        Err(Error::Input {
            op: "ResNetTruncated",
            ..
        })
    ));
}

#[test]
fn a_variable_input_gets_its_gradient() {
    // The stem skips the input gradient only for data tensors; a variable input (saliency
    // maps) gets it: checked against a central finite difference on one voxel.
    let cfg = ResNetConfig::new(ResNetBlock::Basic, [1, 1, 1, 1]).with_n_embedding(3);
    let vm = VarMap::new();
    let net = ResNet::new(cfg, &vm, 5, DType::F64, &cpu()).unwrap();
    let x0 = volume((2, 1, 9, 8, 8), 6, DType::F64);
    let x = candle_core::Var::from_tensor(&x0).unwrap();
    let loss = |t: &Tensor| {
        net.forward_t(t, false)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let grads = loss(x.as_tensor()).backward().unwrap();
    let g = grads.get(x.as_tensor()).expect("gradient of the input");
    let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
    let k = 4 * 64 + 3 * 8 + 5; // one voxel of the first volume
    let h = 1e-5;
    let bump = |d: f64| {
        let mut v: Vec<f64> = x0.flatten_all().unwrap().to_vec1().unwrap();
        v[k] += d;
        let t = Tensor::from_vec(v, x0.shape(), &cpu()).unwrap();
        loss(&t).to_scalar::<f64>().unwrap()
    };
    let fd = (bump(h) - bump(-h)) / (2.0 * h);
    assert!(
        g[k] != 0.0 && (g[k] - fd).abs() <= 1e-5 * fd.abs().max(1e-3),
        "{} vs {fd}",
        g[k]
    );
}
