//! Parameter groups: which variables an optimizer updates, with per-group overrides.

use candle_core::Var;

/// A named set of parameters with optional overrides of the optimizer's learning rate and
/// weight decay (PyTorch's `param_groups` entries).
///
/// Parameter names are the model's (`VarMap` keys, e.g. `encoder.0.weight`); they name the
/// optimizer state in saved files.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// The group's name (saved with the state; `"default"` for a single group).
    pub name: String,
    /// The parameters, by name.
    pub params: Vec<(String, Var)>,
    /// Learning rate of this group; `None` takes the optimizer's.
    pub lr: Option<f64>,
    /// Weight decay of this group; `None` takes the optimizer's.
    pub weight_decay: Option<f64>,
}

impl ParamGroup {
    /// A group with the optimizer's hyper-parameters.
    pub fn new(name: impl Into<String>, params: Vec<(String, Var)>) -> Self {
        Self {
            name: name.into(),
            params,
            lr: None,
            weight_decay: None,
        }
    }

    /// A group of unnamed variables (named `"0"`, `"1"`, … in saved state).
    pub fn from_vars(name: impl Into<String>, vars: Vec<Var>) -> Self {
        Self::new(
            name,
            vars.into_iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
        )
    }

    /// The same group with its own learning rate.
    pub fn with_lr(mut self, lr: f64) -> Self {
        self.lr = Some(lr);
        self
    }

    /// The same group with its own weight decay.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = Some(weight_decay);
        self
    }
}

/// Whether a variable name is a normalisation layer's running statistic (a buffer, not a
/// trainable parameter, even when a `VarMap` stores it as a `Var`).
fn is_buffer(name: &str) -> bool {
    ["running_mean", "running_var", "num_batches_tracked"]
        .iter()
        .any(|b| name.ends_with(b))
}

/// Splits named parameters into a `"decay"` group (rank ≥ 2: conv and linear weights) and a
/// `"no_decay"` group with weight decay 0 (rank ≤ 1: biases and normalisation scales), as
/// nidl's `exclude_bias_and_norm_wd` does. Running statistics are left out.
///
/// ```
/// use candle_core::{DType, Device, Var};
/// use yaware_optim::split_decay_groups;
///
/// let w = Var::zeros((4, 3), DType::F32, &Device::Cpu)?;
/// let b = Var::zeros(4, DType::F32, &Device::Cpu)?;
/// let [decay, no_decay] = split_decay_groups(vec![("fc.weight".into(), w), ("fc.bias".into(), b)]);
/// assert_eq!(decay.params[0].0, "fc.weight");
/// assert_eq!(no_decay.params[0].0, "fc.bias");
/// assert_eq!(no_decay.weight_decay, Some(0.0));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn split_decay_groups(named: impl IntoIterator<Item = (String, Var)>) -> [ParamGroup; 2] {
    let (mut decay, mut no_decay) = (Vec::new(), Vec::new());
    for (name, var) in named {
        if is_buffer(&name) {
            continue;
        }
        if var.rank() <= 1 {
            no_decay.push((name, var));
        } else {
            decay.push((name, var));
        }
    }
    [
        ParamGroup::new("decay", decay),
        ParamGroup::new("no_decay", no_decay).with_weight_decay(0.0),
    ]
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn buffers_are_excluded_and_ranks_split() {
        let v = |shape: &[usize]| Var::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        let named = vec![
            ("conv.weight".to_string(), v(&[2, 1, 3, 3, 3])),
            ("bn.weight".to_string(), v(&[2])),
            ("bn.bias".to_string(), v(&[2])),
            ("bn.running_mean".to_string(), v(&[2])),
            ("bn.running_var".to_string(), v(&[2])),
            ("fc.weight".to_string(), v(&[4, 2])),
        ];
        let [decay, no_decay] = split_decay_groups(named);
        let names = |g: &ParamGroup| g.params.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&decay), ["conv.weight", "fc.weight"]);
        assert_eq!(names(&no_decay), ["bn.weight", "bn.bias"]);
        assert_eq!(decay.weight_decay, None);
    }
}
