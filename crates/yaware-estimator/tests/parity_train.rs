//! Golden parity of whole training steps: every `train_*.safetensors` file of the golden folder
//! (nidl 0.0.2 `YAwareContrastiveLearning.fit`, float64, CPU). The MLP encoder's structure, the
//! head's dimensions, the optimizer, its parameter groups and the scheduler are read from the
//! file; the weights start from its `init.*` tensors.
//!
//! Tolerance 1e-9 relative (gradients and projections with a floor of 0.1·max, parameters
//! with 1e-3·max, see `yaware_golden::check_close`): f64 throughout, the only differences are
//! the summation orders of matmuls and of the loss's reductions (~1e-15), amplified by the
//! Adam normalisation `m/√v` for parameters whose gradient is tiny.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use yaware_backbones::{BackboneConfig, MlpConfig};
use yaware_data::TwoViewBatch;
use yaware_estimator::{
    HeadKind, HeadKwargs, LrSchedulerKwargs, LrSchedulerSpec, OptimizerKwargs, OptimizerName,
    Precision, YAwareConfig, YAwareContrastiveLearning,
};
use yaware_golden::{Golden, check_close, golden_dir, to_f64s};

const RTOL: f64 = 1e-9;

fn train_files() -> Vec<String> {
    let dir = golden_dir();
    if !dir.is_dir() {
        return Vec::new();
    }
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("train_") && n.ends_with(".safetensors"))
        .collect();
    v.sort();
    v
}

/// The MLP encoder from `init.encoder.<k>.weight` shapes: a plain Sequential(Linear, ReLU, …).
fn encoder_config(g: &Golden) -> MlpConfig {
    let mut layers: Vec<(usize, Vec<usize>)> = g
        .names()
        .iter()
        .filter_map(|n| {
            let rest = n.strip_prefix("init.encoder.")?.strip_suffix(".weight")?;
            Some((rest.parse().ok()?, g.values(n).0))
        })
        .collect();
    layers.sort();
    for (k, (idx, _)) in layers.iter().enumerate() {
        assert_eq!(
            *idx,
            2 * k,
            "{}: encoder layers are not Linear/ReLU alternating",
            g.name
        );
    }
    MlpConfig::new(layers[0].1[1], layers.iter().map(|(_, s)| s[0]).collect())
}

fn config_from(g: &Golden) -> YAwareConfig {
    let enc = encoder_config(g);
    let w0 = g.values("init.projection_head.layers.0.weight").0;
    let w2 = g.values("init.projection_head.layers.2.weight").0;
    let defaults = g.json("optimizer_defaults");
    let optimizer = match g.metadata["optimizer"].as_str() {
        "adam" => OptimizerName::Adam,
        "adamW" => OptimizerName::AdamW,
        "sgd" => OptimizerName::Sgd,
        other => panic!("{}: unknown optimizer {other}", g.name),
    };
    let f = |k: &str| defaults.get(k).and_then(|v| v.as_f64());
    let b = |k: &str| defaults.get(k).and_then(|v| v.as_bool());
    let kwargs = OptimizerKwargs {
        betas: defaults
            .get("betas")
            .and_then(|v| v.as_array())
            .map(|a| (a[0].as_f64().unwrap(), a[1].as_f64().unwrap())),
        eps: f("eps"),
        weight_decay: f("weight_decay"),
        amsgrad: b("amsgrad"),
        momentum: f("momentum"),
        dampening: f("dampening"),
        nesterov: b("nesterov"),
    };
    // Every group without decay holds exactly the rank ≤ 1 parameters: nidl's
    // `exclude_bias_and_norm_wd`.
    let groups = g.json("param_groups");
    let exclude = groups
        .as_array()
        .unwrap()
        .iter()
        .any(|grp| grp["name"].as_str().unwrap().ends_with("_no_decay"));
    let sched_kwargs = g.json("lr_scheduler_kwargs");
    let (lr_scheduler, lr_scheduler_kwargs) = match g.metadata["lr_scheduler"].as_str() {
        "none" => (None, None),
        "warmup_cosine" => {
            let k = |n: &str| sched_kwargs[n].as_f64().unwrap();
            let interval = serde_json::from_value(sched_kwargs["interval"].clone()).unwrap();
            (
                Some(LrSchedulerSpec::WarmupCosine {
                    warmup_epochs: k("warmup_epochs"),
                    warmup_start_lr: k("warmup_start_lr"),
                    min_lr: k("min_lr"),
                    closed_form: false,
                }),
                Some(LrSchedulerKwargs {
                    interval: Some(interval),
                    ..Default::default()
                }),
            )
        }
        other => panic!("{}: unknown scheduler {other}", g.name),
    };
    let n_steps: u64 = g.metadata["n_steps"].parse().unwrap();
    let max_epochs = g.json("max_epochs").as_u64();
    YAwareConfig {
        encoder: Some(BackboneConfig::Mlp(enc)),
        projection_head: HeadKind::Yaware,
        projection_head_kwargs: Some(HeadKwargs {
            input_dim: Some(w0[1]),
            hidden_dim: Some(w0[0]),
            output_dim: Some(w2[0]),
        }),
        optimizer,
        optimizer_kwargs: Some(kwargs),
        learning_rate: f("lr").unwrap(),
        exclude_bias_and_norm_wd: exclude,
        lr_scheduler,
        lr_scheduler_kwargs,
        max_epochs,
        max_steps: Some(n_steps),
        num_sanity_val_steps: 0,
        random_state: Some(0),
        enable_progress_bar: false,
        precision: Precision::F64,
        ..Default::default()
    }
}

fn batches(g: &Golden) -> Vec<TwoViewBatch> {
    let bs: usize = g.metadata["batch_size"].parse().unwrap();
    let n_steps: usize = g.metadata["n_steps"].parse().unwrap();
    let max_epochs = g.json("max_epochs").as_u64().unwrap_or(1) as usize;
    let per_epoch = n_steps / max_epochs;
    let (x1, x2, y) = (
        g.tensor("batch.x1"),
        g.tensor("batch.x2"),
        g.tensor("batch.y"),
    );
    (0..per_epoch)
        .map(|k| {
            let n = |t: &Tensor| t.narrow(0, k * bs, bs).unwrap();
            TwoViewBatch::new(n(&x1), n(&x2), Some(n(&y))).unwrap()
        })
        .collect()
}

fn init_weights(g: &Golden) -> HashMap<String, Tensor> {
    g.names()
        .iter()
        .filter_map(|n| Some((n.strip_prefix("init.")?.to_string(), g.tensor(n))))
        .collect()
}

fn check(what: &str, got: &Tensor, g: &Golden, name: &str, floor: f64) -> f64 {
    let worst = check_close(
        &format!("{}: {what}", g.name),
        &to_f64s(got),
        &g.f64s(name),
        RTOL,
        floor,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(worst <= RTOL);
    worst
}

#[test]
fn every_training_golden_file_matches() {
    let files = train_files();
    if files.is_empty() {
        eprintln!("SKIPPED: no golden folder");
        return;
    }
    for file in files {
        let g = Golden::open(&file).unwrap();
        let config = config_from(&g);
        let data = batches(&g);

        // Step 0 on its own: projections and gradients.
        let mut model = YAwareContrastiveLearning::new(config.clone()).unwrap();
        assert_eq!(model.dtype(), DType::F64);
        model.load_state_dict(&init_weights(&g), true).unwrap();
        let groups: Vec<String> = model
            .param_groups()
            .iter()
            .map(|p| p.name.clone())
            .collect();
        let want_groups: Vec<String> = g
            .json("param_groups")
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(groups, want_groups, "{file}");
        let out = model.training_step(&data[0], 0).unwrap();
        let mut worst = check("step0.z1", &out.z1, &g, "step0.z1", 0.1);
        worst = worst.max(check("step0.z2", &out.z2, &g, "step0.z2", 0.1));
        let grads = out.loss.backward().unwrap();
        for (name, var) in model.named_parameters() {
            let grad = grads.get(var.as_tensor()).unwrap();
            worst = worst.max(check(
                &format!("grad {name}"),
                grad,
                &g,
                &format!("step0.grad.{name}"),
                0.1,
            ));
        }

        // The whole run through `fit`.
        let mut model = YAwareContrastiveLearning::new(config).unwrap();
        model.load_state_dict(&init_weights(&g), true).unwrap();
        model.fit(&data, None).unwrap();
        let h = model.history();
        let losses: Vec<f64> = h.train_loss.iter().map(|(_, l)| *l).collect();
        let lrs: Vec<f64> = h.lr.iter().map(|(_, l)| *l).collect();
        let cl = |w: &str, got: &[f64], name: &str| {
            check_close(&format!("{file}: {w}"), got, &g.f64s(name), RTOL, 0.0)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        worst = worst.max(cl("losses", &losses, "losses"));
        worst = worst.max(cl("lrs", &lrs, "lrs"));
        for (name, var) in model.state_dict() {
            worst = worst.max(check(
                &format!("after {name}"),
                var.as_tensor(),
                &g,
                &format!("after.{name}"),
                1e-3,
            ));
        }
        eprintln!(
            "{file}: ok ({} steps, worst relative error {worst:.1e})",
            losses.len()
        );
    }
}
