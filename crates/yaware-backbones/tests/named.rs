//! Backbones by name: the canonical tags, the reference's class and factory names, the
//! truncated ResNet as a configuration, and every error (unknown name, unexpected, fixed,
//! missing or mistyped keyword).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::{Map, Value, json};
use yaware_backbones::{
    AlexNetConfig, BackboneConfig, DenseNetConfig, Error, MlpConfig, ResNetConfig,
    ResNetTruncatedConfig,
};

fn parse(s: &str) -> Result<BackboneConfig, serde_json::Error> {
    serde_json::from_str(s)
}

fn kwargs(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

#[test]
fn factory_and_class_names_map_to_the_configurations() {
    let cases = [
        (
            r#"{"name": "resnet18", "n_embedding": 128}"#,
            BackboneConfig::ResNet(ResNetConfig::resnet18().with_n_embedding(128)),
        ),
        (
            r#"{"name": "resnet34", "in_channels": 2}"#,
            BackboneConfig::ResNet(ResNetConfig::resnet34().with_in_channels(2)),
        ),
        (
            r#"{"name": "resnet50", "groups": 32, "width_per_group": 4}"#,
            BackboneConfig::ResNet(ResNetConfig {
                groups: 32,
                width_per_group: 4,
                ..ResNetConfig::resnet50()
            }),
        ),
        (
            r#"{"name": "ResNet", "block": "bottleneck", "layers": [3, 4, 6, 3]}"#,
            BackboneConfig::ResNet(ResNetConfig::resnet50()),
        ),
        (
            r#"{"name": "densenet121", "n_embedding": 128}"#,
            BackboneConfig::DenseNet(DenseNetConfig::densenet121().with_n_embedding(128)),
        ),
        (
            r#"{"name": "DenseNet"}"#,
            BackboneConfig::DenseNet(DenseNetConfig::default()),
        ),
        (
            r#"{"name": "AlexNet", "n_channels": 3}"#,
            BackboneConfig::AlexNet(AlexNetConfig {
                in_channels: 3,
                ..AlexNetConfig::default()
            }),
        ),
        (
            r#"{"name": "MLP", "in_channels": 25, "hidden_channels": [10]}"#,
            BackboneConfig::Mlp(MlpConfig::new(25, vec![10])),
        ),
        (
            r#"{"name": "resnet18_trunc", "depth": 2}"#,
            BackboneConfig::ResNetTruncated(ResNetTruncatedConfig::new(
                ResNetConfig::resnet18(),
                2,
            )),
        ),
        (
            r#"{"name": "resnet50_trunc", "depth": 0, "initial_kernel_size": 3}"#,
            BackboneConfig::ResNetTruncated(ResNetTruncatedConfig::new(
                ResNetConfig {
                    initial_kernel_size: 3,
                    ..ResNetConfig::resnet50()
                },
                0,
            )),
        ),
        (
            r#"{"name": "ResNetTruncated", "block": "basic", "layers": [3, 4, 6, 3], "depth": 4}"#,
            BackboneConfig::ResNetTruncated(ResNetTruncatedConfig::new(
                ResNetConfig::resnet34(),
                4,
            )),
        ),
    ];
    for (text, want) in cases {
        let got = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(got, want, "{text}");
        got.validate().unwrap();
        // Serialisation writes the canonical tag, which reads back to the same value.
        let back = serde_json::to_value(&got).unwrap();
        let tag = back["name"].as_str().unwrap().to_string();
        assert!(
            ["mlp", "resnet", "resnet_truncated", "densenet", "alexnet"].contains(&tag.as_str()),
            "{tag}"
        );
        assert_eq!(serde_json::from_value::<BackboneConfig>(back).unwrap(), got);
        // The same through the typed API.
        let mut kw = kwargs(serde_json::from_str(text).unwrap());
        let name = kw.remove("name").unwrap();
        assert_eq!(
            BackboneConfig::from_name(name.as_str().unwrap(), kw).unwrap(),
            want
        );
    }
    assert!(BackboneConfig::names().any(|n| n == "resnet18_trunc"));
}

#[test]
fn truncated_config_dims_validation_and_serialised_form() {
    let c = parse(r#"{"name": "resnet18_trunc", "depth": 2}"#).unwrap();
    assert_eq!(c.output_dim(), 128);
    let c = parse(r#"{"name": "resnet50_trunc", "depth": 3}"#).unwrap();
    assert_eq!(c.output_dim(), 1024);
    // Flat: the ResNet's arguments beside `depth`.
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["name"], "resnet_truncated");
    assert_eq!(v["depth"], 3);
    assert_eq!(v["block"], "bottleneck");
    // The reference's depth rule.
    let c = parse(r#"{"name": "resnet18_trunc", "depth": 5}"#).unwrap();
    match c.validate() {
        Err(Error::InvalidParam {
            name,
            value,
            reason,
        }) => {
            assert_eq!((name, value.as_str()), ("depth", "5"));
            assert!(reason.contains("between 0 and 4"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The ResNet's own rules still apply.
    let c = parse(r#"{"name": "resnet18_trunc", "depth": 1, "groups": 2}"#).unwrap();
    assert!(matches!(
        c.validate(),
        Err(Error::InvalidParam { name: "groups", .. })
    ));
}

#[test]
fn truncated_config_builds_and_loads_the_truncated_network() {
    let c = parse(r#"{"name": "resnet18_trunc", "depth": 1, "in_channels": 2}"#).unwrap();
    let vm = VarMap::new();
    let net = c.build(&vm, 3, DType::F32, &Device::Cpu).unwrap();
    let x = Tensor::ones((1, 2, 9, 8, 7), DType::F32, &Device::Cpu).unwrap();
    let y = net.forward_t(&x, false).unwrap();
    // Stem stride 2 and max pool stride 2: 9 → 5 → 3, 8 → 4 → 2, 7 → 4 → 2.
    assert_eq!(y.dims(), &[1, c.output_dim(), 3, 2, 2]);
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    assert!(names.iter().any(|n| n.starts_with("layer1.")));
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("layer2.") || n == "embedding.weight")
    );
    let tensors = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    let loaded = c
        .load(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
        .unwrap();
    let z = loaded.forward_t(&x, false).unwrap();
    let diff: f32 = (&y - &z)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(diff, 0.0);
}

/// The estimator merges `encoder_kwargs` over the serialised configuration: a factory-built
/// configuration takes the merge like a canonical one.
#[test]
fn kwargs_merge_over_a_serialised_factory_config() {
    let base = parse(r#"{"name": "densenet121"}"#).unwrap();
    let mut v = serde_json::to_value(&base).unwrap();
    v.as_object_mut()
        .unwrap()
        .insert("n_embedding".into(), json!(64));
    let merged: BackboneConfig = serde_json::from_value(v).unwrap();
    assert_eq!(
        merged,
        BackboneConfig::DenseNet(DenseNetConfig::densenet121().with_n_embedding(64))
    );
}

fn kwargs_error(name: &str, kw: Value) -> String {
    match BackboneConfig::from_name(name, kwargs(kw)) {
        Err(Error::BackboneKwargs { name: n, problem }) => {
            assert_eq!(n, name);
            problem
        }
        other => panic!("{name}: expected a kwargs error, got {other:?}"),
    }
}

#[test]
fn unknown_names_and_bad_kwargs_are_typed_errors() {
    match BackboneConfig::from_name("resnet101", Map::new()) {
        Err(Error::UnknownBackbone { name, known }) => {
            assert_eq!(name, "resnet101");
            assert!(known.contains("resnet18") && known.contains("densenet121"));
        }
        other => panic!("{other:?}"),
    }
    // Through serde: the same error, its message naming the name.
    let e = parse(r#"{"name": "resnet101", "n_embedding": 3}"#).unwrap_err();
    assert!(
        e.to_string().contains("unknown backbone `resnet101`"),
        "{e}"
    );
    // A keyword the factory fixes.
    let p = kwargs_error("resnet18", json!({"layers": [1, 1, 1, 1]}));
    assert!(p.contains("`layers`"), "{p}");
    let p = kwargs_error("densenet121", json!({"growth_rate": 12}));
    assert!(p.contains("`growth_rate`"), "{p}");
    // An unexpected keyword (a typo), for every form.
    for (name, kw) in [
        ("resnet18", json!({"n_embeding": 10})),
        (
            "resnet",
            json!({"block": "basic", "layers": [2, 2, 2, 2], "n_embeding": 10}),
        ),
        (
            "mlp",
            json!({"in_channels": 2, "hidden_channels": [3], "n_embeding": 10}),
        ),
        ("alexnet", json!({"n_embeding": 10})),
        ("resnet18_trunc", json!({"depth": 1, "n_embeding": 10})),
    ] {
        let p = kwargs_error(name, kw);
        assert!(p.contains("n_embeding"), "{name}: {p}");
    }
    // `n_channels` is AlexNet's alias only.
    let p = kwargs_error("resnet18", json!({"n_channels": 2}));
    assert!(p.contains("n_channels"), "{p}");
    // Missing and mistyped arguments.
    let p = kwargs_error("resnet18_trunc", json!({}));
    assert!(p.contains("depth"), "{p}");
    let p = kwargs_error("resnet18", json!({"n_embedding": "ten"}));
    assert!(p.contains("ten"), "{p}");
    // The tag itself.
    let e = parse(r#"{"n_embedding": 3}"#).unwrap_err();
    assert!(e.to_string().contains("name"), "{e}");
    let e = parse(r#"{"name": 18}"#).unwrap_err();
    assert!(e.to_string().contains("must be a string"), "{e}");
}
