//! Projection heads: configurations, seeded construction and loading by name.

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{BatchNorm, BatchNormConfig, Linear, VarBuilder, VarMap};
use yaware_backbones::init::{SeededRng, linear_default};
use yaware_backbones::ops::linear;

use crate::error::{Error, Result};

/// Which projection head, with its dimensions (the reference's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadConfig {
    /// nidl's `YAwareProjectionHead`: Linear(in, hidden) → ReLU → Linear(hidden, out).
    YAware {
        /// Encoder output width (default 2048).
        input_dim: usize,
        /// Hidden width (default 512, as both reference releases; the API page's "2048-d
        /// hidden units" is not what the code builds).
        hidden_dim: usize,
        /// Output width (default 128).
        output_dim: usize,
    },
    /// SimCLR's head: the same structure, defaults 2048 → 2048 → 128.
    SimClr {
        /// Encoder output width (default 2048).
        input_dim: usize,
        /// Hidden width (default 2048).
        hidden_dim: usize,
        /// Output width (default 128).
        output_dim: usize,
    },
    /// Barlow Twins' head: [Linear (no bias) → BatchNorm1d → ReLU] × 2 → Linear, defaults
    /// 2048 → 8192 → 8192.
    BarlowTwins {
        /// Encoder output width (default 2048).
        input_dim: usize,
        /// Hidden width (default 8192).
        hidden_dim: usize,
        /// Output width (default 8192).
        output_dim: usize,
    },
}

impl HeadConfig {
    /// The y-Aware default head, 2048 → 512 → 128.
    pub const YAWARE: HeadConfig = HeadConfig::YAware {
        input_dim: 2048,
        hidden_dim: 512,
        output_dim: 128,
    };
    /// The SimCLR default head, 2048 → 2048 → 128.
    pub const SIMCLR: HeadConfig = HeadConfig::SimClr {
        input_dim: 2048,
        hidden_dim: 2048,
        output_dim: 128,
    };
    /// The Barlow Twins default head, 2048 → 8192 → 8192.
    pub const BARLOW_TWINS: HeadConfig = HeadConfig::BarlowTwins {
        input_dim: 2048,
        hidden_dim: 8192,
        output_dim: 8192,
    };

    /// `(input_dim, hidden_dim, output_dim)`.
    pub fn dims(&self) -> (usize, usize, usize) {
        match *self {
            HeadConfig::YAware {
                input_dim,
                hidden_dim,
                output_dim,
            }
            | HeadConfig::SimClr {
                input_dim,
                hidden_dim,
                output_dim,
            }
            | HeadConfig::BarlowTwins {
                input_dim,
                hidden_dim,
                output_dim,
            } => (input_dim, hidden_dim, output_dim),
        }
    }

    /// The layers `(in, out, with batch norm)`, in order; ReLU follows every layer but the last.
    fn blocks(&self) -> Vec<(usize, usize, bool)> {
        let (i, h, o) = self.dims();
        match self {
            HeadConfig::YAware { .. } | HeadConfig::SimClr { .. } => {
                vec![(i, h, false), (h, o, false)]
            }
            HeadConfig::BarlowTwins { .. } => vec![(i, h, true), (h, h, true), (h, o, false)],
        }
    }

    fn validate(&self) -> Result<()> {
        let (i, h, o) = self.dims();
        for (name, value) in [("input_dim", i), ("hidden_dim", h), ("output_dim", o)] {
            if value == 0 {
                return Err(Error::ZeroDim { name, value });
            }
        }
        Ok(())
    }
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig::YAWARE
    }
}

#[derive(Debug, Clone)]
enum Layer {
    Linear(Linear),
    BatchNorm(BatchNorm),
    Relu,
}

/// A projection head: an `nn.Sequential` called `layers`, whose parameters are named as the
/// reference's `state_dict` (`layers.0.weight`, `layers.0.bias`, `layers.2.weight`, …), so
/// converted PyTorch weights load by name.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::VarMap;
/// use yaware_heads::{HeadConfig, ProjectionHead};
///
/// let varmap = VarMap::new();
/// let head = ProjectionHead::new(
///     HeadConfig::YAware { input_dim: 64, hidden_dim: 32, output_dim: 16 },
///     &varmap, 42, DType::F32, &Device::Cpu,
/// )?;
/// let z = head.forward(&Tensor::zeros((4, 64), DType::F32, &Device::Cpu)?)?;
/// assert_eq!(z.dims(), &[4, 16]);
/// assert!(varmap.data().lock().unwrap().contains_key("layers.2.weight"));
/// # Ok::<(), yaware_heads::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ProjectionHead {
    config: HeadConfig,
    layers: Vec<Layer>,
}

impl ProjectionHead {
    /// A freshly initialised head (PyTorch's default Linear init from a seeded generator; batch
    /// norms at weight 1, bias 0), whose variables are added to `varmap` under the reference's
    /// names (prefix them with `VarBuilder::pp` through [`load`](Self::load) if needed).
    pub fn new(
        config: HeadConfig,
        varmap: &VarMap,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut rng = SeededRng::new(seed);
        {
            let mut data = varmap
                .data()
                .lock()
                .expect("the VarMap lock is not poisoned");
            let mut index = 0;
            for (i, o, bn) in config.blocks() {
                let (w, b) = linear_default(&mut rng, i, o, !bn, dtype, device)?;
                data.insert(format!("layers.{index}.weight"), Var::from_tensor(&w)?);
                if let Some(b) = b {
                    data.insert(format!("layers.{index}.bias"), Var::from_tensor(&b)?);
                }
                index += 1;
                if bn {
                    let p = |n: &str| format!("layers.{index}.{n}");
                    data.insert(p("weight"), Var::ones(o, dtype, device)?);
                    data.insert(p("bias"), Var::zeros(o, dtype, device)?);
                    data.insert(p("running_mean"), Var::zeros(o, dtype, device)?);
                    data.insert(p("running_var"), Var::ones(o, dtype, device)?);
                    index += 1;
                }
                index += 1; // the activation
            }
        }
        Self::load(config, VarBuilder::from_varmap(varmap, dtype, device))
    }

    /// A head whose weights come from `vb` by the reference's names (e.g. converted PyTorch
    /// weights); a missing or mis-shaped weight is an error naming it.
    pub fn load(config: HeadConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let blocks = config.blocks();
        let mut layers = Vec::new();
        for (k, (i, o, bn)) in blocks.iter().copied().enumerate() {
            let index = layers.len();
            let w = vb.get((o, i), &format!("layers.{index}.weight"))?;
            let b = if bn {
                None
            } else {
                Some(vb.get(o, &format!("layers.{index}.bias"))?)
            };
            layers.push(Layer::Linear(Linear::new(w, b)));
            if bn {
                let bn_cfg = BatchNormConfig {
                    eps: 1e-5,
                    momentum: 0.1,
                    ..Default::default()
                };
                let norm =
                    candle_nn::batch_norm(o, bn_cfg, vb.pp(format!("layers.{}", layers.len())))?;
                layers.push(Layer::BatchNorm(norm));
            }
            if k + 1 < blocks.len() {
                layers.push(Layer::Relu);
            }
        }
        Ok(Self { config, layers })
    }

    /// The configuration.
    pub fn config(&self) -> HeadConfig {
        self.config
    }

    /// Checks the encoder output as the reference does on its first forward (here on every
    /// call: it is cheap): rank ≥ 2 and last dimension = `input_dim`.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        if x.rank() < 2 {
            return Err(Error::Rank {
                shape: x.shape().clone(),
            });
        }
        let (expected, _, _) = self.config.dims();
        let got = x.dims()[x.rank() - 1];
        if got != expected {
            return Err(Error::InputDim { got, expected });
        }
        Ok(())
    }

    /// Projects `x` (`(N, input_dim)`), batch norms in training mode when `train`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let mut h = x.clone();
        let mut layers = self.layers.iter().peekable();
        while let Some(layer) = layers.next() {
            h = match layer {
                Layer::Linear(l) => {
                    // A ReLU right after the layer is fused into it (one op, one backward).
                    let relu = matches!(layers.peek(), Some(Layer::Relu));
                    if relu {
                        layers.next();
                    }
                    linear(&h, l.weight(), l.bias(), relu)?
                }
                Layer::BatchNorm(b) => b.forward_t(&h, train)?,
                Layer::Relu => h.relu()?,
            };
        }
        Ok(h)
    }

    /// Projects `x` in evaluation mode.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}

/// A projection head as the estimator takes it: one of the built-in heads, or none (the
/// encoder output goes to the loss directly, PyTorch's `nn.Identity`).
#[derive(Debug, Clone)]
pub enum Head {
    /// A projection head.
    Projection(ProjectionHead),
    /// No head.
    Identity,
}

impl Head {
    /// Applies the head (identity passes `x` through unchanged).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Head::Projection(h) => h.forward_t(x, train),
            Head::Identity => Ok(x.clone()),
        }
    }
}
