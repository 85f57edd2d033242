//! Parity of the y-Aware projection head with the reference on `proj_head.safetensors`:
//! weights loaded by the reference's names, outputs at 1e-5 (f32, relative to
//! `max(|x|, 0.1·max|X|)`) and 1e-12 (f64).

use std::collections::{BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use yaware_golden::{Golden, check_close, to_f64s};
use yaware_heads::{HeadConfig, ProjectionHead};

#[test]
fn heads_match_the_reference() {
    let Some(g) = Golden::open("proj_head.safetensors") else {
        return;
    };
    let prefixes: BTreeSet<String> = g
        .names()
        .iter()
        .filter_map(|n| n.split_once(".layers.").map(|(p, _)| p.to_string()))
        .collect();
    assert!(!prefixes.is_empty(), "no head in the golden file");
    for prefix in prefixes {
        let weights: HashMap<String, Tensor> = g
            .names()
            .iter()
            .filter_map(|n| {
                n.strip_prefix(&format!("{prefix}."))
                    .map(|rest| (rest.to_string(), n))
            })
            .filter(|(rest, _)| rest.starts_with("layers."))
            .map(|(rest, n)| (rest, g.tensor(n)))
            .collect();
        let w0 = &weights["layers.0.weight"];
        let w2 = &weights["layers.2.weight"];
        let (hidden_dim, input_dim) = w0.dims2().unwrap();
        let (output_dim, _) = w2.dims2().unwrap();
        let config = HeadConfig::YAware {
            input_dim,
            hidden_dim,
            output_dim,
        };
        let input = g.tensor(&format!("{prefix}.input"));
        let dtype = input.dtype();
        let head = ProjectionHead::load(
            config,
            VarBuilder::from_tensors(weights.clone(), dtype, &Device::Cpu),
        )
        .unwrap();
        let out = head.forward(&input).unwrap();
        assert_eq!(out.dtype(), dtype);
        let rtol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        check_close(
            &format!("{prefix}.output"),
            &to_f64s(&out),
            &g.f64s(&format!("{prefix}.output")),
            rtol,
            0.1,
        )
        .unwrap();
        let f64_name = format!("{prefix}.output_f64");
        if g.has(&f64_name) {
            let head64 = ProjectionHead::load(
                config,
                VarBuilder::from_tensors(weights, DType::F64, &Device::Cpu),
            )
            .unwrap();
            let out64 = head64
                .forward(&input.to_dtype(DType::F64).unwrap())
                .unwrap();
            check_close(&f64_name, &to_f64s(&out64), &g.f64s(&f64_name), 1e-12, 0.1).unwrap();
        }
    }
}
