//! Time-based schedules, in PyTorch's recursive ("chainable") forms so the learning rates
//! match PyTorch's bit for bit.

use std::collections::HashMap;
use std::f64::consts::PI;

use candle_core::Tensor;

use super::{LrScheduler, f64s_tensor, group_lrs, read_f64s, set_lrs};
use crate::error::{Error, Result, check};
use crate::optimizer::Optimizer;

/// A time-based learning-rate schedule (PyTorch's class names and arguments). `k` below is the
/// scheduler's tick (`last_epoch`), `b` a group's base learning rate.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// `StepLR`: multiply by `gamma` every `step_size` ticks.
    StepLr {
        /// Ticks between decays (> 0).
        step_size: u64,
        /// Decay factor.
        gamma: f64,
    },
    /// `MultiStepLR`: multiply by `gamma` at each milestone (a repeated milestone decays once
    /// per repetition).
    MultiStepLr {
        /// Ticks at which to decay.
        milestones: Vec<u64>,
        /// Decay factor.
        gamma: f64,
    },
    /// `ExponentialLR`: multiply by `gamma` every tick.
    ExponentialLr {
        /// Decay factor.
        gamma: f64,
    },
    /// `CosineAnnealingLR`: `η + (b − η)(1 + cos(πk/T))/2`, periodic with period `2T` past
    /// `T_max`, as PyTorch's recursion is.
    CosineAnnealingLr {
        /// Half period `T_max` (> 0).
        t_max: u64,
        /// Minimum learning rate `η`.
        eta_min: f64,
    },
    /// `LinearLR`: from `b·start_factor` to `b·end_factor` over `total_iters` ticks.
    LinearLr {
        /// Factor at tick 0 (in (0, 1]).
        start_factor: f64,
        /// Factor at tick `total_iters` (in [0, 1]).
        end_factor: f64,
        /// Length of the ramp.
        total_iters: u64,
    },
    /// `OneCycleLR` with cosine annealing: warm up from `max_lr/div_factor` to `max_lr` over
    /// `pct_start·total_steps` ticks, then anneal to `max_lr/(div_factor·final_div_factor)`;
    /// momentum (SGD's, or Adam's β1) cycles the other way when `cycle_momentum`.
    OneCycleLr {
        /// Peak learning rate.
        max_lr: f64,
        /// Length of the cycle; stepping past it is an error.
        total_steps: u64,
        /// Fraction of the cycle spent warming up (default 0.3).
        pct_start: f64,
        /// `initial_lr = max_lr / div_factor` (default 25).
        div_factor: f64,
        /// `min_lr = initial_lr / final_div_factor` (default 1e4).
        final_div_factor: f64,
        /// Cycle the momentum (default true).
        cycle_momentum: bool,
        /// Momentum at the peak learning rate (default 0.85).
        base_momentum: f64,
        /// Momentum at the start and end (default 0.95).
        max_momentum: f64,
    },
    /// nidl's `LinearWarmupCosineAnnealingLR`: linear warmup from `warmup_start_lr` over
    /// `warmup_epochs` ticks, then cosine annealing to `eta_min` at `max_epochs`.
    ///
    /// With `closed_form = false` (the reference), the recursion is reproduced exactly,
    /// including its flaws: the warmup step is `(b − s0)/(W − 1)` (it reaches `b` one tick
    /// early), and a non-integer `W` overshoots `b` (W = 2.5 peaks at 1.3·b with s0 = 0.1·b) and
    /// carries the overshoot through the cosine. With `closed_form = true` (the fixed variant):
    /// `s0 + (b − s0)·k/W` for `k < W`, then `η + (b − η)(1 + cos(π(k − W)/(M − W)))/2` up to
    /// `M`, and `η` afterwards: no overshoot, no restart.
    LinearWarmupCosineAnnealingLr {
        /// Warmup length `W` in ticks (may be fractional, as nidl's estimator passes it).
        warmup_epochs: f64,
        /// End of the cosine `M` (> W).
        max_epochs: f64,
        /// Learning rate at tick 0 (default 0).
        warmup_start_lr: f64,
        /// Final learning rate (default 0).
        eta_min: f64,
        /// Use the fixed closed form instead of the reference recursion.
        closed_form: bool,
    },
}

impl Schedule {
    /// `OneCycleLR` with PyTorch's defaults.
    pub fn one_cycle(max_lr: f64, total_steps: u64) -> Self {
        Schedule::OneCycleLr {
            max_lr,
            total_steps,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
        }
    }

    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<()> {
        let finite = |name, v: f64| check(name, v, v.is_finite(), "must be finite");
        match self {
            Schedule::StepLr { step_size, gamma } => {
                check(
                    "step_size",
                    *step_size as f64,
                    *step_size > 0,
                    "must be > 0",
                )?;
                finite("gamma", *gamma)
            }
            Schedule::MultiStepLr { gamma, .. } | Schedule::ExponentialLr { gamma } => {
                finite("gamma", *gamma)
            }
            Schedule::CosineAnnealingLr { t_max, eta_min } => {
                check("T_max", *t_max as f64, *t_max > 0, "must be > 0")?;
                finite("eta_min", *eta_min)
            }
            Schedule::LinearLr {
                start_factor,
                end_factor,
                total_iters,
            } => {
                check(
                    "start_factor",
                    *start_factor,
                    *start_factor > 0.0 && *start_factor <= 1.0,
                    "must be in (0, 1]",
                )?;
                check(
                    "end_factor",
                    *end_factor,
                    (0.0..=1.0).contains(end_factor),
                    "must be in [0, 1]",
                )?;
                check(
                    "total_iters",
                    *total_iters as f64,
                    *total_iters > 0,
                    "must be > 0",
                )
            }
            Schedule::OneCycleLr {
                max_lr,
                total_steps,
                pct_start,
                div_factor,
                final_div_factor,
                ..
            } => {
                check(
                    "max_lr",
                    *max_lr,
                    *max_lr > 0.0 && max_lr.is_finite(),
                    "must be finite and > 0",
                )?;
                check(
                    "total_steps",
                    *total_steps as f64,
                    *total_steps > 1,
                    "must be > 1",
                )?;
                check(
                    "pct_start",
                    *pct_start,
                    *pct_start > 0.0 && *pct_start < 1.0,
                    "must be in (0, 1)",
                )?;
                check("div_factor", *div_factor, *div_factor > 0.0, "must be > 0")?;
                check(
                    "final_div_factor",
                    *final_div_factor,
                    *final_div_factor > 0.0,
                    "must be > 0",
                )
            }
            Schedule::LinearWarmupCosineAnnealingLr {
                warmup_epochs,
                max_epochs,
                warmup_start_lr,
                eta_min,
                closed_form,
            } => {
                check(
                    "warmup_epochs",
                    *warmup_epochs,
                    *warmup_epochs >= 0.0 && warmup_epochs.is_finite(),
                    "must be finite and >= 0",
                )?;
                check(
                    "max_epochs",
                    *max_epochs,
                    max_epochs > warmup_epochs && max_epochs.is_finite(),
                    "must be finite and > warmup_epochs",
                )?;
                if !closed_form && *warmup_epochs > 0.0 && *warmup_epochs <= 1.0 {
                    // The reference divides by W − 1.
                    return Err(Error::InvalidConfig(format!(
                        "the reference warmup recursion divides by warmup_epochs − 1, so warmup_epochs = {warmup_epochs} is unusable: use closed_form = true"
                    )));
                }
                finite("warmup_start_lr", *warmup_start_lr)?;
                finite("eta_min", *eta_min)
            }
        }
    }

    /// The learning rate at tick `k` given the previous one (`prev`) and the base `b`.
    fn lr(&self, k: u64, prev: f64, b: f64) -> f64 {
        let kf = k as f64;
        match self {
            Schedule::StepLr { step_size, gamma } => {
                if k == 0 || !k.is_multiple_of(*step_size) {
                    prev
                } else {
                    prev * gamma
                }
            }
            Schedule::MultiStepLr { milestones, gamma } => {
                let count = milestones.iter().filter(|&&m| m == k).count();
                if k == 0 || count == 0 {
                    prev
                } else {
                    prev * gamma.powf(count as f64)
                }
            }
            Schedule::ExponentialLr { gamma } => {
                if k == 0 {
                    prev
                } else {
                    prev * gamma
                }
            }
            Schedule::CosineAnnealingLr { t_max, eta_min } => {
                let t = *t_max as f64;
                if k == 0 {
                    prev
                } else if (kf - 1.0 - t).rem_euclid(2.0 * t) == 0.0 {
                    prev + (b - eta_min) * (1.0 - (PI / t).cos()) / 2.0
                } else {
                    (1.0 + (PI * kf / t).cos()) / (1.0 + (PI * (kf - 1.0) / t).cos())
                        * (prev - eta_min)
                        + eta_min
                }
            }
            Schedule::LinearLr {
                start_factor,
                end_factor,
                total_iters,
            } => {
                if k == 0 {
                    prev * start_factor
                } else if k > *total_iters {
                    prev
                } else {
                    let n = *total_iters as f64;
                    prev * (1.0
                        + (end_factor - start_factor)
                            / (n * start_factor + (kf - 1.0) * (end_factor - start_factor)))
                }
            }
            Schedule::OneCycleLr { .. } => self.one_cycle_at(k).0,
            Schedule::LinearWarmupCosineAnnealingLr {
                warmup_epochs: w,
                max_epochs: m,
                warmup_start_lr: s0,
                eta_min,
                closed_form,
            } => {
                let (w, m, s0, eta) = (*w, *m, *s0, *eta_min);
                if *closed_form {
                    return if kf < w {
                        s0 + (b - s0) * kf / w
                    } else {
                        eta + (b - eta) * (1.0 + (PI * (kf - w).min(m - w) / (m - w)).cos()) / 2.0
                    };
                }
                if k == 0 {
                    s0
                } else if kf < w {
                    prev + (b - s0) / (w - 1.0)
                } else if kf == w {
                    b
                } else if (kf - 1.0 - m).rem_euclid(2.0 * (m - w)) == 0.0 {
                    prev + (b - eta) * (1.0 - (PI / (m - w)).cos()) / 2.0
                } else {
                    (1.0 + (PI * (kf - w) / (m - w)).cos())
                        / (1.0 + (PI * (kf - w - 1.0) / (m - w)).cos())
                        * (prev - eta)
                        + eta
                }
            }
        }
    }

    /// OneCycleLR's `(lr, momentum)` at tick `k` (closed form, as PyTorch computes it).
    fn one_cycle_at(&self, k: u64) -> (f64, f64) {
        let Schedule::OneCycleLr {
            max_lr,
            total_steps,
            pct_start,
            div_factor,
            final_div_factor,
            base_momentum,
            max_momentum,
            ..
        } = self
        else {
            unreachable!("one_cycle_at is only called on OneCycleLr");
        };
        let initial_lr = max_lr / div_factor;
        let min_lr = initial_lr / final_div_factor;
        let n = *total_steps as f64;
        let end1 = pct_start * n - 1.0;
        let phases = [
            (
                0.0,
                end1,
                initial_lr,
                *max_lr,
                *max_momentum,
                *base_momentum,
            ),
            (
                end1,
                n - 1.0,
                *max_lr,
                min_lr,
                *base_momentum,
                *max_momentum,
            ),
        ];
        let cos_anneal =
            |start: f64, end: f64, pct: f64| end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0);
        let kf = k as f64;
        let (start, end, lr0, lr1, m0, m1) = if kf <= end1 { phases[0] } else { phases[1] };
        let pct = (kf - start) / (end - start);
        (cos_anneal(lr0, lr1, pct), cos_anneal(m0, m1, pct))
    }
}

/// A [`Schedule`] bound to an optimizer's groups.
#[derive(Debug, Clone)]
pub struct Scheduler {
    schedule: Schedule,
    base_lrs: Vec<f64>,
    last_lrs: Vec<f64>,
    last_epoch: u64,
}

impl Scheduler {
    /// Reads the base learning rates from `optimizer` and sets the tick-0 rates (PyTorch's
    /// constructors take this initial step too). OneCycleLR also sets the momentum.
    pub fn new(schedule: Schedule, optimizer: &mut dyn Optimizer) -> Result<Self> {
        schedule.validate()?;
        let base_lrs = match &schedule {
            Schedule::OneCycleLr {
                max_lr, div_factor, ..
            } => vec![max_lr / div_factor; optimizer.num_groups()],
            _ => group_lrs(optimizer)?,
        };
        let mut s = Self {
            schedule,
            last_lrs: base_lrs.clone(),
            base_lrs,
            last_epoch: 0,
        };
        s.apply(optimizer, 0)?;
        Ok(s)
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The base learning rate of every group.
    pub fn base_lrs(&self) -> &[f64] {
        &self.base_lrs
    }

    fn apply(&mut self, optimizer: &mut dyn Optimizer, k: u64) -> Result<()> {
        let prev = if k == 0 {
            self.base_lrs.clone()
        } else {
            group_lrs(optimizer)?
        };
        let lrs: Vec<f64> = prev
            .iter()
            .zip(&self.base_lrs)
            .map(|(&p, &b)| self.schedule.lr(k, p, b))
            .collect();
        set_lrs(optimizer, &lrs)?;
        if let Schedule::OneCycleLr {
            cycle_momentum: true,
            ..
        } = self.schedule
        {
            let (_, momentum) = self.schedule.one_cycle_at(k);
            for g in 0..optimizer.num_groups() {
                optimizer.set_momentum(g, momentum)?;
            }
        }
        self.last_lrs = lrs;
        self.last_epoch = k;
        Ok(())
    }
}

impl LrScheduler for Scheduler {
    fn step(&mut self, optimizer: &mut dyn Optimizer, _metric: Option<f64>) -> Result<()> {
        let k = self.last_epoch + 1;
        if let Schedule::OneCycleLr { total_steps, .. } = self.schedule {
            // PyTorch still evaluates tick `total_steps` (past the schedule) and raises after.
            if k > total_steps {
                return Err(Error::InvalidConfig(format!(
                    "OneCycleLR stepped {k} times, more than total_steps = {total_steps}"
                )));
            }
        }
        self.apply(optimizer, k)
    }

    fn last_lrs(&self) -> &[f64] {
        &self.last_lrs
    }

    fn last_epoch(&self) -> u64 {
        self.last_epoch
    }

    fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        Ok(HashMap::from([
            (
                "last_epoch".to_string(),
                Tensor::new(self.last_epoch as i64, &candle_core::Device::Cpu)?,
            ),
            ("base_lrs".to_string(), f64s_tensor(&self.base_lrs)?),
            ("last_lrs".to_string(), f64s_tensor(&self.last_lrs)?),
        ]))
    }

    fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let base_lrs = read_f64s(state, "base_lrs")?;
        let last_lrs = read_f64s(state, "last_lrs")?;
        if base_lrs.len() != self.base_lrs.len() || last_lrs.len() != self.base_lrs.len() {
            return Err(Error::State(format!(
                "saved state has {} groups, this scheduler {}",
                base_lrs.len(),
                self.base_lrs.len()
            )));
        }
        let last_epoch = crate::optimizer::read_step(state, "last_epoch")?;
        self.base_lrs = base_lrs;
        self.last_lrs = last_lrs;
        self.last_epoch = last_epoch;
        Ok(())
    }
}
