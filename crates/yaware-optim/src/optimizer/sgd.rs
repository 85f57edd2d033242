//! Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay, as
//! `torch.optim.SGD`.

use std::collections::{HashMap, HashSet};

use candle_core::Tensor;
use candle_core::backprop::GradStore;

use super::{
    Group, GroupConfig, Optimizer, add_scaled, build_groups, build_groups_with, check_lr,
    check_no_extra_keys, group_index, group_index_mut, read_like, read_lr, to_cpu,
};
use crate::error::{Error, Result, check, check_non_negative};
use crate::group::ParamGroup;

/// Hyper-parameters of [`Sgd`] (PyTorch's names and defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Momentum factor μ (default 0).
    pub momentum: f64,
    /// Dampening τ of the momentum (default 0; not applied on the first step, as in PyTorch).
    pub dampening: f64,
    /// Nesterov momentum (default false; needs momentum > 0 and dampening = 0).
    pub nesterov: bool,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

impl GroupConfig for SgdConfig {
    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn weight_decay_mut(&mut self) -> &mut f64 {
        &mut self.weight_decay
    }

    fn validate(&self) -> Result<()> {
        check_lr(self.lr)?;
        check_non_negative("momentum", self.momentum)?;
        check(
            "dampening",
            self.dampening,
            self.dampening.is_finite(),
            "must be finite",
        )?;
        check_non_negative("weight_decay", self.weight_decay)?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::InvalidConfig(format!(
                "Nesterov momentum requires a momentum > 0 and zero dampening (momentum = {}, dampening = {})",
                self.momentum, self.dampening
            )));
        }
        Ok(())
    }
}

/// `torch.optim.SGD`: per step, `g ← g + wd·θ`; with momentum μ, `b ← g` on the first step and
/// `b ← μ·b + (1 − τ)·g` afterwards, the direction being `g + μ·b` (Nesterov) or `b`; then
/// `θ ← θ − lr·d`.
///
/// ```
/// use candle_core::{DType, Device, Var};
/// use yaware_optim::{Optimizer, ParamGroup, Sgd, SgdConfig};
///
/// let w = Var::ones(3, DType::F64, &Device::Cpu)?;
/// let config = SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() };
/// let mut sgd = Sgd::new(vec![ParamGroup::from_vars("default", vec![w.clone()])], config)?;
/// let loss = w.sqr()?.sum_all()?;       // gradient 2w
/// sgd.step(&loss.backward()?)?;
/// assert_eq!(w.to_vec1::<f64>()?, [0.8, 0.8, 0.8]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Sgd {
    groups: Vec<Group<SgdConfig>>,
    /// Momentum buffer per group and parameter (`None` before the first step).
    buffers: Vec<Vec<Option<Tensor>>>,
}

impl Sgd {
    /// An optimizer over `groups`, each taking `defaults` unless it overrides lr / weight decay.
    pub fn new(groups: Vec<ParamGroup>, defaults: SgdConfig) -> Result<Self> {
        let groups = build_groups(groups, &defaults)?;
        let buffers = groups.iter().map(|g| vec![None; g.params.len()]).collect();
        Ok(Self { groups, buffers })
    }

    /// An optimizer whose groups each have their own hyper-parameters (PyTorch's per-group
    /// `momentum`, `dampening`, …); a group's lr / weight-decay overrides apply on top.
    pub fn with_group_configs(groups: Vec<(ParamGroup, SgdConfig)>) -> Result<Self> {
        let groups = build_groups_with(groups)?;
        let buffers = groups.iter().map(|g| vec![None; g.params.len()]).collect();
        Ok(Self { groups, buffers })
    }

    /// The hyper-parameters of group `group`.
    pub fn config(&self, group: usize) -> Result<&SgdConfig> {
        Ok(&group_index(&self.groups, group)?.config)
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (group, buffers) in self.groups.iter().zip(&mut self.buffers) {
            let c = group.config;
            for ((_, var), buffer) in group.params.iter().zip(buffers.iter_mut()) {
                let Some(grad) = grads.get(var) else { continue };
                let theta = var.as_tensor();
                let mut g = grad.clone();
                if c.weight_decay != 0.0 {
                    g = add_scaled(&g, theta, c.weight_decay)?;
                }
                if c.momentum != 0.0 {
                    let b = match buffer.take() {
                        None => g.copy()?,
                        Some(b) => add_scaled(&b.affine(c.momentum, 0.0)?, &g, 1.0 - c.dampening)?,
                    };
                    g = if c.nesterov {
                        add_scaled(&g, &b, c.momentum)?
                    } else {
                        b.clone()
                    };
                    *buffer = Some(b);
                }
                var.set(&add_scaled(theta, &g, -c.lr)?)?;
            }
        }
        Ok(())
    }

    fn zero_state(&mut self) {
        self.buffers.iter_mut().flatten().for_each(|b| *b = None);
    }

    fn num_groups(&self) -> usize {
        self.groups.len()
    }

    fn group_name(&self, group: usize) -> Result<&str> {
        Ok(&group_index(&self.groups, group)?.name)
    }

    fn lr(&self, group: usize) -> Result<f64> {
        Ok(group_index(&self.groups, group)?.config.lr)
    }

    fn set_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        check_lr(lr)?;
        group_index_mut(&mut self.groups, group)?.config.lr = lr;
        Ok(())
    }

    fn momentum(&self, group: usize) -> Result<f64> {
        Ok(group_index(&self.groups, group)?.config.momentum)
    }

    fn set_momentum(&mut self, group: usize, momentum: f64) -> Result<()> {
        let g = group_index_mut(&mut self.groups, group)?;
        let mut config = g.config;
        config.momentum = momentum;
        config.validate()?;
        g.config = config;
        Ok(())
    }

    fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (group, buffers) in self.groups.iter().zip(&self.buffers) {
            out.insert(
                format!("{}.lr", group.name),
                Tensor::new(group.config.lr, &candle_core::Device::Cpu)?,
            );
            for ((name, _), b) in group.params.iter().zip(buffers) {
                if let Some(b) = b {
                    out.insert(format!("{}.{name}.momentum_buffer", group.name), to_cpu(b)?);
                }
            }
        }
        Ok(out)
    }

    fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let mut expected = HashSet::new();
        let mut loaded = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            expected.insert(format!("{}.lr", group.name));
            let lr = read_lr(state, &group.name)?;
            let mut buffers = Vec::with_capacity(group.params.len());
            for (name, var) in &group.params {
                let key = format!("{}.{name}.momentum_buffer", group.name);
                let b = if state.contains_key(&key) {
                    Some(read_like(state, &key, var)?)
                } else {
                    None
                };
                expected.insert(key);
                buffers.push(b);
            }
            loaded.push((lr, buffers));
        }
        check_no_extra_keys(state, &expected)?;
        for (i, (lr, buffers)) in loaded.into_iter().enumerate() {
            self.set_lr(i, lr)?;
            self.buffers[i] = buffers;
        }
        Ok(())
    }
}
