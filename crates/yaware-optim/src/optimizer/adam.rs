//! Adam (coupled L2 weight decay) and AdamW (decoupled weight decay), as `torch.optim.Adam` and
//! `torch.optim.AdamW`.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use super::fused::{AdamStep, FusedAdam, HostVec};
use super::{
    Group, GroupConfig, Optimizer, add_scaled, build_groups_with, check_lr, check_no_extra_keys,
    div_scalar, group_index, group_index_mut, read_like, read_lr, read_step, step_tensor, to_cpu,
};
use crate::error::{Result, check, check_non_negative};
use crate::group::ParamGroup;

/// Hyper-parameters of [`Adam`] (PyTorch's names and defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay rates (β1, β2) of the first and second moments (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the bias-corrected `sqrt(v)` (default 1e-8).
    pub eps: f64,
    /// L2 penalty added to the gradient, so it enters the moments (default 0).
    pub weight_decay: f64,
    /// Use the running maximum of `v` (default false).
    pub amsgrad: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
        }
    }
}

/// Hyper-parameters of [`AdamW`]: Adam's, with a decoupled weight decay (default 0.01).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay rates (β1, β2) of the first and second moments (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the bias-corrected `sqrt(v)` (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay: `θ ← θ·(1 − lr·wd)` before the Adam update (default 0.01).
    pub weight_decay: f64,
    /// Use the running maximum of `v` (default false).
    pub amsgrad: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            amsgrad: false,
        }
    }
}

impl From<AdamWConfig> for AdamConfig {
    fn from(c: AdamWConfig) -> Self {
        Self {
            lr: c.lr,
            betas: c.betas,
            eps: c.eps,
            weight_decay: c.weight_decay,
            amsgrad: c.amsgrad,
        }
    }
}

impl GroupConfig for AdamConfig {
    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn weight_decay_mut(&mut self) -> &mut f64 {
        &mut self.weight_decay
    }

    fn validate(&self) -> Result<()> {
        check_lr(self.lr)?;
        let (b1, b2) = self.betas;
        check("betas.0", b1, (0.0..1.0).contains(&b1), "must be in [0, 1)")?;
        check("betas.1", b2, (0.0..1.0).contains(&b2), "must be in [0, 1)")?;
        check(
            "eps",
            self.eps,
            self.eps > 0.0 && self.eps.is_finite(),
            "must be finite and > 0",
        )?;
        check_non_negative("weight_decay", self.weight_decay)
    }
}

/// A moment buffer: a tensor (any device), or a host vector for the fused CPU kernel.
#[derive(Debug, Clone)]
enum Buf {
    Tensor(Tensor),
    Host(HostVec),
}

impl Buf {
    fn tensor(&self, like: &Tensor) -> Result<Tensor> {
        match self {
            Buf::Tensor(t) => Ok(t.clone()),
            Buf::Host(h) => Ok(h.to_tensor(like)?),
        }
    }

    fn host(self) -> Result<HostVec> {
        match self {
            Buf::Host(h) => Ok(h),
            Buf::Tensor(t) => Ok(HostVec::from_tensor(&t)?),
        }
    }
}

/// Moments of one parameter.
#[derive(Debug, Clone, Default)]
struct Moments {
    step: u64,
    exp_avg: Option<Buf>,
    exp_avg_sq: Option<Buf>,
    max_exp_avg_sq: Option<Buf>,
}

/// The update rule shared by Adam and AdamW.
#[derive(Debug)]
struct AdamCore {
    groups: Vec<Group<AdamConfig>>,
    state: Vec<Vec<Moments>>,
    decoupled: bool,
    fused: bool,
}

/// `torch.lerp(a, b, w)` as PyTorch's CPU kernel evaluates it.
fn lerp(a: &Tensor, b: &Tensor, w: f64) -> Result<Tensor> {
    let diff = (b - a)?;
    if w < 0.5 {
        Ok((a + diff.affine(w, 0.0)?)?)
    } else {
        Ok((b - diff.affine(1.0 - w, 0.0)?)?)
    }
}

impl AdamCore {
    fn new(groups: Vec<ParamGroup>, defaults: AdamConfig, decoupled: bool) -> Result<Self> {
        defaults.validate()?;
        Self::with_configs(
            groups.into_iter().map(|g| (g, defaults)).collect(),
            decoupled,
        )
    }

    fn with_configs(groups: Vec<(ParamGroup, AdamConfig)>, decoupled: bool) -> Result<Self> {
        let groups = build_groups_with(groups)?;
        let state = groups
            .iter()
            .map(|g| vec![Moments::default(); g.params.len()])
            .collect();
        Ok(Self {
            groups,
            state,
            decoupled,
            fused: true,
        })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (group, states) in self.groups.iter().zip(&mut self.state) {
            let c = group.config;
            for ((_, var), st) in group.params.iter().zip(states.iter_mut()) {
                let Some(grad) = grads.get(var) else { continue };
                st.step += 1;
                let fusable = self.fused
                    && var.device().is_cpu()
                    && matches!(var.dtype(), DType::F32 | DType::F64)
                    && grad.dtype() == var.dtype()
                    && var.as_tensor().is_contiguous();
                if fusable {
                    fused_step(&c, self.decoupled, var, grad, st)?;
                } else {
                    tensor_step(&c, self.decoupled, var, grad, st)?;
                }
            }
        }
        Ok(())
    }

    fn zero_state(&mut self) {
        self.state
            .iter_mut()
            .flatten()
            .for_each(|s| *s = Moments::default());
    }

    fn set_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        check_lr(lr)?;
        group_index_mut(&mut self.groups, group)?.config.lr = lr;
        Ok(())
    }

    fn set_momentum(&mut self, group: usize, momentum: f64) -> Result<()> {
        let g = group_index_mut(&mut self.groups, group)?;
        let mut config = g.config;
        config.betas.0 = momentum;
        config.validate()?;
        g.config = config;
        Ok(())
    }

    fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (group, states) in self.groups.iter().zip(&self.state) {
            out.insert(
                format!("{}.lr", group.name),
                Tensor::new(group.config.lr, &Device::Cpu)?,
            );
            for ((name, var), st) in group.params.iter().zip(states) {
                if st.step == 0 {
                    continue;
                }
                let key = |s: &str| format!("{}.{name}.{s}", group.name);
                out.insert(key("step"), step_tensor(st.step)?);
                for (s, t) in [
                    ("exp_avg", &st.exp_avg),
                    ("exp_avg_sq", &st.exp_avg_sq),
                    ("max_exp_avg_sq", &st.max_exp_avg_sq),
                ] {
                    if let Some(t) = t {
                        out.insert(key(s), to_cpu(&t.tensor(var.as_tensor())?)?);
                    }
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
            let mut moments = Vec::with_capacity(group.params.len());
            for (name, var) in &group.params {
                let key = |s: &str| format!("{}.{name}.{s}", group.name);
                for s in ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"] {
                    expected.insert(key(s));
                }
                if !state.contains_key(&key("step")) {
                    moments.push(Moments::default());
                    continue;
                }
                let read =
                    |s: &str| -> Result<Buf> { Ok(Buf::Tensor(read_like(state, &key(s), var)?)) };
                let optional = |s: &str| -> Result<Option<Buf>> {
                    if state.contains_key(&key(s)) {
                        Ok(Some(read(s)?))
                    } else {
                        Ok(None)
                    }
                };
                moments.push(Moments {
                    step: read_step(state, &key("step"))?,
                    exp_avg: Some(read("exp_avg")?),
                    exp_avg_sq: Some(read("exp_avg_sq")?),
                    max_exp_avg_sq: optional("max_exp_avg_sq")?,
                });
            }
            loaded.push((lr, moments));
        }
        check_no_extra_keys(state, &expected)?;
        for (i, (lr, moments)) in loaded.into_iter().enumerate() {
            self.set_lr(i, lr)?;
            self.state[i] = moments;
        }
        Ok(())
    }
}

/// The scalars of step `t` of a group.
fn step_scalars(c: &AdamConfig, decoupled: bool, t: u64) -> AdamStep {
    let (beta1, beta2) = c.betas;
    let t = t as f64;
    AdamStep {
        weight_decay: c.weight_decay,
        decoupled,
        decay: 1.0 - c.lr * c.weight_decay,
        lerp_w: 1.0 - beta1,
        beta2,
        step_size: c.lr / (1.0 - beta1.powf(t)),
        bc2_sqrt: (1.0 - beta2.powf(t)).powf(0.5),
        eps: c.eps,
    }
}

/// One parameter's update with the fused CPU kernel (moments kept on the host).
fn fused_step(
    c: &AdamConfig,
    decoupled: bool,
    var: &Var,
    grad: &Tensor,
    st: &mut Moments,
) -> Result<()> {
    let n = var.elem_count();
    let zeros = || HostVec::zeros(var.dtype(), n).expect("fusable dtypes are f32 / f64");
    let take = |b: Option<Buf>| -> Result<HostVec> {
        b.map(Buf::host)
            .transpose()
            .map(|h| h.unwrap_or_else(zeros))
    };
    let mut m = take(st.exp_avg.take())?;
    let mut v = take(st.exp_avg_sq.take())?;
    let mut vmax = if c.amsgrad {
        Some(take(st.max_exp_avg_sq.take())?)
    } else {
        None
    };
    let result = {
        let op = FusedAdam {
            s: step_scalars(c, decoupled, st.step),
            m: RefCell::new(&mut m),
            v: RefCell::new(&mut v),
            vmax: RefCell::new(vmax.as_mut()),
        };
        var.as_tensor().inplace_op2(&grad.contiguous()?, &op)
    };
    st.exp_avg = Some(Buf::Host(m));
    st.exp_avg_sq = Some(Buf::Host(v));
    st.max_exp_avg_sq = vmax.map(Buf::Host);
    Ok(result?)
}

/// One parameter's update with candle tensor ops (any device and dtype).
fn tensor_step(
    c: &AdamConfig,
    decoupled: bool,
    var: &Var,
    grad: &Tensor,
    st: &mut Moments,
) -> Result<()> {
    let (beta1, beta2) = c.betas;
    let mut theta = var.as_tensor().clone();
    let mut g = grad.clone();
    if c.weight_decay != 0.0 {
        if decoupled {
            theta = theta.affine(1.0 - c.lr * c.weight_decay, 0.0)?;
        } else {
            g = add_scaled(&g, &theta, c.weight_decay)?;
        }
    }
    let m = match &st.exp_avg {
        Some(m) => lerp(&m.tensor(&theta)?, &g, 1.0 - beta1)?,
        None => lerp(&g.zeros_like()?, &g, 1.0 - beta1)?,
    };
    let gg = (g.affine(1.0 - beta2, 0.0)? * &g)?;
    let v = match &st.exp_avg_sq {
        Some(v) => (v.tensor(&theta)?.affine(beta2, 0.0)? + gg)?,
        None => (g.zeros_like()? + gg)?,
    };
    let s = step_scalars(c, decoupled, st.step);
    let v_used = if c.amsgrad {
        let vmax = match &st.max_exp_avg_sq {
            Some(prev) => prev.tensor(&theta)?.maximum(&v)?,
            None => v.maximum(&v.zeros_like()?)?,
        };
        st.max_exp_avg_sq = Some(Buf::Tensor(vmax.clone()));
        vmax
    } else {
        v.clone()
    };
    let denom = div_scalar(&v_used.sqrt()?, s.bc2_sqrt)?.affine(1.0, c.eps)?;
    let update = (m.affine(-s.step_size, 0.0)? / denom)?;
    var.set(&(theta + update)?)?;
    st.exp_avg = Some(Buf::Tensor(m));
    st.exp_avg_sq = Some(Buf::Tensor(v));
    Ok(())
}

macro_rules! adam_optimizer {
    ($(#[$doc:meta])* $name:ident, $config:ty, $decoupled:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(AdamCore);

        impl $name {
            /// An optimizer over `groups`, each taking `defaults` unless it overrides lr / weight
            /// decay.
            pub fn new(groups: Vec<ParamGroup>, defaults: $config) -> Result<Self> {
                Ok(Self(AdamCore::new(groups, defaults.into(), $decoupled)?))
            }

            /// An optimizer whose groups each have their own hyper-parameters (PyTorch's
            /// per-group `betas`, `eps`, …); a group's lr / weight-decay overrides apply on top.
            pub fn with_group_configs(groups: Vec<(ParamGroup, $config)>) -> Result<Self> {
                let groups = groups.into_iter().map(|(g, c)| (g, c.into())).collect();
                Ok(Self(AdamCore::with_configs(groups, $decoupled)?))
            }

            /// Chooses the fused CPU kernel (the default; used for contiguous f32 / f64 CPU
            /// parameters) or the device-agnostic tensor-op path. Both give bit-identical
            /// results, except that the fused kernel stores a moment below the smallest normal
            /// number as zero (subnormal arithmetic is slow on Intel CPUs; see
            /// `docs/PARITY.md`); it reads and writes each value once.
            pub fn set_fused(&mut self, fused: bool) {
                self.0.fused = fused;
            }

            /// The hyper-parameters of group `group` (weight decay as this optimizer applies it).
            pub fn config(&self, group: usize) -> Result<&AdamConfig> {
                Ok(&group_index(&self.0.groups, group)?.config)
            }
        }

        impl Optimizer for $name {
            fn step(&mut self, grads: &GradStore) -> Result<()> {
                self.0.step(grads)
            }

            fn zero_state(&mut self) {
                self.0.zero_state()
            }

            fn num_groups(&self) -> usize {
                self.0.groups.len()
            }

            fn group_name(&self, group: usize) -> Result<&str> {
                Ok(&group_index(&self.0.groups, group)?.name)
            }

            fn lr(&self, group: usize) -> Result<f64> {
                Ok(group_index(&self.0.groups, group)?.config.lr)
            }

            fn set_lr(&mut self, group: usize, lr: f64) -> Result<()> {
                self.0.set_lr(group, lr)
            }

            fn momentum(&self, group: usize) -> Result<f64> {
                Ok(group_index(&self.0.groups, group)?.config.betas.0)
            }

            fn set_momentum(&mut self, group: usize, momentum: f64) -> Result<()> {
                self.0.set_momentum(group, momentum)
            }

            fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
                self.0.state_tensors()
            }

            fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
                self.0.load_state_tensors(state)
            }
        }
    };
}

adam_optimizer!(
    /// `torch.optim.Adam`: `g ← g + wd·θ` (L2, coupled), `m ← lerp(m, g, 1 − β1)`,
    /// `v ← β2·v + (1 − β2)·g²`, `θ ← θ − (lr/(1 − β1^t))·m / (sqrt(v)/sqrt(1 − β2^t) + eps)`
    /// (`v` replaced by its running maximum with amsgrad).
    Adam,
    AdamConfig,
    false
);

adam_optimizer!(
    /// `torch.optim.AdamW`: Adam with decoupled weight decay, `θ ← θ·(1 − lr·wd)` before the
    /// update; the gradient and the moments never see the decay.
    AdamW,
    AdamWConfig,
    true
);
