//! One test per validation rule of the optimizers and schedulers: typed errors, no panics.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use yaware_optim::{
    Adam, AdamConfig, AdamW, AdamWConfig, Error, Interval, LrScheduler, LrSchedulerConfig,
    Optimizer, ParamGroup, ReduceLrOnPlateau, ReduceLrOnPlateauConfig, Schedule, Scheduler, Sgd,
    SgdConfig,
};

fn var(n: usize) -> Var {
    Var::ones(n, DType::F64, &Device::Cpu).unwrap()
}

fn group() -> Vec<ParamGroup> {
    vec![ParamGroup::from_vars("default", vec![var(3)])]
}

fn invalid(r: Result<impl std::fmt::Debug, Error>, param: &str) {
    match r {
        Err(Error::InvalidParam { name, .. }) => assert_eq!(name, param),
        other => panic!("expected InvalidParam({param}), got {other:?}"),
    }
}

fn sgd(c: SgdConfig) -> Result<Sgd, Error> {
    Sgd::new(group(), c)
}

fn adam(c: AdamConfig) -> Result<Adam, Error> {
    Adam::new(group(), c)
}

#[test]
fn negative_or_nan_learning_rate() {
    invalid(
        sgd(SgdConfig {
            lr: -0.1,
            ..Default::default()
        }),
        "lr",
    );
    invalid(
        adam(AdamConfig {
            lr: f64::NAN,
            ..Default::default()
        }),
        "lr",
    );
    let g = vec![ParamGroup::from_vars("g", vec![var(2)]).with_lr(-1.0)];
    invalid(AdamW::new(g, AdamWConfig::default()), "lr");
}

#[test]
fn negative_momentum() {
    invalid(
        sgd(SgdConfig {
            momentum: -0.5,
            ..Default::default()
        }),
        "momentum",
    );
}

#[test]
fn nesterov_needs_momentum_and_no_dampening() {
    let e = sgd(SgdConfig {
        nesterov: true,
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)));
    let e = sgd(SgdConfig {
        nesterov: true,
        momentum: 0.9,
        dampening: 0.1,
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)));
    assert!(
        sgd(SgdConfig {
            nesterov: true,
            momentum: 0.9,
            ..Default::default()
        })
        .is_ok()
    );
}

#[test]
fn negative_weight_decay() {
    invalid(
        sgd(SgdConfig {
            weight_decay: -1e-4,
            ..Default::default()
        }),
        "weight_decay",
    );
    invalid(
        adam(AdamConfig {
            weight_decay: -1e-4,
            ..Default::default()
        }),
        "weight_decay",
    );
    let g = vec![ParamGroup::from_vars("g", vec![var(2)]).with_weight_decay(-0.1)];
    invalid(Sgd::new(g, SgdConfig::default()), "weight_decay");
}

#[test]
fn betas_outside_zero_one() {
    invalid(
        adam(AdamConfig {
            betas: (1.0, 0.999),
            ..Default::default()
        }),
        "betas.0",
    );
    invalid(
        adam(AdamConfig {
            betas: (0.9, -0.1),
            ..Default::default()
        }),
        "betas.1",
    );
    invalid(
        AdamW::new(
            group(),
            AdamWConfig {
                betas: (0.9, 1.5),
                ..Default::default()
            },
        ),
        "betas.1",
    );
}

#[test]
fn non_positive_eps() {
    invalid(
        adam(AdamConfig {
            eps: 0.0,
            ..Default::default()
        }),
        "eps",
    );
    invalid(
        adam(AdamConfig {
            eps: -1e-8,
            ..Default::default()
        }),
        "eps",
    );
}

#[test]
fn a_parameter_in_two_groups() {
    let v = var(3);
    let groups = vec![
        ParamGroup::from_vars("a", vec![v.clone()]),
        ParamGroup::from_vars("b", vec![v]),
    ];
    assert!(matches!(
        Sgd::new(groups, SgdConfig::default()),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn two_groups_with_one_name() {
    let groups = vec![
        ParamGroup::from_vars("a", vec![var(1)]),
        ParamGroup::from_vars("a", vec![var(1)]),
    ];
    assert!(matches!(
        Sgd::new(groups, SgdConfig::default()),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn set_lr_checks_the_value_and_the_group() {
    let mut opt = sgd(SgdConfig::default()).unwrap();
    invalid(opt.set_lr(0, -1.0), "lr");
    assert!(matches!(
        opt.set_lr(3, 0.1),
        Err(Error::NoSuchGroup { index: 3, count: 1 })
    ));
    assert!(matches!(opt.lr(1), Err(Error::NoSuchGroup { .. })));
}

#[test]
fn loading_state_that_does_not_fit() {
    let v = var(3);
    let mut opt = Adam::new(
        vec![ParamGroup::new("g", vec![("w".into(), v.clone())])],
        AdamConfig::default(),
    )
    .unwrap();
    let loss = v.sqr().unwrap().sum_all().unwrap();
    opt.step(&loss.backward().unwrap()).unwrap();
    let good = opt.state_tensors().unwrap();
    // Missing key.
    let mut missing = good.clone();
    missing.remove("g.w.exp_avg");
    assert!(matches!(
        opt.load_state_tensors(&missing),
        Err(Error::State(_))
    ));
    // Wrong shape.
    let mut shape = good.clone();
    shape.insert(
        "g.w.exp_avg".into(),
        Tensor::zeros(4, DType::F64, &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        opt.load_state_tensors(&shape),
        Err(Error::State(_))
    ));
    // Another model's key.
    let mut extra = good.clone();
    extra.insert(
        "g.other.exp_avg".into(),
        Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        opt.load_state_tensors(&extra),
        Err(Error::State(_))
    ));
    // Missing learning rate.
    let mut no_lr = good.clone();
    no_lr.remove("g.lr");
    assert!(matches!(
        opt.load_state_tensors(&no_lr),
        Err(Error::State(_))
    ));
    opt.load_state_tensors(&good).unwrap();
}

fn schedule_err(s: Schedule, param: &str) {
    invalid(s.validate(), param);
}

#[test]
fn schedule_hyper_parameters() {
    schedule_err(
        Schedule::StepLr {
            step_size: 0,
            gamma: 0.1,
        },
        "step_size",
    );
    schedule_err(Schedule::ExponentialLr { gamma: f64::NAN }, "gamma");
    schedule_err(
        Schedule::CosineAnnealingLr {
            t_max: 0,
            eta_min: 0.0,
        },
        "T_max",
    );
    schedule_err(
        Schedule::LinearLr {
            start_factor: 0.0,
            end_factor: 1.0,
            total_iters: 5,
        },
        "start_factor",
    );
    schedule_err(
        Schedule::LinearLr {
            start_factor: 0.5,
            end_factor: 1.5,
            total_iters: 5,
        },
        "end_factor",
    );
    schedule_err(
        Schedule::LinearLr {
            start_factor: 0.5,
            end_factor: 1.0,
            total_iters: 0,
        },
        "total_iters",
    );
    schedule_err(Schedule::one_cycle(0.0, 10), "max_lr");
    schedule_err(Schedule::one_cycle(0.1, 1), "total_steps");
    let Schedule::OneCycleLr {
        max_lr,
        total_steps,
        div_factor,
        final_div_factor,
        cycle_momentum,
        base_momentum,
        max_momentum,
        ..
    } = Schedule::one_cycle(0.1, 10)
    else {
        unreachable!()
    };
    schedule_err(
        Schedule::OneCycleLr {
            max_lr,
            total_steps,
            pct_start: 1.0,
            div_factor,
            final_div_factor,
            cycle_momentum,
            base_momentum,
            max_momentum,
        },
        "pct_start",
    );
    let warmup = |w: f64, m: f64, closed_form: bool| Schedule::LinearWarmupCosineAnnealingLr {
        warmup_epochs: w,
        max_epochs: m,
        warmup_start_lr: 0.0,
        eta_min: 0.0,
        closed_form,
    };
    schedule_err(warmup(-1.0, 10.0, false), "warmup_epochs");
    schedule_err(warmup(5.0, 5.0, false), "max_epochs");
    assert!(matches!(
        warmup(1.0, 5.0, false).validate(),
        Err(Error::InvalidConfig(_))
    ));
    assert!(warmup(1.0, 5.0, true).validate().is_ok());
}

#[test]
fn plateau_hyper_parameters() {
    let opt = sgd(SgdConfig::default()).unwrap();
    let with = |f: fn(&mut ReduceLrOnPlateauConfig)| {
        let mut c = ReduceLrOnPlateauConfig::default();
        f(&mut c);
        ReduceLrOnPlateau::new(c, &opt)
    };
    invalid(with(|c| c.factor = 1.0), "factor");
    invalid(with(|c| c.threshold = -0.1), "threshold");
    invalid(with(|c| c.min_lr = -1.0), "min_lr");
    invalid(with(|c| c.eps = -1.0), "eps");
}

#[test]
fn plateau_needs_a_finite_metric() {
    let mut opt = sgd(SgdConfig::default()).unwrap();
    let mut s = ReduceLrOnPlateau::new(ReduceLrOnPlateauConfig::default(), &opt).unwrap();
    assert!(matches!(
        s.step(&mut opt, None),
        Err(Error::MissingMetric { .. })
    ));
    invalid(s.step(&mut opt, Some(f64::NAN)), "metric");
}

#[test]
fn one_cycle_cannot_step_past_its_end() {
    let mut opt = sgd(SgdConfig {
        momentum: 0.9,
        ..Default::default()
    })
    .unwrap();
    let mut s = Scheduler::new(Schedule::one_cycle(0.1, 4), &mut opt).unwrap();
    for _ in 0..4 {
        s.step(&mut opt, None).unwrap();
    }
    assert!(matches!(
        s.step(&mut opt, None),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn scheduler_contract() {
    let mut opt = sgd(SgdConfig::default()).unwrap();
    let plateau = ReduceLrOnPlateau::new(ReduceLrOnPlateauConfig::default(), &opt).unwrap();
    let contract = LrSchedulerConfig::default();
    assert_eq!(contract.interval, Interval::Epoch);
    assert!(matches!(
        contract.validate(&plateau),
        Err(Error::InvalidConfig(_))
    ));
    let monitored = LrSchedulerConfig {
        monitor: Some("val_loss".into()),
        ..Default::default()
    };
    monitored.validate(&plateau).unwrap();
    let zero = LrSchedulerConfig {
        frequency: 0,
        ..monitored.clone()
    };
    invalid(zero.validate(&plateau), "frequency");
    let step = Scheduler::new(Schedule::ExponentialLr { gamma: 0.9 }, &mut opt).unwrap();
    contract.validate(&step).unwrap();

    let logged = HashMap::from([("train_loss".to_string(), 1.0), ("lr".to_string(), 0.1)]);
    match monitored.metric(&logged) {
        Err(Error::MissingMetric { monitor, available }) => {
            assert_eq!(monitor, "val_loss");
            assert_eq!(available, ["lr", "train_loss"]);
        }
        other => panic!("{other:?}"),
    }
    let lenient = LrSchedulerConfig {
        strict: false,
        ..monitored.clone()
    };
    assert_eq!(lenient.metric(&logged).unwrap(), None);
    let logged = HashMap::from([("val_loss".to_string(), 0.5)]);
    assert_eq!(monitored.metric(&logged).unwrap(), Some(0.5));
    assert_eq!(contract.metric(&logged).unwrap(), None);
}

#[test]
fn closed_form_warmup_does_not_overshoot() {
    let mut opt = sgd(SgdConfig {
        lr: 0.1,
        ..Default::default()
    })
    .unwrap();
    let schedule = Schedule::LinearWarmupCosineAnnealingLr {
        warmup_epochs: 2.5,
        max_epochs: 10.0,
        warmup_start_lr: 0.01,
        eta_min: 0.0,
        closed_form: true,
    };
    let mut s = Scheduler::new(schedule, &mut opt).unwrap();
    let mut lrs = vec![opt.lr(0).unwrap()];
    for _ in 0..15 {
        s.step(&mut opt, None).unwrap();
        lrs.push(opt.lr(0).unwrap());
    }
    assert!((lrs[0] - 0.01).abs() < 1e-15);
    assert!(lrs.iter().all(|&lr| lr <= 0.1 + 1e-15), "{lrs:?}");
    assert!(
        lrs.windows(2).take(2).all(|w| w[1] > w[0]),
        "warmup increases"
    );
    assert!(
        lrs[10].abs() < 1e-15 && lrs[15].abs() < 1e-15,
        "stays at eta_min after max_epochs"
    );
}

#[test]
fn an_optimizer_without_parameters() {
    let e = Sgd::new(vec![ParamGroup::new("empty", vec![])], SgdConfig::default()).unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)));
    assert!(matches!(
        Adam::new(vec![], AdamConfig::default()),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn groups_can_have_their_own_hyper_parameters() {
    let (a, b) = (var(2), var(2));
    let opt = Sgd::with_group_configs(vec![
        (
            ParamGroup::from_vars("a", vec![a]),
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                ..Default::default()
            },
        ),
        (
            ParamGroup::from_vars("b", vec![b]).with_lr(0.5),
            SgdConfig {
                lr: 0.1,
                ..Default::default()
            },
        ),
    ])
    .unwrap();
    assert_eq!(opt.config(0).unwrap().momentum, 0.9);
    assert_eq!(opt.config(1).unwrap().momentum, 0.0);
    assert_eq!(
        opt.lr(1).unwrap(),
        0.5,
        "the group's override applies on top"
    );
    let bad = Adam::with_group_configs(vec![(
        ParamGroup::from_vars("a", vec![var(1)]),
        AdamConfig {
            eps: 0.0,
            ..Default::default()
        },
    )]);
    invalid(bad, "eps");
}
