//! Parity of the learning-rate schedulers with PyTorch / nidl on every sequence of
//! `lr_schedulers.safetensors` (rel. 1e-12; ReduceLROnPlateau exactly, its sequences being
//! piecewise constant), and resume: saving scheduler and optimizer state mid-way and loading
//! into fresh objects continues with the same learning rates.

use candle_core::{DType, Device, Var};
use serde_json::Value;
use yaware_golden::{Golden, check_close};
use yaware_optim::{
    LrScheduler, Optimizer, ParamGroup, PlateauMode, ReduceLrOnPlateau, ReduceLrOnPlateauConfig,
    Schedule, Scheduler, Sgd, SgdConfig, ThresholdMode,
};

const RTOL: f64 = 1e-12;

fn kw_f(kw: &Value, key: &str, default: f64) -> f64 {
    kw.get(key).and_then(Value::as_f64).unwrap_or(default)
}

fn kw_u(kw: &Value, key: &str, default: u64) -> u64 {
    kw.get(key).and_then(Value::as_u64).unwrap_or(default)
}

/// The optimizer of a case: `SGD(lr=base_lr[, momentum=…])`, as the metadata says.
fn optimizer(case: &Value) -> Sgd {
    let desc = case["optimizer"].as_str().expect("optimizer");
    let momentum = desc
        .split("momentum=")
        .nth(1)
        .map(|rest| {
            rest.trim_end_matches(')')
                .trim()
                .parse::<f64>()
                .expect("momentum")
        })
        .unwrap_or(0.0);
    let p = Var::zeros(3, DType::F64, &Device::Cpu).unwrap();
    let lr = case["base_lr"].as_f64().expect("base_lr");
    Sgd::new(
        vec![ParamGroup::from_vars("default", vec![p])],
        SgdConfig {
            lr,
            momentum,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The scheduler of a case, from its class name and keyword arguments (our defaults are
/// PyTorch's, so only the given arguments are set).
fn scheduler(case: &Value, opt: &mut dyn Optimizer) -> Box<dyn LrScheduler> {
    let kw = &case["kwargs"];
    let schedule = match case["scheduler"].as_str().unwrap() {
        "StepLR" => Schedule::StepLr {
            step_size: kw_u(kw, "step_size", 0),
            gamma: kw_f(kw, "gamma", 0.1),
        },
        "MultiStepLR" => Schedule::MultiStepLr {
            milestones: kw["milestones"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_u64().unwrap())
                .collect(),
            gamma: kw_f(kw, "gamma", 0.1),
        },
        "ExponentialLR" => Schedule::ExponentialLr {
            gamma: kw_f(kw, "gamma", f64::NAN),
        },
        "CosineAnnealingLR" => Schedule::CosineAnnealingLr {
            t_max: kw_u(kw, "T_max", 0),
            eta_min: kw_f(kw, "eta_min", 0.0),
        },
        "LinearLR" => Schedule::LinearLr {
            start_factor: kw_f(kw, "start_factor", 1.0 / 3.0),
            end_factor: kw_f(kw, "end_factor", 1.0),
            total_iters: kw_u(kw, "total_iters", 5),
        },
        "OneCycleLR" => {
            let Schedule::OneCycleLr {
                pct_start,
                div_factor,
                final_div_factor,
                base_momentum,
                max_momentum,
                ..
            } = Schedule::one_cycle(1.0, 2)
            else {
                unreachable!()
            };
            Schedule::OneCycleLr {
                max_lr: kw_f(kw, "max_lr", f64::NAN),
                total_steps: kw_u(kw, "total_steps", 0),
                pct_start: kw_f(kw, "pct_start", pct_start),
                div_factor: kw_f(kw, "div_factor", div_factor),
                final_div_factor: kw_f(kw, "final_div_factor", final_div_factor),
                cycle_momentum: kw
                    .get("cycle_momentum")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
                base_momentum: kw_f(kw, "base_momentum", base_momentum),
                max_momentum: kw_f(kw, "max_momentum", max_momentum),
            }
        }
        "LinearWarmupCosineAnnealingLR" => Schedule::LinearWarmupCosineAnnealingLr {
            warmup_epochs: kw_f(kw, "warmup_epochs", f64::NAN),
            max_epochs: kw_f(kw, "max_epochs", f64::NAN),
            warmup_start_lr: kw_f(kw, "warmup_start_lr", 0.0),
            eta_min: kw_f(kw, "eta_min", 0.0),
            closed_form: false,
        },
        "ReduceLROnPlateau" => {
            let d = ReduceLrOnPlateauConfig::default();
            let config = ReduceLrOnPlateauConfig {
                mode: match kw.get("mode").and_then(Value::as_str) {
                    Some("max") => PlateauMode::Max,
                    _ => PlateauMode::Min,
                },
                factor: kw_f(kw, "factor", d.factor),
                patience: kw_u(kw, "patience", d.patience),
                threshold: kw_f(kw, "threshold", d.threshold),
                threshold_mode: match kw.get("threshold_mode").and_then(Value::as_str) {
                    Some("abs") => ThresholdMode::Abs,
                    _ => ThresholdMode::Rel,
                },
                cooldown: kw_u(kw, "cooldown", d.cooldown),
                min_lr: kw_f(kw, "min_lr", d.min_lr),
                eps: kw_f(kw, "eps", d.eps),
            };
            return Box::new(ReduceLrOnPlateau::new(config, opt).unwrap());
        }
        other => panic!("unknown scheduler {other}"),
    };
    Box::new(Scheduler::new(schedule, opt).unwrap())
}

fn metric_at(g: &Golden, case: &Value, k: usize) -> Option<f64> {
    case.get("metrics")
        .and_then(Value::as_str)
        .map(|name| g.f64s(name)[k])
}

#[test]
fn every_schedule_matches_pytorch() {
    let Some(g) = Golden::open("lr_schedulers.safetensors") else {
        return;
    };
    let cases = g.json("cases");
    let cases = cases.as_array().expect("cases");
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let n_steps = case["n_steps"].as_u64().unwrap() as usize;
        let mut opt = optimizer(case);
        let mut sched = scheduler(case, &mut opt);
        let (mut lrs, mut momenta) = (vec![opt.lr(0).unwrap()], vec![opt.momentum(0).unwrap()]);
        for k in 0..n_steps {
            sched.step(&mut opt, metric_at(&g, case, k)).unwrap();
            lrs.push(opt.lr(0).unwrap());
            momenta.push(opt.momentum(0).unwrap());
            assert_eq!(sched.last_lrs(), [opt.lr(0).unwrap()], "{id}: last_lrs");
        }
        let rtol = if sched.needs_metric() { 0.0 } else { RTOL };
        if let Err(e) = check_close(
            &format!("{id}.lr"),
            &lrs,
            &g.f64s(&format!("{id}.lr")),
            rtol,
            0.0,
        ) {
            failures.push(e);
        }
        if g.has(&format!("{id}.momentum"))
            && let Err(e) = check_close(
                &format!("{id}.momentum"),
                &momenta,
                &g.f64s(&format!("{id}.momentum")),
                RTOL,
                0.0,
            )
        {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} sequences differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn resuming_a_schedule_from_saved_state_gives_the_same_rates() {
    let Some(g) = Golden::open("lr_schedulers.safetensors") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("yaware-sched-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for case in g.json("cases").as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let n_steps = case["n_steps"].as_u64().unwrap() as usize;
        let half = n_steps / 2;
        let mut opt = optimizer(case);
        let mut sched = scheduler(case, &mut opt);
        let mut full = Vec::new();
        for k in 0..n_steps {
            sched.step(&mut opt, metric_at(&g, case, k)).unwrap();
            full.push(opt.lr(0).unwrap());
        }
        let mut opt2 = optimizer(case);
        let mut sched2 = scheduler(case, &mut opt2);
        for k in 0..half {
            sched2.step(&mut opt2, metric_at(&g, case, k)).unwrap();
        }
        let (sp, op) = (
            dir.join(format!("{id}.sched")),
            dir.join(format!("{id}.opt")),
        );
        sched2.save_state(&sp).unwrap();
        (&opt2 as &dyn Optimizer).save_state(&op).unwrap();
        let mut opt3 = optimizer(case);
        let mut sched3 = scheduler(case, &mut opt3);
        (&mut opt3 as &mut dyn Optimizer).load_state(&op).unwrap();
        sched3.load_state(&sp).unwrap();
        assert_eq!(sched3.last_epoch(), half as u64);
        let mut resumed = full[..half].to_vec();
        for k in half..n_steps {
            sched3.step(&mut opt3, metric_at(&g, case, k)).unwrap();
            resumed.push(opt3.lr(0).unwrap());
        }
        assert_eq!(full, resumed, "{id}: resumed schedule differs");
    }
    std::fs::remove_dir_all(&dir).ok();
}
