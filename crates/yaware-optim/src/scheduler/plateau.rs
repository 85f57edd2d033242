//! `ReduceLROnPlateau`: lower the learning rate when a monitored metric stops improving.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::{LrScheduler, f64s_tensor, group_lrs, read_f64s, set_lrs};
use crate::error::{Error, Result, check, check_non_negative};
use crate::optimizer::{Optimizer, read_step};

/// Whether lower or higher metric values are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlateauMode {
    /// Lower is better (a loss).
    #[default]
    Min,
    /// Higher is better (an accuracy).
    Max,
}

/// How `threshold` defines a significant improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThresholdMode {
    /// Relative: better than `best·(1 ∓ threshold)`.
    #[default]
    Rel,
    /// Absolute: better than `best ∓ threshold`.
    Abs,
}

/// Hyper-parameters of [`ReduceLrOnPlateau`] (PyTorch's names and defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct ReduceLrOnPlateauConfig {
    /// Min or max (default min).
    pub mode: PlateauMode,
    /// Multiplier of the learning rate on a plateau (in [0, 1), default 0.1).
    pub factor: f64,
    /// Epochs without improvement tolerated before reducing (default 10).
    pub patience: u64,
    /// Significance of an improvement (default 1e-4).
    pub threshold: f64,
    /// Relative or absolute threshold (default relative).
    pub threshold_mode: ThresholdMode,
    /// Epochs to wait after a reduction before counting bad epochs again (default 0).
    pub cooldown: u64,
    /// Lower bound of the learning rate, one for all groups (default 0).
    pub min_lr: f64,
    /// Reductions smaller than this are skipped (default 1e-8).
    pub eps: f64,
}

impl Default for ReduceLrOnPlateauConfig {
    fn default() -> Self {
        Self {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
            eps: 1e-8,
        }
    }
}

impl ReduceLrOnPlateauConfig {
    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<()> {
        check(
            "factor",
            self.factor,
            (0.0..1.0).contains(&self.factor),
            "must be in [0, 1)",
        )?;
        check_non_negative("threshold", self.threshold)?;
        check_non_negative("min_lr", self.min_lr)?;
        check_non_negative("eps", self.eps)
    }
}

/// `torch.optim.lr_scheduler.ReduceLROnPlateau`. Each step takes the monitored metric: if it is
/// not better than the best so far (strictly, by `threshold`), a bad epoch is counted; more
/// than `patience` bad epochs reduce every group's rate to `max(lr·factor, min_lr)` (skipped
/// when the change is ≤ `eps`) and start the cooldown.
#[derive(Debug, Clone)]
pub struct ReduceLrOnPlateau {
    config: ReduceLrOnPlateauConfig,
    best: f64,
    num_bad_epochs: u64,
    cooldown_counter: u64,
    last_epoch: u64,
    last_lrs: Vec<f64>,
}

impl ReduceLrOnPlateau {
    /// A scheduler over `optimizer`'s groups (their current rates are the starting point).
    pub fn new(config: ReduceLrOnPlateauConfig, optimizer: &dyn Optimizer) -> Result<Self> {
        config.validate()?;
        let best = match config.mode {
            PlateauMode::Min => f64::INFINITY,
            PlateauMode::Max => f64::NEG_INFINITY,
        };
        let last_lrs = group_lrs(optimizer)?;
        Ok(Self {
            config,
            best,
            num_bad_epochs: 0,
            cooldown_counter: 0,
            last_epoch: 0,
            last_lrs,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ReduceLrOnPlateauConfig {
        &self.config
    }

    /// The best metric seen so far.
    pub fn best(&self) -> f64 {
        self.best
    }

    fn is_better(&self, a: f64) -> bool {
        let (best, t) = (self.best, self.config.threshold);
        match (self.config.mode, self.config.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - t),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - t,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (t + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + t,
        }
    }
}

impl LrScheduler for ReduceLrOnPlateau {
    fn step(&mut self, optimizer: &mut dyn Optimizer, metric: Option<f64>) -> Result<()> {
        let current = metric.ok_or_else(|| Error::MissingMetric {
            monitor: "the monitored metric".into(),
            available: Vec::new(),
        })?;
        check("metric", current, !current.is_nan(), "must not be NaN")?;
        self.last_epoch += 1;
        if self.is_better(current) {
            self.best = current;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0;
        }
        let mut lrs = group_lrs(optimizer)?;
        if self.num_bad_epochs > self.config.patience {
            for lr in &mut lrs {
                let new = (*lr * self.config.factor).max(self.config.min_lr);
                if *lr - new > self.config.eps {
                    *lr = new;
                }
            }
            set_lrs(optimizer, &lrs)?;
            self.cooldown_counter = self.config.cooldown;
            self.num_bad_epochs = 0;
        }
        self.last_lrs = lrs;
        Ok(())
    }

    fn needs_metric(&self) -> bool {
        true
    }

    fn last_lrs(&self) -> &[f64] {
        &self.last_lrs
    }

    fn last_epoch(&self) -> u64 {
        self.last_epoch
    }

    fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let int = |v: u64| Tensor::new(v as i64, &Device::Cpu);
        Ok(HashMap::from([
            ("last_epoch".to_string(), int(self.last_epoch)?),
            ("num_bad_epochs".to_string(), int(self.num_bad_epochs)?),
            ("cooldown_counter".to_string(), int(self.cooldown_counter)?),
            ("best".to_string(), Tensor::new(self.best, &Device::Cpu)?),
            ("last_lrs".to_string(), f64s_tensor(&self.last_lrs)?),
        ]))
    }

    fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let best = read_f64s(state, "best")?;
        let last_lrs = read_f64s(state, "last_lrs")?;
        if best.len() != 1 || last_lrs.len() != self.last_lrs.len() {
            return Err(Error::State(
                "saved plateau state does not fit this scheduler".into(),
            ));
        }
        self.last_epoch = read_step(state, "last_epoch")?;
        self.num_bad_epochs = read_step(state, "num_bad_epochs")?;
        self.cooldown_counter = read_step(state, "cooldown_counter")?;
        self.best = best[0];
        self.last_lrs = last_lrs;
        Ok(())
    }
}
