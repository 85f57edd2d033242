//! A multi-layer perceptron encoder for tabular features (ROI volumes, …).

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Linear, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::backbone::get_weight;
use crate::init::{SeededRng, linear_default};
use crate::{Backbone, Error, Result};

/// Activation between the linear layers of an [`Mlp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(x, 0)` (the default, as torchvision's MLP).
    #[default]
    Relu,
    /// Gaussian error linear unit (exact erf form, PyTorch's default).
    Gelu,
    /// Hyperbolic tangent.
    Tanh,
    /// Logistic sigmoid.
    Sigmoid,
}

impl Activation {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Relu => x.relu(),
            Self::Gelu => x.gelu_erf(),
            Self::Tanh => x.tanh(),
            Self::Sigmoid => candle_nn::ops::sigmoid(x),
        }
    }
}

/// Configuration of an [`Mlp`]: `Linear(in, h₀) → act → … → Linear(·, h_last)`, with no
/// activation after the last layer.
///
/// Parameter names follow the module indices of the PyTorch `nn.Sequential` the layout
/// corresponds to:
/// - `dropout: Some(p)`: torchvision's `MLP` (Linear, act, Dropout per hidden layer, then
///   Linear, Dropout): for two layers the weights are `0.weight` and `3.weight`;
/// - `dropout: None`: a plain `nn.Sequential(Linear, act, Linear, …)`: `0.weight`, `2.weight`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Width of the input features.
    pub in_channels: usize,
    /// Widths of the successive linear layers; the last one is the output width.
    pub hidden_channels: Vec<usize>,
    /// Activation after every layer but the last.
    #[serde(default)]
    pub activation: Activation,
    /// Dropout probability (torchvision layout), or `None` for the plain layout.
    #[serde(default)]
    pub dropout: Option<f64>,
    /// Whether the linear layers have biases.
    #[serde(default = "default_true")]
    pub bias: bool,
}

fn default_true() -> bool {
    true
}

impl MlpConfig {
    /// A plain `Linear → ReLU → … → Linear` stack.
    pub fn new(in_channels: usize, hidden_channels: Vec<usize>) -> Self {
        Self {
            in_channels,
            hidden_channels,
            activation: Activation::Relu,
            dropout: None,
            bias: true,
        }
    }

    /// Checks the widths and the dropout probability.
    pub fn validate(&self) -> Result<()> {
        if self.in_channels == 0 {
            return Err(Error::InvalidParam {
                name: "in_channels",
                value: "0".into(),
                reason: "must be > 0".into(),
            });
        }
        if self.hidden_channels.is_empty() || self.hidden_channels.contains(&0) {
            return Err(Error::InvalidParam {
                name: "hidden_channels",
                value: format!("{:?}", self.hidden_channels),
                reason: "must be a non-empty list of widths > 0".into(),
            });
        }
        if let Some(p) = self.dropout
            && !(0.0..1.0).contains(&p)
        {
            return Err(Error::InvalidParam {
                name: "dropout",
                value: p.to_string(),
                reason: "must be in [0, 1)".into(),
            });
        }
        Ok(())
    }

    /// Output width.
    pub fn output_dim(&self) -> usize {
        self.hidden_channels.last().copied().unwrap_or(0)
    }

    /// `(module index, in, out)` of every linear layer.
    fn layers(&self) -> Vec<(usize, usize, usize)> {
        let per_hidden = if self.dropout.is_some() { 3 } else { 2 };
        let mut input = self.in_channels;
        self.hidden_channels
            .iter()
            .enumerate()
            .map(|(k, &out)| {
                let l = (k * per_hidden, input, out);
                input = out;
                l
            })
            .collect()
    }
}

/// A multi-layer perceptron encoder `(N, in_channels) → (N, output_dim)` (see [`MlpConfig`]).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::VarMap;
/// use yaware_backbones::{Backbone, Mlp, MlpConfig};
///
/// let varmap = VarMap::new();
/// let mlp = Mlp::new(MlpConfig::new(25, vec![16, 10]), &varmap, 0, DType::F32, &Device::Cpu)?;
/// let y = mlp.forward_t(&Tensor::zeros((4, 25), DType::F32, &Device::Cpu)?, false)?;
/// assert_eq!(y.dims(), &[4, 10]);
/// assert!(varmap.data().lock().unwrap().contains_key("2.weight"));
/// # Ok::<(), yaware_backbones::Error>(())
/// ```
pub struct Mlp {
    config: MlpConfig,
    linears: Vec<Linear>,
    varmap: VarMap,
    dropout_rng: Mutex<SeededRng>,
}

impl Mlp {
    /// A freshly initialised MLP (PyTorch's default Linear init from a seeded generator) whose
    /// variables are added to `varmap`. The dropout masks (if any) come from the same seed.
    pub fn new(
        config: MlpConfig,
        varmap: &VarMap,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut rng = SeededRng::new(seed);
        {
            let mut data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            for (index, i, o) in config.layers() {
                let (w, b) = linear_default(&mut rng, i, o, config.bias, dtype, device)?;
                data.insert(format!("{index}.weight"), Var::from_tensor(&w)?);
                if let Some(b) = b {
                    data.insert(format!("{index}.bias"), Var::from_tensor(&b)?);
                }
            }
        }
        let mut mlp = Self::load(config, VarBuilder::from_varmap(varmap, dtype, device))?;
        mlp.varmap = varmap.clone();
        mlp.dropout_rng = Mutex::new(SeededRng::new(seed ^ 0xD809_0D70_0000_0001));
        Ok(mlp)
    }

    /// An MLP whose weights come from `vb` by name; a missing or mis-shaped weight is an error
    /// naming it. The returned network's [`Backbone::varmap`] is a fresh map holding the
    /// loaded tensors.
    pub fn load(config: MlpConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            for (index, i, o) in config.layers() {
                let wname = format!("{index}.weight");
                let w = get_weight(&vb, &[o, i], &wname)?;
                data.insert(wname, Var::from_tensor(&w)?);
                if config.bias {
                    let bname = format!("{index}.bias");
                    let b = get_weight(&vb, &[o], &bname)?;
                    data.insert(bname, Var::from_tensor(&b)?);
                }
            }
        }
        // The layers must use the Vars' own storage so that optimiser steps reach them.
        let linears = {
            let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            config
                .layers()
                .iter()
                .map(|(index, _, _)| {
                    let w = data[&format!("{index}.weight")].as_tensor().clone();
                    let b = data
                        .get(&format!("{index}.bias"))
                        .map(|v| v.as_tensor().clone());
                    Linear::new(w, b)
                })
                .collect::<Vec<_>>()
        };
        Ok(Self {
            config,
            linears,
            varmap,
            dropout_rng: Mutex::new(SeededRng::new(0xD809_0D70_0000_0001)),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if p == 0.0 {
            return Ok(x.clone());
        }
        let n = x.elem_count();
        let scale = 1.0 / (1.0 - p);
        let mask: Vec<f32> = {
            let mut rng = self.dropout_rng.lock().unwrap_or_else(|e| e.into_inner());
            (0..n)
                .map(|_| if rng.uniform() < p { 0.0 } else { scale as f32 })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }
}

impl std::fmt::Debug for Mlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mlp")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Backbone for Mlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if x.rank() != 2 || x.dim(1)? != self.config.in_channels {
            return Err(Error::Input {
                op: "Mlp",
                problem: format!(
                    "expected input (N, {}), got shape {:?}",
                    self.config.in_channels,
                    x.dims()
                ),
            });
        }
        let last = self.linears.len() - 1;
        let mut h = x.clone();
        for (k, linear) in self.linears.iter().enumerate() {
            let act = k < last;
            // A ReLU is fused into the layer (one op, one backward).
            let relu = act && self.config.activation == Activation::Relu;
            h = crate::ops::linear(&h, linear.weight(), linear.bias(), relu)?;
            if act && !relu {
                h = self.config.activation.apply(&h)?;
            }
            if let (Some(p), true) = (self.config.dropout, train) {
                h = self.dropout(&h, p)?;
            }
        }
        Ok(h)
    }

    fn output_dim(&self) -> usize {
        self.config.output_dim()
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn rng_state(&self) -> Option<u64> {
        self.config.dropout.map(|_| {
            self.dropout_rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .state()
        })
    }

    fn set_rng_state(&self, state: u64) {
        *self.dropout_rng.lock().unwrap_or_else(|e| e.into_inner()) = SeededRng::new(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu() -> Device {
        Device::Cpu
    }

    #[test]
    fn layouts_name_the_sequential_indices() {
        for (dropout, names) in [
            (None, ["0.weight", "2.weight"]),
            (Some(0.0), ["0.weight", "3.weight"]),
        ] {
            let vm = VarMap::new();
            let cfg = MlpConfig {
                dropout,
                ..MlpConfig::new(5, vec![4, 3])
            };
            let mlp = Mlp::new(cfg, &vm, 1, DType::F64, &cpu()).unwrap();
            let keys: Vec<String> = crate::trainable_vars(&vm)
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            assert_eq!(keys.len(), 4);
            for n in names {
                assert!(keys.iter().any(|k| k == n), "{keys:?}");
            }
            assert_eq!(mlp.output_dim(), 3);
        }
    }

    #[test]
    fn forward_matches_manual_and_trains_through_the_varmap() {
        let vm = VarMap::new();
        let mlp = Mlp::new(MlpConfig::new(3, vec![4, 2]), &vm, 9, DType::F64, &cpu()).unwrap();
        let x = Tensor::new(&[[1.0f64, -2.0, 0.5], [0.0, 3.0, -1.0]], &cpu()).unwrap();
        let data = vm.data().lock().unwrap();
        let (w0, b0) = (data["0.weight"].as_tensor(), data["0.bias"].as_tensor());
        let (w2, b2) = (data["2.weight"].as_tensor(), data["2.bias"].as_tensor());
        let h = x
            .matmul(&w0.t().unwrap())
            .unwrap()
            .broadcast_add(b0)
            .unwrap()
            .relu()
            .unwrap();
        let want = h
            .matmul(&w2.t().unwrap())
            .unwrap()
            .broadcast_add(b2)
            .unwrap();
        let got = mlp.forward_t(&x, true).unwrap();
        let diff = (got.clone() - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
        // Gradients reach the VarMap's variables.
        let grads = got.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(data["0.weight"].as_tensor()).is_some());
    }

    /// Every activation (the ReLU fused into the linear op, the others applied after it)
    /// matches `Linear → act → Linear` from candle ops, values and weight gradients (f64,
    /// rounding only).
    #[test]
    fn every_activation_matches_composed_layers() {
        let x = Tensor::new(&[[1.0f64, -2.0, 0.5], [0.0, 3.0, -1.0]], &cpu()).unwrap();
        for activation in [
            Activation::Relu,
            Activation::Gelu,
            Activation::Tanh,
            Activation::Sigmoid,
        ] {
            let vm = VarMap::new();
            let cfg = MlpConfig {
                activation,
                ..MlpConfig::new(3, vec![4, 2])
            };
            let mlp = Mlp::new(cfg, &vm, 5, DType::F64, &cpu()).unwrap();
            let data = vm.data().lock().unwrap();
            let w0 = data["0.weight"].as_tensor();
            let (b0, w2) = (data["0.bias"].as_tensor(), data["2.weight"].as_tensor());
            let b2 = data["2.bias"].as_tensor();
            let layer = |h: &Tensor, w: &Tensor, b: &Tensor| {
                h.matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap()
            };
            let h = activation.apply(&layer(&x, w0, b0)).unwrap();
            let want = layer(&h, w2, b2);
            let got = mlp.forward_t(&x, true).unwrap();
            let gw = want.sum_all().unwrap().backward().unwrap();
            let gg = got.sum_all().unwrap().backward().unwrap();
            let pairs = [
                (got.clone(), want.clone()),
                (gg.get(w0).unwrap().clone(), gw.get(w0).unwrap().clone()),
                (gg.get(b2).unwrap().clone(), gw.get(b2).unwrap().clone()),
            ];
            for (a, b) in pairs {
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f64>().unwrap() < 1e-12, "{activation:?}");
            }
        }
    }

    #[test]
    fn errors_name_the_bad_value() {
        let vm = VarMap::new();
        let bad = MlpConfig::new(3, vec![]);
        assert!(matches!(
            Mlp::new(bad, &vm, 0, DType::F32, &cpu()),
            Err(Error::InvalidParam {
                name: "hidden_channels",
                ..
            })
        ));
        let bad = MlpConfig {
            dropout: Some(1.0),
            ..MlpConfig::new(3, vec![2])
        };
        assert!(matches!(
            bad.validate(),
            Err(Error::InvalidParam {
                name: "dropout",
                ..
            })
        ));
        let mlp = Mlp::new(MlpConfig::new(3, vec![2]), &vm, 0, DType::F32, &cpu()).unwrap();
        let x = Tensor::zeros((2, 4), DType::F32, &cpu()).unwrap();
        let e = mlp.forward_t(&x, false).unwrap_err().to_string();
        assert!(e.contains("[2, 4]"), "{e}");
        // Loading: a missing and a mis-shaped weight are named.
        let other = VarMap::new();
        let vb = VarBuilder::from_varmap(&other, DType::F32, &cpu());
        let e = Mlp::load(MlpConfig::new(3, vec![2]), vb).unwrap_err();
        assert!(
            matches!(&e, Error::MissingWeight { name, .. } if name == "0.weight"),
            "{e}"
        );
        let t = std::collections::HashMap::from([(
            "0.weight".to_string(),
            Tensor::zeros((2, 5), DType::F32, &cpu()).unwrap(),
        )]);
        let vb = VarBuilder::from_tensors(t, DType::F32, &cpu());
        let e = Mlp::load(MlpConfig::new(3, vec![2]), vb).unwrap_err();
        assert!(
            matches!(&e, Error::WeightShape { name, got, .. } if name == "0.weight" && got == &vec![2, 5]),
            "{e}"
        );
    }

    #[test]
    fn dropout_is_seeded_and_only_in_train_mode() {
        let cfg = MlpConfig {
            dropout: Some(0.5),
            ..MlpConfig::new(8, vec![64, 4])
        };
        let run = || {
            let vm = VarMap::new();
            let mlp = Mlp::new(cfg.clone(), &vm, 3, DType::F32, &cpu()).unwrap();
            let x = Tensor::ones((2, 8), DType::F32, &cpu()).unwrap();
            let a = mlp.forward_t(&x, true).unwrap().to_vec2::<f32>().unwrap();
            let e1 = mlp.forward_t(&x, false).unwrap().to_vec2::<f32>().unwrap();
            let e2 = mlp.forward_t(&x, false).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(e1, e2);
            assert_ne!(a, e1);
            a
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn dropout_state_restores_the_mask_stream() {
        let cfg = MlpConfig {
            dropout: Some(0.5),
            ..MlpConfig::new(8, vec![64, 4])
        };
        let vm = VarMap::new();
        let mlp = Mlp::new(cfg, &vm, 3, DType::F32, &cpu()).unwrap();
        let x = Tensor::ones((2, 8), DType::F32, &cpu()).unwrap();
        let state = mlp.rng_state().unwrap();
        let a = mlp.forward_t(&x, true).unwrap().to_vec2::<f32>().unwrap();
        let b = mlp.forward_t(&x, true).unwrap().to_vec2::<f32>().unwrap();
        assert_ne!(a, b);
        mlp.set_rng_state(state);
        assert_eq!(
            mlp.forward_t(&x, true).unwrap().to_vec2::<f32>().unwrap(),
            a
        );
        let plain = Mlp::new(MlpConfig::new(8, vec![4]), &vm, 3, DType::F32, &cpu()).unwrap();
        assert_eq!(plain.rng_state(), None);
    }
}
