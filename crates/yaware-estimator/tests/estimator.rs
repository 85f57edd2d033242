//! Behaviour of the estimator and its trainer: the reference's own test, configuration errors,
//! resume, early stopping, plateau scheduling, checkpoints, non-finite losses, hook order.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use yaware_backbones::{BackboneConfig, MlpConfig};
use yaware_data::TwoViewBatch;
use yaware_estimator::{
    BandwidthSpec, Callback, Control, EarlyStopping, Error, HeadKind, HeadKwargs,
    LrSchedulerKwargs, LrSchedulerSpec, Mode, ModelCheckpoint, OptimizerKwargs, OptimizerName,
    Precision, StepOutput, TrainerState, YAwareConfig, YAwareContrastiveLearning,
};
use yaware_losses::{Bandwidth, Kernel, KernelMetric};

/// Deterministic uniform numbers in [0, 1).
fn uniform(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

fn tensor(seed: u64, rows: usize, cols: usize) -> Tensor {
    Tensor::from_vec(uniform(seed, rows * cols), (rows, cols), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// The reference test's data: 20 samples of dimension 25, views = x + U(0, 1) noise, batch 2.
fn data(labels: bool) -> (Tensor, Vec<TwoViewBatch>) {
    let x = tensor(1, 20, 25);
    let v1 = (&x + tensor(2, 20, 25)).unwrap();
    let v2 = (&x + tensor(3, 20, 25)).unwrap();
    let y = Tensor::zeros(20, DType::F32, &Device::Cpu).unwrap();
    let batches = (0..10)
        .map(|k| {
            let n = |t: &Tensor| t.narrow(0, 2 * k, 2).unwrap();
            TwoViewBatch::new(n(&v1), n(&v2), labels.then(|| n(&y))).unwrap()
        })
        .collect();
    (x, batches)
}

fn base_config() -> YAwareConfig {
    YAwareConfig {
        encoder: Some(BackboneConfig::Mlp(MlpConfig::new(25, vec![10]))),
        projection_head_kwargs: Some(HeadKwargs {
            input_dim: Some(10),
            hidden_dim: Some(3),
            output_dim: Some(3),
        }),
        temperature: 0.07,
        max_epochs: Some(2),
        random_state: Some(7),
        enable_progress_bar: false,
        ..Default::default()
    }
}

fn x_batches(x: &Tensor) -> Vec<Tensor> {
    (0..10).map(|k| x.narrow(0, 2 * k, 2).unwrap()).collect()
}

#[test]
fn reference_ssl_and_weakly_supervised_tests() {
    let (x, unlabelled) = data(false);
    // test_ssl: default scheduler-less config and an SGD/none variant.
    for config in [
        base_config(),
        YAwareConfig {
            temperature: 0.1,
            learning_rate: 5e-4,
            optimizer: OptimizerName::Sgd,
            ..base_config()
        },
        YAwareConfig {
            lr_scheduler: Some(LrSchedulerSpec::WarmupCosine {
                warmup_epochs: 1.0,
                warmup_start_lr: 1e-6,
                min_lr: 0.0,
                closed_form: false,
            }),
            ..base_config()
        },
    ] {
        // The reference test's `limit_train_batches=3`.
        let config = YAwareConfig {
            limit_train_batches: Some(3),
            ..config
        };
        let mut m = YAwareContrastiveLearning::new(config).unwrap();
        m.fit(&unlabelled, None).unwrap();
        assert_eq!(m.transform(x_batches(&x)).unwrap().dims(), &[20, 10]);
        // max_epochs 2 × limit_train_batches 3.
        assert_eq!(m.history().train_loss.len(), 6);
    }
    // test_weakly_sup: bandwidth 2, and a Silverman KernelMetric fitted on the (constant) labels.
    let (_, labelled) = data(true);
    let config = YAwareConfig {
        projection_head_kwargs: Some(HeadKwargs {
            input_dim: Some(10),
            hidden_dim: Some(10),
            output_dim: Some(10),
        }),
        bandwidth: BandwidthSpec::Scalar(2.0),
        ..base_config()
    };
    let mut m = YAwareContrastiveLearning::new(config.clone()).unwrap();
    m.fit(&labelled, None).unwrap();
    assert_eq!(m.transform(x_batches(&x)).unwrap().dims(), &[20, 10]);
    let mut metric = KernelMetric::new(Kernel::Gaussian, Bandwidth::Silverman).unwrap();
    metric
        .fit(&Tensor::zeros((20, 1), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let mut m = YAwareContrastiveLearning::builder(config)
        .kernel_metric(metric)
        .build()
        .unwrap();
    m.fit(&labelled, None).unwrap();
    let (f, t) = m
        .transform_with_targets(x_batches(&x).into_iter().map(|b| {
            let y = Tensor::zeros(b.dim(0).unwrap(), DType::F32, &Device::Cpu).unwrap();
            (b, y)
        }))
        .unwrap();
    assert_eq!((f.dims(), t.dims()), (&[20, 10][..], &[20][..]));
}

#[test]
fn transform_before_fit_is_an_error() {
    let (x, _) = data(false);
    let m = YAwareContrastiveLearning::new(base_config()).unwrap();
    assert!(matches!(m.transform(x_batches(&x)), Err(Error::NotFitted)));
}

fn build_err(config: YAwareConfig) -> Error {
    match YAwareContrastiveLearning::new(config) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn assert_invalid(config: YAwareConfig, name: &str) {
    let e = build_err(config);
    assert!(
        matches!(&e, Error::InvalidConfig { name: n, .. } if *n == name),
        "expected InvalidConfig({name}), got {e}"
    );
}

#[test]
fn every_configuration_error_is_typed() {
    let c = base_config;
    assert_invalid(
        YAwareConfig {
            temperature: 0.0,
            ..c()
        },
        "temperature",
    );
    assert_invalid(
        YAwareConfig {
            learning_rate: -1.0,
            ..c()
        },
        "learning_rate",
    );
    assert_invalid(
        YAwareConfig {
            check_val_every_n_epoch: 0,
            ..c()
        },
        "check_val_every_n_epoch",
    );
    assert_invalid(
        YAwareConfig {
            log_every_n_steps: 0,
            ..c()
        },
        "log_every_n_steps",
    );
    assert_invalid(
        YAwareConfig {
            accumulate_grad_batches: 0,
            ..c()
        },
        "accumulate_grad_batches",
    );
    assert_invalid(
        YAwareConfig {
            gradient_clip_val: Some(-1.0),
            ..c()
        },
        "gradient_clip_val",
    );
    assert_invalid(
        YAwareConfig {
            limit_train_batches: Some(0),
            ..c()
        },
        "limit_train_batches",
    );
    assert_invalid(
        YAwareConfig {
            limit_val_batches: Some(0),
            ..c()
        },
        "limit_val_batches",
    );
    assert_invalid(
        YAwareConfig {
            max_steps: Some(0),
            ..c()
        },
        "max_steps",
    );
    assert_invalid(
        YAwareConfig {
            encoder: None,
            ..c()
        },
        "encoder",
    );
    assert_invalid(
        YAwareConfig {
            optimizer: OptimizerName::Sgd,
            optimizer_kwargs: Some(OptimizerKwargs {
                betas: Some((0.9, 0.99)),
                ..Default::default()
            }),
            ..c()
        },
        "optimizer_kwargs",
    );
    assert_invalid(
        YAwareConfig {
            optimizer_kwargs: Some(OptimizerKwargs {
                momentum: Some(0.9),
                ..Default::default()
            }),
            ..c()
        },
        "optimizer_kwargs",
    );
    let plateau = LrSchedulerSpec::ReduceLrOnPlateau {
        mode: Default::default(),
        factor: 0.5,
        patience: 0,
        threshold: 1e-4,
        cooldown: 0,
        min_lr: 0.0,
    };
    assert_invalid(
        YAwareConfig {
            lr_scheduler: Some(plateau),
            ..c()
        },
        "lr_scheduler_kwargs.monitor",
    );
    let warmup = LrSchedulerSpec::WarmupCosine {
        warmup_epochs: 1.0,
        warmup_start_lr: 0.0,
        min_lr: 0.0,
        closed_form: false,
    };
    assert_invalid(
        YAwareConfig {
            lr_scheduler: Some(warmup.clone()),
            max_epochs: None,
            max_steps: Some(5),
            ..c()
        },
        "max_epochs",
    );
    assert_invalid(
        YAwareConfig {
            lr_scheduler: Some(warmup),
            lr_scheduler_kwargs: Some(LrSchedulerKwargs {
                frequency: 0,
                ..Default::default()
            }),
            ..c()
        },
        "lr_scheduler_kwargs.frequency",
    );
    let mut kw = serde_json::Map::new();
    kw.insert("hidden_channels".into(), serde_json::json!("ten"));
    assert_invalid(
        YAwareConfig {
            encoder_kwargs: Some(kw),
            ..c()
        },
        "encoder_kwargs",
    );
    // Errors of the lower crates keep their types.
    assert!(matches!(
        build_err(YAwareConfig {
            kernel: "foo".into(),
            ..c()
        }),
        Error::Loss(_)
    ));
    assert!(matches!(
        build_err(YAwareConfig {
            bandwidth: BandwidthSpec::Scalar(-1.0),
            ..c()
        }),
        Error::Loss(_)
    ));
    assert!(matches!(
        build_err(YAwareConfig {
            bandwidth: BandwidthSpec::Rule("nope".into()),
            ..c()
        }),
        Error::Loss(_)
    ));
    assert!(matches!(
        build_err(YAwareConfig {
            encoder: Some(BackboneConfig::Mlp(MlpConfig::new(25, vec![]))),
            ..c()
        }),
        Error::Backbone(_)
    ));
    // The head's input_dim is checked against the encoder at build time, naming both.
    let e = build_err(YAwareConfig {
        projection_head_kwargs: None,
        ..c()
    });
    assert!(
        matches!(
            e,
            Error::HeadInputDim {
                head_input_dim: 2048,
                encoder_output_dim: 10
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("2048") && e.to_string().contains("10"));
    // JSON: case-sensitive optimizer names, unknown fields.
    for bad in [
        r#"{"optimizer": "adamw"}"#,
        r#"{"max_epoch": 3}"#,
        r#"{"optimizer_kwargs": {"beta": 1}}"#,
    ] {
        assert!(serde_json::from_str::<YAwareConfig>(bad).is_err(), "{bad}");
    }
    // EarlyStopping's own check.
    assert!(matches!(
        EarlyStopping::new("loss/val", Mode::Min, 1, -1.0),
        Err(Error::InvalidConfig {
            name: "min_delta",
            ..
        })
    ));
}

#[test]
fn defaults_follow_the_api_page_and_sgd_gets_valid_defaults() {
    let c = YAwareConfig::default();
    assert_eq!(
        (c.temperature, c.learning_rate, c.optimizer),
        (0.1, 1e-4, OptimizerName::Adam)
    );
    assert_eq!(c.projection_head, HeadKind::Yaware);
    assert_eq!(c.effective_max_epochs(), Some(1000));
    let d = OptimizerKwargs::defaults_for(OptimizerName::Adam);
    assert_eq!((d.betas, d.weight_decay), (Some((0.9, 0.99)), Some(5e-5)));
    // SGD with the default kwargs trains (the reference crashes on `betas`).
    let (_, batches) = data(false);
    let mut m = YAwareContrastiveLearning::new(YAwareConfig {
        optimizer: OptimizerName::Sgd,
        ..base_config()
    })
    .unwrap();
    m.fit(&batches, None).unwrap();
    // Instances: the encoder kwargs are ignored with a warning.
    let mut kw = serde_json::Map::new();
    kw.insert("in_channels".into(), serde_json::json!(3));
    let vm = candle_nn::VarMap::new();
    let enc = yaware_backbones::Mlp::new(
        MlpConfig::new(25, vec![10]),
        &vm,
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let m = YAwareContrastiveLearning::builder(YAwareConfig {
        encoder_kwargs: Some(kw),
        ..base_config()
    })
    .encoder(Box::new(enc))
    .build()
    .unwrap();
    assert!(
        m.warnings()
            .iter()
            .any(|w| w.contains("ignoring 'encoder_kwargs'"))
    );
    // Without a head, the encoder output goes to the loss.
    let m = YAwareContrastiveLearning::new(YAwareConfig {
        projection_head: HeadKind::None,
        ..base_config()
    })
    .unwrap();
    assert_eq!(m.named_parameters().len(), 2);
}

/// Stops training at the end of `epoch` or after global step `step`.
struct StopAt {
    epoch: Option<u64>,
    step: Option<u64>,
}

impl Callback for StopAt {
    fn name(&self) -> &str {
        "StopAt"
    }
    fn on_train_batch_end(
        &mut self,
        s: &mut TrainerState,
        _: &YAwareContrastiveLearning,
        _: &StepOutput,
        _: usize,
    ) -> yaware_estimator::Result<Control> {
        Ok(if self.step == Some(s.global_step) {
            Control::Stop
        } else {
            Control::Continue
        })
    }
    fn on_train_epoch_end(
        &mut self,
        s: &mut TrainerState,
        _: &YAwareContrastiveLearning,
    ) -> yaware_estimator::Result<Control> {
        Ok(if self.epoch == Some(s.epoch) {
            Control::Stop
        } else {
            Control::Continue
        })
    }
}

/// The metrics file is Lightning's wide layout: `epoch,step,<metric>...`, every row as wide as
/// the header, and each metric's column holds exactly its logged values, in order, bit for bit.
fn check_wide_csv(csv: &str, state: &TrainerState) {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&header[..2], ["epoch", "step"], "{csv}");
    let names: std::collections::BTreeSet<&str> =
        state.records.iter().map(|r| r.name.as_str()).collect();
    let mut columns: Vec<&str> = header[2..].to_vec();
    columns.sort();
    assert_eq!(columns, names.iter().copied().collect::<Vec<_>>(), "{csv}");
    let mut cells: Vec<(String, u64, u64, f64)> = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), header.len(), "{line}");
        let (epoch, step) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        for (name, v) in header[2..].iter().zip(&f[2..]) {
            if !v.is_empty() {
                cells.push((name.to_string(), epoch, step, v.parse().unwrap()));
            }
        }
    }
    for name in names {
        let got: Vec<(u64, u64, u64)> = cells
            .iter()
            .filter(|c| c.0 == name)
            .map(|c| (c.1, c.2, c.3.to_bits()))
            .collect();
        let want: Vec<(u64, u64, u64)> = state
            .records
            .iter()
            .filter(|r| r.name == name)
            .map(|r| (r.epoch, r.step, r.value.to_bits()))
            .collect();
        assert_eq!(got, want, "{name}: {csv}");
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("yaware-est-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn weights(m: &YAwareContrastiveLearning) -> Vec<(String, Vec<f32>)> {
    m.state_dict()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn resuming_from_a_checkpoint_equals_the_uninterrupted_run() {
    let (_, train) = data(true);
    let val = train[..3].to_vec();
    // Without and with gradient accumulation (10 batches per epoch: 10 or 5 steps per epoch).
    for (acc, stop_step) in [(1usize, 25u64), (2, 13)] {
        let config = YAwareConfig {
            max_epochs: Some(4),
            optimizer: OptimizerName::AdamW,
            lr_scheduler: Some(LrSchedulerSpec::WarmupCosine {
                warmup_epochs: 1.0,
                warmup_start_lr: 1e-5,
                min_lr: 0.0,
                closed_form: false,
            }),
            learning_rate: 1e-2,
            accumulate_grad_batches: acc,
            ..base_config()
        };
        let es = || Box::new(EarlyStopping::new("loss/val", Mode::Min, 100, 0.0).unwrap());
        let mut full = YAwareContrastiveLearning::builder(config.clone())
            .callback(es())
            .build()
            .unwrap();
        full.fit(&train, Some(&val)).unwrap();
        // Interrupted at the end of epoch 1, and mid-epoch after step `stop_step`.
        for (name, stop) in [
            (
                "epoch",
                StopAt {
                    epoch: Some(1),
                    step: None,
                },
            ),
            (
                "step",
                StopAt {
                    epoch: None,
                    step: Some(stop_step),
                },
            ),
        ] {
            let dir = tmpdir(&format!("resume-{name}-{acc}"));
            let ckpt = ModelCheckpoint::last_only(&dir).every_n_train_steps(stop_step);
            let last = ckpt.last_path();
            let mut part = YAwareContrastiveLearning::builder(config.clone())
                .callback(Box::new(ckpt))
                .callback(Box::new(stop))
                .callback(es())
                .build()
                .unwrap();
            part.fit(&train, Some(&val)).unwrap();
            assert!(part.history().train_loss.len() < full.history().train_loss.len());
            let mut resumed = YAwareContrastiveLearning::builder(YAwareConfig {
                random_state: Some(99),
                ..config.clone()
            })
            .callback(es())
            .build()
            .unwrap();
            resumed.fit_from(&train, Some(&val), Some(&last)).unwrap();
            assert_eq!(weights(&resumed), weights(&full), "{name} acc {acc}");
            assert_eq!(resumed.history(), full.history(), "{name} acc {acc}");
            assert_eq!(resumed.trainer_state().global_step, 40 / acc as u64);
            // The early-stopping state (best value, wait counter) travelled in the checkpoint.
            let saved = &resumed.trainer_state().callback_states["EarlyStopping"];
            assert!(
                saved["best"].as_f64().is_some_and(f64::is_finite),
                "{saved}"
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[test]
fn early_stopping_stops_after_patience_checks_without_improvement() {
    let (_, train) = data(true);
    // lr 0: the validation loss never changes, so only the first check improves.
    let es = Arc::new(Mutex::new(None));
    struct Probe(EarlyStopping, Arc<Mutex<Option<u64>>>);
    impl Callback for Probe {
        fn name(&self) -> &str {
            "Probe"
        }
        fn on_validation_epoch_end(
            &mut self,
            s: &mut TrainerState,
            m: &YAwareContrastiveLearning,
        ) -> yaware_estimator::Result<Control> {
            let c = self.0.on_validation_epoch_end(s, m)?;
            *self.1.lock().unwrap() = self.0.stopped_epoch();
            Ok(c)
        }
    }
    let mut m = YAwareContrastiveLearning::builder(YAwareConfig {
        learning_rate: 0.0,
        max_epochs: Some(10),
        ..base_config()
    })
    .callback(Box::new(Probe(
        EarlyStopping::new("loss/val", Mode::Min, 2, 0.0).unwrap(),
        es.clone(),
    )))
    .build()
    .unwrap();
    m.fit(&train, Some(&train[..2].to_vec())).unwrap();
    assert_eq!(m.history().val_loss.len(), 3);
    assert_eq!(*es.lock().unwrap(), Some(2));
    // A monitored metric that is never logged is an error listing the logged ones.
    let mut m = YAwareContrastiveLearning::builder(base_config())
        .callback(Box::new(
            EarlyStopping::new("nope", Mode::Min, 2, 0.0).unwrap(),
        ))
        .build()
        .unwrap();
    let e = m
        .fit(&train, Some(&train[..2].to_vec()))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&e, Error::MissingMetric { monitor, available } if monitor == "nope" && available.contains(&"loss/val".to_string())),
        "{e}"
    );
}

#[test]
fn plateau_scheduler_steps_on_the_validation_loss() {
    let (_, train) = data(true);
    let plateau = LrSchedulerSpec::ReduceLrOnPlateau {
        mode: Default::default(),
        factor: 0.5,
        patience: 0,
        threshold: 0.01,
        cooldown: 0,
        min_lr: 0.0,
    };
    let config = YAwareConfig {
        learning_rate: 0.0,
        max_epochs: Some(3),
        lr_scheduler: Some(plateau),
        lr_scheduler_kwargs: Some(LrSchedulerKwargs {
            monitor: Some("loss/val".into()),
            ..Default::default()
        }),
        optimizer: OptimizerName::Sgd,
        ..base_config()
    };
    // A tiny lr keeps the loss within 1% (the threshold): epoch 0 improves on +inf, epochs 1
    // and 2 do not, so the scheduler halves the lr after each.
    let mut m = YAwareContrastiveLearning::new(YAwareConfig {
        learning_rate: 1e-6,
        ..config.clone()
    })
    .unwrap();
    m.fit(&train, Some(&train[..2].to_vec())).unwrap();
    let lrs: Vec<f64> = m.history().lr.iter().map(|(_, l)| *l).collect();
    assert_eq!(lrs[0], 1e-6);
    assert_eq!(lrs[10], 1e-6);
    assert_eq!(lrs[20], 0.5e-6);
    assert_eq!(m.optimizer().unwrap().lr(0).unwrap(), 0.25e-6);
    // Without validation the monitored metric is missing: a typed error.
    let mut m = YAwareContrastiveLearning::new(config).unwrap();
    let e = m.fit(&train, None).map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("loss/val"), "{e}");
}

#[test]
fn checkpoints_round_trip_with_reference_names() {
    let (x, train) = data(false);
    let dir = tmpdir("ckpt");
    let mut m = YAwareContrastiveLearning::builder(YAwareConfig {
        default_root_dir: Some(dir.clone()),
        ..base_config()
    })
    .callback(Box::new(ModelCheckpoint::new(
        dir.join("best"),
        "loss/val",
        Mode::Min,
        1,
    )))
    .build()
    .unwrap();
    m.fit(&train, Some(&train[..2].to_vec())).unwrap();
    assert!(dir.join("config.json").is_file());
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    check_wide_csv(&csv, m.trainer_state());
    let best: Vec<_> = std::fs::read_dir(dir.join("best"))
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(best.len(), 2, "one best + last"); // top-1 + last
    let path = dir.join("w.safetensors");
    m.save_weights(&path).unwrap();
    let names: Vec<String> = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap()
        .into_keys()
        .collect();
    for n in [
        "encoder.0.weight",
        "encoder.0.bias",
        "projection_head.layers.0.weight",
        "projection_head.layers.2.bias",
    ] {
        assert!(names.contains(&n.to_string()), "{names:?}");
    }
    let mut other = YAwareContrastiveLearning::new(YAwareConfig {
        random_state: Some(1),
        ..base_config()
    })
    .unwrap();
    other.load_weights(&path).unwrap();
    let (a, b) = (
        m.transform(x_batches(&x)).unwrap(),
        other.transform(x_batches(&x)).unwrap(),
    );
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    // A full checkpoint loads as weights too.
    other
        .load_weights(dir.join("best/last.safetensors"))
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_non_finite_loss_stops_training_with_the_step_and_keeps_the_last_checkpoint() {
    let (_, mut train) = data(false);
    let nan = Tensor::full(f32::NAN, (2, 25), &Device::Cpu).unwrap();
    train[3] = TwoViewBatch::new(nan.clone(), nan, None).unwrap();
    let dir = tmpdir("nan");
    // No head: a NaN input reaches the loss (a ReLU would turn it into 0).
    let config = YAwareConfig {
        projection_head: HeadKind::None,
        ..base_config()
    };
    let mut m = YAwareContrastiveLearning::new(YAwareConfig {
        default_root_dir: Some(dir.clone()),
        ..config.clone()
    })
    .unwrap();
    // First epoch fine (the bad batch only from epoch 1, through a source that varies by epoch).
    struct Source(Vec<TwoViewBatch>, Vec<TwoViewBatch>);
    impl yaware_estimator::BatchSource for Source {
        fn num_batches(&self) -> usize {
            self.0.len()
        }
        fn batches(
            &self,
            epoch: u64,
        ) -> Box<dyn Iterator<Item = yaware_estimator::Result<TwoViewBatch>> + '_> {
            Box::new(
                if epoch == 0 { &self.0 } else { &self.1 }
                    .iter()
                    .cloned()
                    .map(Ok),
            )
        }
    }
    let (_, good) = data(false);
    let e = m.fit(&Source(good, train), None).map(|_| ()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFiniteLoss {
                step: 13,
                epoch: 1,
                batch: 3,
                ..
            }
        ),
        "{e}"
    );
    // The history up to the failure is kept; the bad batch is not in it.
    assert_eq!(m.history().train_loss.len(), 13);
    assert!(!m.fitted());
    let last = dir.join("checkpoints/last.safetensors");
    let mut other = YAwareContrastiveLearning::new(config).unwrap();
    other.load_weights(&last).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn callbacks_see_the_hooks_in_the_documented_order() {
    struct Recorder(Arc<Mutex<Vec<String>>>);
    impl Recorder {
        fn push(&self, s: String) -> yaware_estimator::Result<Control> {
            self.0.lock().unwrap().push(s);
            Ok(Control::Continue)
        }
    }
    type R = yaware_estimator::Result<Control>;
    type M = YAwareContrastiveLearning;
    impl Callback for Recorder {
        fn name(&self) -> &str {
            "Recorder"
        }
        fn on_fit_start(&mut self, _: &mut TrainerState, _: &M) -> R {
            self.push("fit_start".into())
        }
        fn on_sanity_check_start(&mut self, _: &mut TrainerState, _: &M) -> R {
            self.push("sanity_start".into())
        }
        fn on_sanity_check_end(&mut self, _: &mut TrainerState, _: &M) -> R {
            self.push("sanity_end".into())
        }
        fn on_train_epoch_start(&mut self, s: &mut TrainerState, _: &M) -> R {
            self.push(format!("epoch_start {}", s.epoch))
        }
        fn on_train_batch_start(&mut self, _: &mut TrainerState, _: &M, i: usize) -> R {
            self.push(format!("batch_start {i}"))
        }
        fn on_train_batch_end(
            &mut self,
            s: &mut TrainerState,
            _: &M,
            _: &StepOutput,
            i: usize,
        ) -> R {
            self.push(format!("batch_end {i} step {}", s.global_step))
        }
        fn on_validation_epoch_start(&mut self, _: &mut TrainerState, _: &M) -> R {
            self.push("val_start".into())
        }
        fn on_validation_batch_end(
            &mut self,
            _: &mut TrainerState,
            _: &M,
            _: &StepOutput,
            i: usize,
        ) -> R {
            self.push(format!("val_batch {i}"))
        }
        fn on_validation_epoch_end(&mut self, s: &mut TrainerState, _: &M) -> R {
            assert!(s.logged.contains_key("loss/val"));
            self.push("val_end".into())
        }
        fn on_train_epoch_end(&mut self, s: &mut TrainerState, _: &M) -> R {
            self.push(format!("epoch_end {}", s.epoch))
        }
        fn on_fit_end(&mut self, _: &mut TrainerState, _: &M) -> R {
            self.push("fit_end".into())
        }
    }
    let (_, train) = data(false);
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut m = YAwareContrastiveLearning::builder(YAwareConfig {
        num_sanity_val_steps: 1,
        check_val_every_n_epoch: 2,
        ..base_config()
    })
    .callback(Box::new(Recorder(log.clone())))
    .build()
    .unwrap();
    m.fit(&train[..2].to_vec(), Some(&train[..2].to_vec()))
        .unwrap();
    let got = log.lock().unwrap().clone();
    let want = [
        "fit_start",
        "sanity_start",
        "sanity_end",
        "epoch_start 0",
        "batch_start 0",
        "batch_end 0 step 1",
        "batch_start 1",
        "batch_end 1 step 2",
        "epoch_end 0",
        "epoch_start 1",
        "batch_start 0",
        "batch_end 0 step 3",
        "batch_start 1",
        "batch_end 1 step 4",
        "val_start",
        "val_batch 0",
        "val_batch 1",
        "val_end",
        "epoch_end 1",
        "fit_end",
    ];
    assert_eq!(got, want);
}

#[test]
fn gradient_accumulation_and_clipping() {
    let (_, train) = data(true);
    let two = &train[..2].to_vec();
    let config = YAwareConfig {
        optimizer: OptimizerName::Sgd,
        optimizer_kwargs: Some(OptimizerKwargs::default()),
        learning_rate: 0.1,
        max_epochs: Some(1),
        accumulate_grad_batches: 2,
        precision: Precision::F64,
        ..base_config()
    };
    let mut m = YAwareContrastiveLearning::new(config.clone()).unwrap();
    // Expected: one SGD step with the mean of the two batches' gradients.
    let reference = YAwareContrastiveLearning::new(config.clone()).unwrap();
    let mut want = Vec::new();
    let (g0, g1) = (
        reference
            .training_step(&two[0], 0)
            .unwrap()
            .loss
            .backward()
            .unwrap(),
        reference
            .training_step(&two[1], 1)
            .unwrap()
            .loss
            .backward()
            .unwrap(),
    );
    for (_, v) in reference.named_parameters() {
        let t = v.as_tensor();
        let g = ((g0.get(t).unwrap() + g1.get(t).unwrap()).unwrap() * 0.5).unwrap();
        want.push(
            (t - (g * 0.1).unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
        );
    }
    m.fit(&two.to_vec(), None).unwrap();
    assert_eq!(m.trainer_state().global_step, 1);
    for ((_, v), w) in m.named_parameters().iter().zip(&want) {
        let got = v
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for (a, b) in got.iter().zip(w) {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
    // Clipping: the global norm after clipping is max_norm.
    let out = reference.training_step(&two[0], 0).unwrap();
    let mut g = out.loss.backward().unwrap();
    let before = reference.clip_grad_norm(&mut g, 1e-3).unwrap();
    assert!(before > 1e-3);
    let after = reference.clip_grad_norm(&mut g, 1e9).unwrap();
    let want = 1e-3 * before / (before + 1e-6);
    assert!((after - want).abs() < 1e-15, "{after} vs {want}");
}

#[test]
fn metrics_and_probing_callbacks_log_during_fit() {
    use yaware_estimator::{Metric, MetricsCallback, ModelProbingCallback, Probe};
    let (x, train) = data(false);
    let age: Vec<f32> = (0..20).map(|i| i as f32).collect();
    let age = Tensor::new(age, &Device::Cpu).unwrap();
    let probe_data: Vec<(Tensor, Tensor)> = (0..10)
        .map(|k| {
            (
                x.narrow(0, 2 * k, 2).unwrap(),
                age.narrow(0, 2 * k, 2).unwrap(),
            )
        })
        .collect();
    let metrics = MetricsCallback::new(
        vec![
            Metric::Alignment,
            Metric::Uniformity,
            Metric::ContrastiveAccuracy(1),
        ],
        Some(5),
        true,
    )
    .unwrap();
    let probing = ModelProbingCallback::new(
        probe_data.clone(),
        probe_data,
        Probe::Ridge { alpha: 1.0 },
        1,
        "age_",
    )
    .unwrap();
    let mut m = YAwareContrastiveLearning::builder(base_config())
        .callback(Box::new(metrics))
        .callback(Box::new(probing))
        .build()
        .unwrap();
    m.fit(&train, Some(&train[..2].to_vec())).unwrap();
    let logged = &m.trainer_state().logged;
    for k in [
        "alignment/train",
        "uniformity/train",
        "contrastive_accuracy_top1/train",
        "alignment/val",
        "age_test_r2",
        "age_test_mae",
    ] {
        assert!(
            logged.get(k).is_some_and(|v| v.is_finite()),
            "{k}: {logged:?}"
        );
    }
    let n_align = m
        .trainer_state()
        .records
        .iter()
        .filter(|r| r.name == "alignment/train")
        .count();
    assert_eq!(n_align, 4, "every 5 of 20 batches");
}

#[test]
fn user_optimizer_and_scheduler_instances_and_batch_parsing() {
    use yaware_data::BatchItem;
    use yaware_optim::{
        Interval, LrSchedulerConfig, ReduceLrOnPlateau, Schedule, Scheduler, Sgd, SgdConfig,
    };
    let (_, train) = data(true);
    // An instance with the default optimizer_kwargs = None works (the reference raises
    // TypeError on `len(None)`), and no warning is raised.
    let mut m = YAwareContrastiveLearning::new(base_config()).unwrap();
    let groups = m.param_groups();
    let mut opt = Sgd::new(
        groups,
        SgdConfig {
            lr: 0.5,
            ..Default::default()
        },
    )
    .unwrap();
    let sched = Scheduler::new(
        Schedule::StepLr {
            step_size: 1,
            gamma: 0.5,
        },
        &mut opt,
    )
    .unwrap();
    m.set_optimizer(Box::new(opt));
    m.set_lr_scheduler(Box::new(sched), LrSchedulerConfig::default())
        .unwrap();
    assert!(m.warnings().is_empty());
    m.fit(&train, None).unwrap();
    let lrs: Vec<f64> = m.history().lr.iter().map(|(_, l)| *l).collect();
    assert_eq!((lrs[0], lrs[10]), (0.5, 0.25), "epoch-interval StepLR");
    // A plateau scheduler instance without a monitor is refused at once.
    let plateau = ReduceLrOnPlateau::new(Default::default(), m.optimizer().unwrap()).unwrap();
    assert!(
        m.set_lr_scheduler(
            Box::new(plateau),
            LrSchedulerConfig {
                interval: Interval::Epoch,
                ..Default::default()
            }
        )
        .is_err()
    );
    // parse_batch: `[X1, X2]`, `([X1, X2], y)`, and a bad batch with the dump.
    let (x1, x2) = (train[0].x1().clone(), train[0].x2().clone());
    let y = train[0].y().unwrap().clone();
    let b = m
        .parse_batch(&BatchItem::pair(BatchItem::pair(x1.clone(), x2.clone()), y))
        .unwrap();
    assert!(b.y().is_some());
    assert!(
        m.parse_batch(&BatchItem::pair(x1.clone(), x2))
            .unwrap()
            .y()
            .is_none()
    );
    let e = m.parse_batch(&BatchItem::Tensor(x1)).unwrap_err();
    assert!(
        matches!(e, Error::Data(_)) && e.to_string().contains("Got"),
        "{e}"
    );
}

#[test]
fn every_bandwidth_form_trains() {
    let (_, train) = data(true);
    for bandwidth in [
        BandwidthSpec::Scalar(2.0),
        BandwidthSpec::Diagonal(vec![2.0]),
        BandwidthSpec::Full(vec![vec![2.0]]),
        BandwidthSpec::Rule("silverman".into()),
    ] {
        let config = YAwareConfig {
            bandwidth: bandwidth.clone(),
            max_epochs: Some(1),
            ..base_config()
        };
        let json = serde_json::to_string(&config).unwrap();
        let back: YAwareConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config, "{json}");
        let mut m = YAwareContrastiveLearning::new(config).unwrap();
        m.fit(&train, None)
            .unwrap_or_else(|e| panic!("{bandwidth:?}: {e}"));
    }
}

#[test]
fn user_head_module_and_learning_rate_monitor() {
    use yaware_estimator::LearningRateMonitor;
    let (x, train) = data(false);
    let vm = candle_nn::VarMap::new();
    let head = yaware_backbones::Mlp::new(
        MlpConfig::new(10, vec![6, 4]),
        &vm,
        3,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let mut m = YAwareContrastiveLearning::builder(base_config())
        .projection_head(Box::new(head))
        .callback(Box::new(LearningRateMonitor))
        .build()
        .unwrap();
    assert!(
        m.warnings()
            .iter()
            .any(|w| w.contains("projection_head_kwargs"))
    );
    let names: Vec<String> = m.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert!(
        names.contains(&"projection_head.2.weight".to_string()),
        "{names:?}"
    );
    m.fit(&train, None).unwrap();
    assert_eq!(m.transform(x_batches(&x)).unwrap().dims(), &[20, 10]);
    let logged = &m.trainer_state().logged;
    assert_eq!(logged["lr/backbone"], 1e-4);
    assert_eq!(logged["lr/head"], 1e-4);
}

#[test]
fn top_k_checkpointing_on_a_metric_never_logged_warns_then_fails_after_validation() {
    let (_, train) = data(true);
    let config = || YAwareConfig {
        max_epochs: Some(2),
        ..base_config()
    };
    // Without validation the metric may still come: a warning, no top-k file, `last` saved.
    let dir = tmpdir("topk-missing");
    let mut m = YAwareContrastiveLearning::builder(config())
        .callback(Box::new(ModelCheckpoint::new(
            dir.clone(),
            "nope",
            Mode::Min,
            1,
        )))
        .build()
        .unwrap();
    m.fit(&train, None).unwrap();
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["last.safetensors"]);
    // Once validation has run, a monitored metric that is still missing is a typed error.
    let mut m = YAwareContrastiveLearning::builder(config())
        .callback(Box::new(ModelCheckpoint::new(
            dir.clone(),
            "nope",
            Mode::Min,
            1,
        )))
        .build()
        .unwrap();
    let e = m
        .fit(&train, Some(&train[..2].to_vec()))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&e, Error::MissingMetric { monitor, available } if monitor == "nope" && available.contains(&"loss/val".to_string())),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resuming_keeps_a_lazily_fitted_scott_bandwidth() {
    // Labels that differ between batches, so that a metric refitted on the first batch after
    // the resume point would differ from the one fitted on the run's first batch.
    let (_, plain) = data(false);
    let ages = tensor(9, 20, 1).flatten_all().unwrap();
    let train: Vec<TwoViewBatch> = plain
        .iter()
        .enumerate()
        .map(|(k, b)| {
            let y = (ages.narrow(0, 2 * k, 2).unwrap() * (10.0 * (k + 1) as f64)).unwrap();
            TwoViewBatch::new(b.x1().clone(), b.x2().clone(), Some(y)).unwrap()
        })
        .collect();
    let config = YAwareConfig {
        max_epochs: Some(2),
        learning_rate: 1e-2,
        bandwidth: BandwidthSpec::Rule("scott".into()),
        ..base_config()
    };
    let (full, resumed) = full_and_resumed_runs(&config, &train, "resume-scott");
    let h = |m: &YAwareContrastiveLearning| {
        m.loss()
            .metric()
            .unwrap()
            .sqr_bandwidth()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    assert_eq!(h(&resumed), h(&full));
    assert_eq!(weights(&resumed), weights(&full));
    assert_eq!(resumed.history(), full.history());
}

#[test]
fn resuming_keeps_the_encoder_dropout_stream() {
    // An MLP encoder with dropout draws a mask at every train forward: a resumed run must
    // continue the mask stream where the checkpoint left it.
    let (_, plain) = data(false);
    let config = YAwareConfig {
        encoder: Some(BackboneConfig::Mlp(MlpConfig {
            dropout: Some(0.5),
            ..MlpConfig::new(25, vec![16, 10])
        })),
        learning_rate: 1e-2,
        ..base_config()
    };
    let (full, resumed) = full_and_resumed_runs(&config, &plain, "resume-dropout");
    assert_eq!(weights(&resumed), weights(&full));
    assert_eq!(resumed.history(), full.history());
}

/// An uninterrupted run of `config` on `train`, and a run stopped after step 13 (checkpoint
/// written there) then resumed from that checkpoint by a fresh estimator.
fn full_and_resumed_runs(
    config: &YAwareConfig,
    train: &[TwoViewBatch],
    tag: &str,
) -> (YAwareContrastiveLearning, YAwareContrastiveLearning) {
    let train = train.to_vec();
    let mut full = YAwareContrastiveLearning::new(config.clone()).unwrap();
    full.fit(&train, None).unwrap();
    let stop = 13;
    let dir = tmpdir(tag);
    let ckpt = ModelCheckpoint::last_only(&dir).every_n_train_steps(stop);
    let last = ckpt.last_path();
    let mut part = YAwareContrastiveLearning::builder(config.clone())
        .callback(Box::new(ckpt))
        .callback(Box::new(StopAt {
            epoch: None,
            step: Some(stop),
        }))
        .build()
        .unwrap();
    part.fit(&train, None).unwrap();
    let mut resumed = YAwareContrastiveLearning::new(config.clone()).unwrap();
    resumed.fit_from(&train, None, Some(&last)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (full, resumed)
}
