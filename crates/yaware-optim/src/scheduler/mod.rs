//! Learning-rate schedulers. The scheduler owns the learning rate: it reads each group's base
//! learning rate from the optimizer when it is built and sets the new rates on every step.

mod plateau;
mod schedules;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

pub use plateau::{PlateauMode, ReduceLrOnPlateau, ReduceLrOnPlateauConfig, ThresholdMode};
pub use schedules::{Schedule, Scheduler};

use crate::error::{Error, Result, check};
use crate::optimizer::Optimizer;

/// A learning-rate scheduler, chosen at run time (object safe).
pub trait LrScheduler: Send {
    /// Advances one tick and sets the new learning rates on `optimizer`. A scheduler that
    /// [`needs_metric`](LrScheduler::needs_metric) fails with [`Error::MissingMetric`] on `None`.
    fn step(&mut self, optimizer: &mut dyn Optimizer, metric: Option<f64>) -> Result<()>;

    /// Whether [`step`](LrScheduler::step) needs a metric (ReduceLROnPlateau).
    fn needs_metric(&self) -> bool {
        false
    }

    /// The learning rates set by the last step (one per group).
    fn last_lrs(&self) -> &[f64];

    /// Ticks taken so far (PyTorch's `last_epoch`).
    fn last_epoch(&self) -> u64;

    /// The scheduler's state as named tensors, for resuming.
    fn state_tensors(&self) -> Result<HashMap<String, Tensor>>;

    /// Restores state written by [`state_tensors`](LrScheduler::state_tensors).
    fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
}

impl dyn LrScheduler + '_ {
    /// Writes the state to a safetensors file.
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        Ok(candle_core::safetensors::save(
            &self.state_tensors()?,
            path,
        )?)
    }

    /// Reads state written by `save_state`.
    pub fn load_state(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let state = candle_core::safetensors::load(path, &Device::Cpu)?;
        self.load_state_tensors(&state)
    }
}

/// When a scheduler steps: after every optimizer step, or at the end of every epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interval {
    /// After each optimizer step.
    Step,
    /// At the end of each epoch (Lightning's default).
    #[default]
    Epoch,
}

/// Lightning's `lr_scheduler_config` as data: when the trainer steps the scheduler, and which
/// logged metric it feeds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedulerConfig {
    /// Step or epoch (default epoch).
    pub interval: Interval,
    /// Step the scheduler every `frequency` intervals (default 1).
    pub frequency: usize,
    /// The logged metric a plateau scheduler monitors (e.g. `"val_loss"`).
    pub monitor: Option<String>,
    /// A missing monitored metric is an error (default true) rather than a skipped step.
    pub strict: bool,
    /// Name under which a learning-rate monitor logs this scheduler.
    pub name: Option<String>,
}

impl Default for LrSchedulerConfig {
    fn default() -> Self {
        Self {
            interval: Interval::Epoch,
            frequency: 1,
            monitor: None,
            strict: true,
            name: None,
        }
    }
}

impl LrSchedulerConfig {
    /// Checks the contract for a scheduler: `frequency ≥ 1`, and a monitor for a scheduler that
    /// needs a metric (the reference only fails at fit time).
    pub fn validate(&self, scheduler: &dyn LrScheduler) -> Result<()> {
        check(
            "frequency",
            self.frequency as f64,
            self.frequency >= 1,
            "must be >= 1",
        )?;
        if scheduler.needs_metric() && self.monitor.is_none() {
            return Err(Error::InvalidConfig(
                "ReduceLROnPlateau needs a `monitor`: the name of the logged metric it steps on"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The monitored metric among `logged`: `Ok(None)` without a monitor, or when it is missing
    /// and `strict` is false (the step is then skipped); [`Error::MissingMetric`] listing the
    /// logged metrics when it is missing and `strict` is true.
    pub fn metric(&self, logged: &HashMap<String, f64>) -> Result<Option<f64>> {
        let Some(monitor) = &self.monitor else {
            return Ok(None);
        };
        match logged.get(monitor) {
            Some(v) => Ok(Some(*v)),
            None if !self.strict => Ok(None),
            None => {
                let mut available: Vec<String> = logged.keys().cloned().collect();
                available.sort();
                Err(Error::MissingMetric {
                    monitor: monitor.clone(),
                    available,
                })
            }
        }
    }
}

/// Base learning rates of every group of `optimizer`.
pub(crate) fn group_lrs(optimizer: &dyn Optimizer) -> Result<Vec<f64>> {
    (0..optimizer.num_groups())
        .map(|g| optimizer.lr(g))
        .collect()
}

pub(crate) fn set_lrs(optimizer: &mut dyn Optimizer, lrs: &[f64]) -> Result<()> {
    if lrs.len() != optimizer.num_groups() {
        return Err(Error::State(format!(
            "the scheduler has {} groups, the optimizer {}",
            lrs.len(),
            optimizer.num_groups()
        )));
    }
    lrs.iter()
        .enumerate()
        .try_for_each(|(g, &lr)| optimizer.set_lr(g, lr))
}

pub(crate) fn f64s_tensor(v: &[f64]) -> Result<Tensor> {
    Ok(Tensor::new(v, &Device::Cpu)?)
}

pub(crate) fn read_f64s(state: &HashMap<String, Tensor>, key: &str) -> Result<Vec<f64>> {
    let t = state
        .get(key)
        .ok_or_else(|| Error::State(format!("missing `{key}`")))?;
    Ok(t.to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?)
}
