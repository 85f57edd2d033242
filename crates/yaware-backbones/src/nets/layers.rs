//! Building blocks shared by the 3D networks: [`Params`], which takes every variable either
//! from a seeded initialisation or from a file (by its reference name), and the 3D
//! convolution and linear layers built on it.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Linear, VarBuilder, VarMap};

use crate::backbone::get_weight;
use crate::init::{FanMode, SeededRng, kaiming_normal};
use crate::ops::{self, BatchNorm3d, Conv3dParams};
use crate::{Error, Result};

/// How a freshly built variable is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Init {
    /// PyTorch's `kaiming_normal_(mode, nonlinearity="relu")`: `N(0, 2/fan)`.
    KaimingNormal(FanMode),
    /// `U(−b, b)`.
    Uniform(f64),
    /// `N(0, std²)`.
    Normal(f64),
    /// Every element equal to the value.
    Const(f64),
}

/// `1/√fan_in` of a weight of shape `(out, in, k…)`: the bound of PyTorch's default
/// initialisation of convolutions and linear layers (weight and bias).
pub(crate) fn default_bound(shape: &[usize]) -> f64 {
    let fan_in: usize = shape[1..].iter().product();
    1.0 / (fan_in.max(1) as f64).sqrt()
}

enum Source<'a> {
    Init(SeededRng),
    Load(VarBuilder<'a>),
}

/// Where the variables of a network come from, and the map that keeps them.
///
/// In both modes every variable ends up in [`Params::varmap`] under its reference name, and
/// the layers use the map's own storage, so optimiser steps and batch-norm statistics
/// updates reach the map.
pub(crate) struct Params<'a> {
    source: Source<'a>,
    varmap: VarMap,
    dtype: DType,
    device: Device,
}

impl<'a> Params<'a> {
    /// Fresh variables drawn from a generator seeded with `seed`, added to `varmap`.
    pub(crate) fn init(varmap: &VarMap, seed: u64, dtype: DType, device: &Device) -> Self {
        Self {
            source: Source::Init(SeededRng::new(seed)),
            varmap: varmap.clone(),
            dtype,
            device: device.clone(),
        }
    }

    /// Variables read from `vb` by name (a missing or mis-shaped one is an error naming it),
    /// copied into a fresh map.
    pub(crate) fn load(vb: VarBuilder<'a>) -> Self {
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        Self {
            source: Source::Load(vb),
            varmap: VarMap::new(),
            dtype,
            device,
        }
    }

    /// The map holding every variable created or loaded so far.
    pub(crate) fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn insert(&self, name: &str, t: Tensor) -> Result<Tensor> {
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.varmap
            .data()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), var);
        Ok(out)
    }

    /// The variable `name` of shape `shape`.
    pub(crate) fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let (dtype, device) = (self.dtype, self.device.clone());
        let t = match &mut self.source {
            Source::Load(vb) => get_weight(vb, shape, name)?,
            Source::Init(rng) => match init {
                Init::KaimingNormal(mode) => kaiming_normal(rng, shape, mode, dtype, &device)?,
                Init::Uniform(b) => rng.uniform_tensor(shape, -b, b, dtype, &device)?,
                Init::Normal(std) => rng.normal_tensor(shape, 0.0, std, dtype, &device)?,
                Init::Const(v) => (Tensor::ones(shape, dtype, &device)? * v)?,
            },
        };
        self.insert(name, t)
    }

    /// A batch norm over `c` channels under `prefix` (`weight`, `bias`, `running_mean`,
    /// `running_var`, `num_batches_tracked`), its weight initialised to `weight`.
    ///
    /// When loading, a missing `num_batches_tracked` counts as 0, as PyTorch's own loading
    /// of state dicts without version metadata does; the other four are required.
    pub(crate) fn batch_norm(
        &mut self,
        prefix: &str,
        c: usize,
        weight: f64,
    ) -> Result<BatchNorm3d> {
        let name = |n: &str| format!("{prefix}.{n}");
        self.param(&name("weight"), &[c], Init::Const(weight))?;
        self.param(&name("bias"), &[c], Init::Const(0.0))?;
        self.param(&name("running_mean"), &[c], Init::Const(0.0))?;
        self.param(&name("running_var"), &[c], Init::Const(1.0))?;
        let counter = name("num_batches_tracked");
        let count = match &self.source {
            Source::Load(vb) if vb.contains_tensor(&counter) => {
                let t = vb.get_unchecked_dtype(&counter, DType::I64).or_else(|_| {
                    vb.get_with_hints_dtype((), &counter, Default::default(), DType::I64)
                })?;
                if t.elem_count() != 1 {
                    return Err(Error::WeightShape {
                        name: full_name(vb, &counter),
                        got: t.dims().to_vec(),
                        expected: vec![],
                    });
                }
                t.reshape(())?.to_dtype(DType::I64)?
            }
            _ => Tensor::zeros((), DType::I64, &self.device)?,
        };
        self.insert(&counter, count)?;
        let vb = VarBuilder::from_varmap(&self.varmap, self.dtype, &self.device);
        BatchNorm3d::new(c, vb.pp(prefix))
    }

    /// A 3D convolution `name` (`name.weight`, and `name.bias` when `bias` is `Some`).
    pub(crate) fn conv(
        &mut self,
        name: &str,
        spec: ConvSpec,
        weight: Init,
        bias: Option<Init>,
    ) -> Result<Conv3d> {
        let w = self.param(&format!("{name}.weight"), &spec.weight_shape(), weight)?;
        let b = match bias {
            Some(init) => Some(self.param(&format!("{name}.bias"), &[spec.cout], init)?),
            None => None,
        };
        Ok(Conv3d {
            weight: w,
            bias: b,
            params: Conv3dParams {
                stride: [spec.stride; 3],
                padding: [spec.padding; 3],
                dilation: [spec.dilation; 3],
                groups: spec.groups,
                input_grad: true,
            },
        })
    }

    /// A linear layer `name` (`name.weight` `(out, in)`, `name.bias` `(out)`).
    pub(crate) fn linear(
        &mut self,
        name: &str,
        in_features: usize,
        out_features: usize,
        weight: Init,
        bias: Init,
    ) -> Result<Linear> {
        let w = self.param(
            &format!("{name}.weight"),
            &[out_features, in_features],
            weight,
        )?;
        let b = self.param(&format!("{name}.bias"), &[out_features], bias)?;
        Ok(Linear::new(w, Some(b)))
    }
}

fn full_name(vb: &VarBuilder, name: &str) -> String {
    let prefix = vb.prefix();
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Shape and hyper-parameters of a cubic 3D convolution (`cin` and `cout` multiples of
/// `groups`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvSpec {
    pub(crate) cin: usize,
    pub(crate) cout: usize,
    pub(crate) kernel: [usize; 3],
    pub(crate) stride: usize,
    pub(crate) padding: usize,
    pub(crate) dilation: usize,
    pub(crate) groups: usize,
}

impl ConvSpec {
    /// A `k³` convolution `cin → cout` with stride and padding, no dilation, one group.
    pub(crate) fn new(cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> Self {
        Self {
            cin,
            cout,
            kernel: [k; 3],
            stride,
            padding,
            dilation: 1,
            groups: 1,
        }
    }

    /// The weight's shape `(cout, cin / groups, k, k, k)`.
    pub(crate) fn weight_shape(&self) -> [usize; 5] {
        [
            self.cout,
            self.cin / self.groups,
            self.kernel[0],
            self.kernel[1],
            self.kernel[2],
        ]
    }
}

/// A 3D convolution layer with an optional bias.
#[derive(Debug, Clone)]
pub(crate) struct Conv3d {
    weight: Tensor,
    bias: Option<Tensor>,
    params: Conv3dParams,
}

impl Conv3d {
    /// Convolves `x (N, C, D, H, W)`.
    ///
    /// The input gradient is computed only when `x` is part of a graph that can need one
    /// (`x.track_op()`): a network's first convolution on a data tensor skips it, which saves
    /// the costliest backward product of the stem; a variable input (e.g. for saliency maps)
    /// still gets its gradient.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let params = Conv3dParams {
            input_grad: x.track_op(),
            ..self.params
        };
        let y = ops::conv3d(x, &self.weight, &params)?;
        match &self.bias {
            Some(b) => Ok(y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1, 1))?)?),
            None => Ok(y),
        }
    }
}

/// Checks that `x` is a 5D volume batch with `channels` channels.
pub(crate) fn check_volume(op: &'static str, x: &Tensor, channels: usize) -> Result<()> {
    if x.rank() != 5 || x.dim(1)? != channels {
        return Err(Error::Input {
            op,
            problem: format!(
                "expected input (N, {channels}, D, H, W), got shape {:?}",
                x.dims()
            ),
        });
    }
    Ok(())
}
