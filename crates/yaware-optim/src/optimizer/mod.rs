//! The object-safe [`Optimizer`] trait, state save/load, and the tensor helpers the update rules
//! share.

mod adam;
mod fused;
mod sgd;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

pub use adam::{Adam, AdamConfig, AdamW, AdamWConfig};
pub use sgd::{Sgd, SgdConfig};

use crate::error::{Error, Result};
use crate::group::ParamGroup;

/// An optimizer over candle [`Var`]s, chosen at run time (object safe).
///
/// The learning rate belongs to each parameter group; schedulers set it through
/// [`set_lr`](Optimizer::set_lr).
pub trait Optimizer: Send {
    /// Updates every parameter that has a gradient in `grads` (parameters without one are left
    /// alone, as PyTorch skips `p.grad is None`).
    fn step(&mut self, grads: &GradStore) -> Result<()>;

    /// Forgets the optimizer state: moments, momentum buffers and step counts.
    fn zero_state(&mut self);

    /// Number of parameter groups.
    fn num_groups(&self) -> usize;

    /// The name of group `group`.
    fn group_name(&self, group: usize) -> Result<&str>;

    /// The learning rate of group `group`.
    fn lr(&self, group: usize) -> Result<f64>;

    /// Sets the learning rate of group `group` (must be finite and ≥ 0).
    fn set_lr(&mut self, group: usize, lr: f64) -> Result<()>;

    /// The momentum of group `group` (SGD's momentum, Adam's β1), for schedulers that cycle it.
    fn momentum(&self, group: usize) -> Result<f64>;

    /// Sets the momentum of group `group` (SGD's momentum, Adam's β1).
    fn set_momentum(&mut self, group: usize, momentum: f64) -> Result<()>;

    /// The state as named tensors (`<group>.<param>.<state>`, plus `<group>.lr`), on the CPU.
    fn state_tensors(&self) -> Result<HashMap<String, Tensor>>;

    /// Restores the state written by [`state_tensors`](Optimizer::state_tensors); the groups and
    /// parameters must be the same.
    fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
}

impl dyn Optimizer + '_ {
    /// The learning rates of every group.
    pub fn lrs(&self) -> Vec<f64> {
        (0..self.num_groups())
            .filter_map(|g| self.lr(g).ok())
            .collect()
    }

    /// Writes the state to a safetensors file, so training can resume bit for bit.
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

/// One validated parameter group of an optimizer.
#[derive(Debug, Clone)]
pub(crate) struct Group<C> {
    pub(crate) name: String,
    pub(crate) params: Vec<(String, Var)>,
    pub(crate) config: C,
}

/// Hyper-parameters that a [`ParamGroup`] can override.
pub(crate) trait GroupConfig: Clone {
    fn lr_mut(&mut self) -> &mut f64;
    fn weight_decay_mut(&mut self) -> &mut f64;
    fn validate(&self) -> Result<()>;
}

/// Applies each group's overrides to `defaults`, validates, and refuses a parameter that is in
/// two groups (PyTorch does too).
pub(crate) fn build_groups<C: GroupConfig>(
    groups: Vec<ParamGroup>,
    defaults: &C,
) -> Result<Vec<Group<C>>> {
    defaults.validate()?;
    build_groups_with(groups.into_iter().map(|g| (g, defaults.clone())).collect())
}

/// Groups with a full configuration each (the group's own lr / weight-decay overrides, when
/// set, still apply on top), validated; an optimizer with no parameter at all, two groups of
/// one name or a parameter in two groups are errors.
pub(crate) fn build_groups_with<C: GroupConfig>(
    groups: Vec<(ParamGroup, C)>,
) -> Result<Vec<Group<C>>> {
    if groups.iter().all(|(g, _)| g.params.is_empty()) {
        return Err(Error::InvalidConfig(
            "optimizer got an empty parameter list".into(),
        ));
    }
    let mut seen = HashSet::new();
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(groups.len());
    for (g, mut config) in groups {
        if !names.insert(g.name.clone()) {
            return Err(Error::InvalidConfig(format!(
                "two parameter groups are named `{}`",
                g.name
            )));
        }
        for (name, var) in &g.params {
            if !seen.insert(var.as_tensor().id()) {
                return Err(Error::InvalidConfig(format!(
                    "parameter `{name}` appears in more than one parameter group"
                )));
            }
        }
        if let Some(lr) = g.lr {
            *config.lr_mut() = lr;
        }
        if let Some(wd) = g.weight_decay {
            *config.weight_decay_mut() = wd;
        }
        config.validate()?;
        out.push(Group {
            name: g.name,
            params: g.params,
            config,
        });
    }
    Ok(out)
}

pub(crate) fn check_lr(lr: f64) -> Result<()> {
    crate::error::check_non_negative("lr", lr)
}

pub(crate) fn group_index<C>(groups: &[Group<C>], group: usize) -> Result<&Group<C>> {
    groups.get(group).ok_or(Error::NoSuchGroup {
        index: group,
        count: groups.len(),
    })
}

pub(crate) fn group_index_mut<C>(groups: &mut [Group<C>], group: usize) -> Result<&mut Group<C>> {
    let count = groups.len();
    groups.get_mut(group).ok_or(Error::NoSuchGroup {
        index: group,
        count,
    })
}

/// A 0-d tensor holding `v` with `like`'s dtype and device.
pub(crate) fn scalar_like(like: &Tensor, v: f64) -> Result<Tensor> {
    Ok(Tensor::new(v, like.device())?.to_dtype(like.dtype())?)
}

/// `a + alpha·b` (PyTorch's `a.add(b, alpha=alpha)`).
pub(crate) fn add_scaled(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    if alpha == 1.0 {
        Ok((a + b)?)
    } else {
        Ok((a + b.affine(alpha, 0.0)?)?)
    }
}

/// `t / s` as a true division (candle's `Tensor / f64` multiplies by the reciprocal).
pub(crate) fn div_scalar(t: &Tensor, s: f64) -> Result<Tensor> {
    Ok(t.broadcast_div(&scalar_like(t, s)?)?)
}

/// State tensors are saved on the CPU; step counters as 0-d i64.
pub(crate) fn to_cpu(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?)
}

pub(crate) fn step_tensor(step: u64) -> Result<Tensor> {
    Ok(Tensor::new(step as i64, &Device::Cpu)?)
}

pub(crate) fn read_step(state: &HashMap<String, Tensor>, key: &str) -> Result<u64> {
    let t = state
        .get(key)
        .ok_or_else(|| Error::State(format!("missing `{key}`")))?;
    let v = t.to_dtype(DType::I64)?.to_scalar::<i64>()?;
    u64::try_from(v).map_err(|_| Error::State(format!("`{key}` = {v} is negative")))
}

pub(crate) fn read_lr(state: &HashMap<String, Tensor>, group: &str) -> Result<f64> {
    let key = format!("{group}.lr");
    let t = state
        .get(&key)
        .ok_or_else(|| Error::State(format!("missing `{key}`")))?;
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Reads a state tensor for `var`, checking its shape, onto `var`'s device and dtype.
pub(crate) fn read_like(state: &HashMap<String, Tensor>, key: &str, var: &Var) -> Result<Tensor> {
    let t = state
        .get(key)
        .ok_or_else(|| Error::State(format!("missing `{key}`")))?;
    if t.shape() != var.shape() {
        return Err(Error::State(format!(
            "`{key}` has shape {:?}, the parameter has {:?}",
            t.shape(),
            var.shape()
        )));
    }
    Ok(t.to_dtype(var.dtype())?.to_device(var.device())?)
}

/// Refuses state files with keys this optimizer would not read (another model's state).
pub(crate) fn check_no_extra_keys(
    state: &HashMap<String, Tensor>,
    expected: &HashSet<String>,
) -> Result<()> {
    let mut extra: Vec<&String> = state.keys().filter(|k| !expected.contains(*k)).collect();
    extra.sort();
    match extra.first() {
        Some(k) => Err(Error::State(format!(
            "unexpected `{k}` ({} unknown keys)",
            extra.len()
        ))),
        None => Ok(()),
    }
}
