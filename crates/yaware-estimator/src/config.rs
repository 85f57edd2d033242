//! [`YAwareConfig`]: every argument of the estimator as one serialisable configuration, with the
//! defaults of the reference's public API page (nidl 0.0.1 signature).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use yaware_backbones::BackboneConfig;
use yaware_heads::HeadConfig;
use yaware_losses::{Bandwidth, Kernel};
use yaware_optim::{
    Interval, LrSchedulerConfig, PlateauMode, ReduceLrOnPlateauConfig, Schedule, ThresholdMode,
};

use crate::error::{Result, invalid};

/// Which projection head (the reference's `projection_head`); its dimensions come from
/// [`YAwareConfig::projection_head_kwargs`]. A user module is given to the builder instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// `YAwareProjectionHead`: Linear → ReLU → Linear, 2048 → 512 → 128 by default.
    #[default]
    Yaware,
    /// SimCLR's head, 2048 → 2048 → 128 by default.
    Simclr,
    /// Barlow Twins' head, 2048 → 8192 → 8192 by default.
    BarlowTwins,
    /// No head (`nn.Identity`): the encoder output goes to the loss.
    None,
}

/// `projection_head_kwargs`: each dimension left out takes the head's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadKwargs {
    /// Must equal the encoder's output width (checked when the estimator is built).
    pub input_dim: Option<usize>,
    /// Hidden width.
    pub hidden_dim: Option<usize>,
    /// Output width.
    pub output_dim: Option<usize>,
}

impl HeadKind {
    /// The head configuration with `kwargs` applied, `None` for no head.
    pub fn config(self, kwargs: &HeadKwargs) -> Option<HeadConfig> {
        let base = match self {
            HeadKind::Yaware => HeadConfig::YAWARE,
            HeadKind::Simclr => HeadConfig::SIMCLR,
            HeadKind::BarlowTwins => HeadConfig::BARLOW_TWINS,
            HeadKind::None => return None,
        };
        let (i, h, o) = base.dims();
        let (input_dim, hidden_dim, output_dim) = (
            kwargs.input_dim.unwrap_or(i),
            kwargs.hidden_dim.unwrap_or(h),
            kwargs.output_dim.unwrap_or(o),
        );
        Some(match self {
            HeadKind::Yaware => HeadConfig::YAware {
                input_dim,
                hidden_dim,
                output_dim,
            },
            HeadKind::Simclr => HeadConfig::SimClr {
                input_dim,
                hidden_dim,
                output_dim,
            },
            _ => HeadConfig::BarlowTwins {
                input_dim,
                hidden_dim,
                output_dim,
            },
        })
    }
}

/// The bandwidth of the label kernel: a number (`b·I`), one value per label feature, a full
/// matrix, or `"scott"` / `"silverman"` (estimated on the first labelled batch). A fitted
/// `KernelMetric` is given to the builder instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BandwidthSpec {
    /// `H = b·I`.
    Scalar(f64),
    /// `H = diag(v)`.
    Diagonal(Vec<f64>),
    /// A full symmetric positive-definite matrix.
    Full(Vec<Vec<f64>>),
    /// `"scott"` or `"silverman"`.
    Rule(String),
}

impl Default for BandwidthSpec {
    fn default() -> Self {
        BandwidthSpec::Scalar(1.0)
    }
}

impl BandwidthSpec {
    /// The loss crate's bandwidth.
    pub fn to_bandwidth(&self) -> Result<Bandwidth> {
        Ok(match self {
            BandwidthSpec::Scalar(b) => Bandwidth::Scalar(*b),
            BandwidthSpec::Diagonal(v) => Bandwidth::Diagonal(v.clone()),
            BandwidthSpec::Full(m) => Bandwidth::Full(m.clone()),
            BandwidthSpec::Rule(s) => s.parse::<Bandwidth>()?,
        })
    }
}

/// The optimizer by name (case-sensitive, as the reference: `"adam"`, `"sgd"`, `"adamW"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OptimizerName {
    /// Adam with coupled L2 weight decay (the default).
    #[default]
    #[serde(rename = "adam")]
    Adam,
    /// SGD (with optional momentum / Nesterov).
    #[serde(rename = "sgd")]
    Sgd,
    /// AdamW (decoupled weight decay).
    #[serde(rename = "adamW")]
    AdamW,
}

/// `optimizer_kwargs`: the optimizer's keyword arguments. Fields left out take PyTorch's
/// defaults; a field the chosen optimizer does not have (`momentum` for Adam, `betas` for SGD)
/// is an error naming it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerKwargs {
    /// Adam/AdamW moment decay rates.
    pub betas: Option<(f64, f64)>,
    /// Adam/AdamW epsilon.
    pub eps: Option<f64>,
    /// Weight decay (L2 for Adam and SGD, decoupled for AdamW).
    pub weight_decay: Option<f64>,
    /// Adam/AdamW AMSGrad.
    pub amsgrad: Option<bool>,
    /// SGD momentum.
    pub momentum: Option<f64>,
    /// SGD dampening.
    pub dampening: Option<f64>,
    /// SGD Nesterov momentum.
    pub nesterov: Option<bool>,
}

impl OptimizerKwargs {
    /// The API page's default `{"betas": (0.9, 0.99), "weight_decay": 5e-05}` for Adam and
    /// AdamW; for SGD (where the reference crashes on `betas`) only `weight_decay = 5e-05`.
    pub fn defaults_for(name: OptimizerName) -> Self {
        match name {
            OptimizerName::Sgd => OptimizerKwargs {
                weight_decay: Some(5e-5),
                ..Default::default()
            },
            _ => OptimizerKwargs {
                betas: Some((0.9, 0.99)),
                weight_decay: Some(5e-5),
                ..Default::default()
            },
        }
    }

    pub(crate) fn check_for(&self, name: OptimizerName) -> Result<()> {
        let adam_only = [
            ("betas", self.betas.is_some()),
            ("eps", self.eps.is_some()),
            ("amsgrad", self.amsgrad.is_some()),
        ];
        let sgd_only = [
            ("momentum", self.momentum.is_some()),
            ("dampening", self.dampening.is_some()),
            ("nesterov", self.nesterov.is_some()),
        ];
        let (bad, label) = match name {
            OptimizerName::Sgd => (adam_only, "sgd"),
            OptimizerName::Adam => (sgd_only, "adam"),
            OptimizerName::AdamW => (sgd_only, "adamW"),
        };
        if let Some((field, _)) = bad.iter().find(|(_, set)| *set) {
            return Err(invalid(
                "optimizer_kwargs",
                field,
                format!("optimizer '{label}' has no argument `{field}`"),
            ));
        }
        Ok(())
    }
}

/// When a scheduler steps (Lightning's `interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalSpec {
    /// After every optimizer step.
    Step,
    /// At the end of every epoch.
    Epoch,
}

impl From<IntervalSpec> for Interval {
    fn from(i: IntervalSpec) -> Self {
        match i {
            IntervalSpec::Step => Interval::Step,
            IntervalSpec::Epoch => Interval::Epoch,
        }
    }
}

fn default_warmup_epochs() -> f64 {
    10.0
}
fn default_warmup_start_lr() -> f64 {
    1e-6
}
fn default_gamma() -> f64 {
    0.1
}
fn default_factor() -> f64 {
    0.1
}
fn default_patience() -> u64 {
    10
}
fn default_threshold() -> f64 {
    1e-4
}

/// A learning-rate scheduler by name with its hyper-parameters (`lr_scheduler`). The lengths of
/// `warmup_cosine` are in epochs and converted to steps by the trainer, as the reference does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedulerSpec {
    /// nidl's linear warmup then cosine annealing (needs `max_epochs`); interval `step` by
    /// default. With interval `step` the warmup lasts `warmup_epochs × T / max_epochs` steps and
    /// the cosine ends at `T` = the number of optimizer steps of the run.
    WarmupCosine {
        /// Warmup length in epochs (default 10).
        #[serde(default = "default_warmup_epochs")]
        warmup_epochs: f64,
        /// Learning rate at the start of the warmup (default 1e-6).
        #[serde(default = "default_warmup_start_lr")]
        warmup_start_lr: f64,
        /// Final learning rate (default 0).
        #[serde(default)]
        min_lr: f64,
        /// The fixed closed form instead of the reference recursion (default false).
        #[serde(default)]
        closed_form: bool,
    },
    /// `StepLR`.
    StepLr {
        /// Ticks between decays.
        step_size: u64,
        /// Decay factor (default 0.1).
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// `MultiStepLR`.
    MultiStepLr {
        /// Ticks at which to decay.
        milestones: Vec<u64>,
        /// Decay factor (default 0.1).
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// `ExponentialLR`.
    ExponentialLr {
        /// Decay factor.
        gamma: f64,
    },
    /// `CosineAnnealingLR`.
    CosineAnnealingLr {
        /// Half period.
        t_max: u64,
        /// Minimum learning rate (default 0).
        #[serde(default)]
        eta_min: f64,
    },
    /// `ReduceLROnPlateau`: needs `monitor` in [`LrSchedulerKwargs`].
    ReduceLrOnPlateau {
        /// `"min"` or `"max"` (default min).
        #[serde(default)]
        mode: PlateauModeSpec,
        /// Multiplier on a plateau (default 0.1).
        #[serde(default = "default_factor")]
        factor: f64,
        /// Epochs without improvement before reducing (default 10).
        #[serde(default = "default_patience")]
        patience: u64,
        /// Significance of an improvement (relative, default 1e-4).
        #[serde(default = "default_threshold")]
        threshold: f64,
        /// Epochs to wait after a reduction (default 0).
        #[serde(default)]
        cooldown: u64,
        /// Lower bound of the learning rate (default 0).
        #[serde(default)]
        min_lr: f64,
    },
}

/// `"min"` / `"max"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlateauModeSpec {
    /// Lower is better.
    #[default]
    Min,
    /// Higher is better.
    Max,
}

impl From<PlateauModeSpec> for PlateauMode {
    fn from(m: PlateauModeSpec) -> Self {
        match m {
            PlateauModeSpec::Min => PlateauMode::Min,
            PlateauModeSpec::Max => PlateauMode::Max,
        }
    }
}

/// `lr_scheduler_kwargs`: Lightning's scheduler contract (when it steps, what it monitors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedulerKwargs {
    /// `step` or `epoch`; default `step` for `warmup_cosine` (nidl), `epoch` otherwise
    /// (Lightning).
    #[serde(default)]
    pub interval: Option<IntervalSpec>,
    /// Step every `frequency` intervals (default 1).
    #[serde(default = "default_frequency")]
    pub frequency: usize,
    /// The logged metric a plateau scheduler steps on (e.g. `"loss/val"`).
    #[serde(default)]
    pub monitor: Option<String>,
    /// A missing monitored metric is an error (default true) rather than a skipped step.
    #[serde(default = "default_true")]
    pub strict: bool,
}

fn default_frequency() -> usize {
    1
}
fn default_true() -> bool {
    true
}

impl Default for LrSchedulerKwargs {
    fn default() -> Self {
        Self {
            interval: None,
            frequency: 1,
            monitor: None,
            strict: true,
        }
    }
}

impl LrSchedulerSpec {
    pub(crate) fn is_plateau(&self) -> bool {
        matches!(self, LrSchedulerSpec::ReduceLrOnPlateau { .. })
    }

    /// The Lightning contract for this scheduler with `kwargs`.
    pub fn lightning_config(&self, kwargs: &LrSchedulerKwargs) -> LrSchedulerConfig {
        let default_interval = match self {
            LrSchedulerSpec::WarmupCosine { .. } => IntervalSpec::Step,
            _ => IntervalSpec::Epoch,
        };
        LrSchedulerConfig {
            interval: kwargs.interval.unwrap_or(default_interval).into(),
            frequency: kwargs.frequency,
            monitor: kwargs.monitor.clone(),
            strict: kwargs.strict,
            name: None,
        }
    }

    /// The time-based schedule (not for plateau), given the run's length: `max_epochs` and the
    /// number of scheduler ticks `total` (optimizer steps for interval `step`, else epochs).
    pub(crate) fn schedule(
        &self,
        interval: Interval,
        max_epochs: Option<u64>,
        total: u64,
    ) -> Result<Option<Schedule>> {
        Ok(Some(match self {
            LrSchedulerSpec::WarmupCosine {
                warmup_epochs,
                warmup_start_lr,
                min_lr,
                closed_form,
            } => {
                let max_epochs = max_epochs.filter(|&m| m > 0).ok_or_else(|| {
                    invalid(
                        "max_epochs",
                        "None",
                        "`max_epoch` must be set in your Trainer to use warmup in the LR scheduler.",
                    )
                })?;
                let w = match interval {
                    Interval::Step => warmup_epochs * (total as f64 / max_epochs as f64),
                    Interval::Epoch => *warmup_epochs,
                };
                Schedule::LinearWarmupCosineAnnealingLr {
                    warmup_epochs: w,
                    max_epochs: total as f64,
                    warmup_start_lr: *warmup_start_lr,
                    eta_min: *min_lr,
                    closed_form: *closed_form,
                }
            }
            LrSchedulerSpec::StepLr { step_size, gamma } => Schedule::StepLr {
                step_size: *step_size,
                gamma: *gamma,
            },
            LrSchedulerSpec::MultiStepLr { milestones, gamma } => Schedule::MultiStepLr {
                milestones: milestones.clone(),
                gamma: *gamma,
            },
            LrSchedulerSpec::ExponentialLr { gamma } => Schedule::ExponentialLr { gamma: *gamma },
            LrSchedulerSpec::CosineAnnealingLr { t_max, eta_min } => Schedule::CosineAnnealingLr {
                t_max: *t_max,
                eta_min: *eta_min,
            },
            LrSchedulerSpec::ReduceLrOnPlateau { .. } => return Ok(None),
        }))
    }

    pub(crate) fn plateau_config(&self) -> Option<ReduceLrOnPlateauConfig> {
        match self {
            LrSchedulerSpec::ReduceLrOnPlateau {
                mode,
                factor,
                patience,
                threshold,
                cooldown,
                min_lr,
            } => Some(ReduceLrOnPlateauConfig {
                mode: (*mode).into(),
                factor: *factor,
                patience: *patience,
                threshold: *threshold,
                threshold_mode: ThresholdMode::Rel,
                cooldown: *cooldown,
                min_lr: *min_lr,
                ..Default::default()
            }),
            _ => None,
        }
    }
}

/// Numeric precision of the parameters and computations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit floats (the reference's "32-true", the default).
    #[default]
    F32,
    /// 64-bit floats.
    F64,
}

impl Precision {
    /// The candle dtype.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::F64 => candle_core::DType::F64,
        }
    }
}

/// Every argument of [`YAwareContrastiveLearning`](crate::YAwareContrastiveLearning), the
/// reference's constructor arguments and the trainer's (`**kwargs`), with the reference API's
/// defaults (`Default`).
///
/// ```
/// use yaware_estimator::YAwareConfig;
/// let c: YAwareConfig = serde_json::from_str(r#"{
///     "encoder": {"name": "mlp", "in_channels": 25, "hidden_channels": [10]},
///     "projection_head_kwargs": {"input_dim": 10, "hidden_dim": 8, "output_dim": 4},
///     "max_epochs": 2
/// }"#)?;
/// assert_eq!(c.temperature, 0.1);
/// assert_eq!(c.learning_rate, 1e-4);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct YAwareConfig {
    /// The encoder by name and arguments; `None` when an instance is given to the builder.
    pub encoder: Option<BackboneConfig>,
    /// Arguments merged over `encoder` (ignored, with a warning, for an instance).
    pub encoder_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// Which projection head (default the y-Aware head; `none` = identity).
    pub projection_head: HeadKind,
    /// The head's dimensions; `input_dim` must equal the encoder's output width.
    pub projection_head_kwargs: Option<HeadKwargs>,
    /// τ (default 0.1).
    pub temperature: f64,
    /// Kernel name (default `"gaussian"`; case-insensitive).
    pub kernel: String,
    /// Bandwidth (default 1.0).
    pub bandwidth: BandwidthSpec,
    /// Optimizer (default `"adam"`).
    pub optimizer: OptimizerName,
    /// Optimizer arguments; `None` = the API page's defaults ([`OptimizerKwargs::defaults_for`]).
    pub optimizer_kwargs: Option<OptimizerKwargs>,
    /// Initial learning rate (default 1e-4).
    pub learning_rate: f64,
    /// Put rank ≤ 1 parameters (biases, norm scales) in groups without weight decay (nidl
    /// 0.0.2's option; default false, as the 0.0.1 API has one group).
    pub exclude_bias_and_norm_wd: bool,
    /// Scheduler (default none).
    pub lr_scheduler: Option<LrSchedulerSpec>,
    /// Scheduler contract (interval, frequency, monitor).
    pub lr_scheduler_kwargs: Option<LrSchedulerKwargs>,
    /// Epoch limit; with neither limit, 1000 (Lightning).
    pub max_epochs: Option<u64>,
    /// Optimizer-step limit.
    pub max_steps: Option<u64>,
    /// Use only the first n training batches of every epoch (Lightning's integer form).
    pub limit_train_batches: Option<usize>,
    /// Use only the first n validation batches.
    pub limit_val_batches: Option<usize>,
    /// Validation batches run before training as a sanity check (default 2).
    pub num_sanity_val_steps: usize,
    /// Validate every n epochs (default 1).
    pub check_val_every_n_epoch: u64,
    /// Write the training loss to the metrics file every n steps (default 50).
    pub log_every_n_steps: u64,
    /// Seed of the initialisation (default: chosen from the clock and recorded).
    pub random_state: Option<u64>,
    /// Clip the global gradient norm to this value.
    pub gradient_clip_val: Option<f64>,
    /// Accumulate gradients over this many batches per optimizer step (default 1).
    pub accumulate_grad_batches: usize,
    /// Run directory (config JSON, `metrics.csv`, checkpoints); none by default.
    pub default_root_dir: Option<PathBuf>,
    /// Progress line on a terminal (default true; never when stderr is not a TTY).
    pub enable_progress_bar: bool,
    /// Numeric precision (default f32).
    pub precision: Precision,
}

impl Default for YAwareConfig {
    fn default() -> Self {
        Self {
            encoder: None,
            encoder_kwargs: None,
            projection_head: HeadKind::Yaware,
            projection_head_kwargs: None,
            temperature: 0.1,
            kernel: "gaussian".into(),
            bandwidth: BandwidthSpec::Scalar(1.0),
            optimizer: OptimizerName::Adam,
            optimizer_kwargs: None,
            learning_rate: 1e-4,
            exclude_bias_and_norm_wd: false,
            lr_scheduler: None,
            lr_scheduler_kwargs: None,
            max_epochs: None,
            max_steps: None,
            limit_train_batches: None,
            limit_val_batches: None,
            num_sanity_val_steps: 2,
            check_val_every_n_epoch: 1,
            log_every_n_steps: 50,
            random_state: None,
            gradient_clip_val: None,
            accumulate_grad_batches: 1,
            default_root_dir: None,
            enable_progress_bar: true,
            precision: Precision::F32,
        }
    }
}

impl YAwareConfig {
    /// The epoch limit Lightning applies: `max_epochs`, else 1000 without `max_steps`, else
    /// unlimited (`None`).
    pub fn effective_max_epochs(&self) -> Option<u64> {
        match (self.max_epochs, self.max_steps) {
            (Some(e), _) => Some(e),
            (None, None) => Some(1000),
            (None, Some(_)) => None,
        }
    }

    /// The kernel, parsed.
    pub fn kernel(&self) -> Result<Kernel> {
        Ok(self.kernel.parse::<Kernel>()?)
    }

    /// Checks every trainer and optimisation argument that does not need the networks.
    pub fn validate(&self) -> Result<()> {
        let positive = |name: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(invalid(name, v, "must be finite and > 0"))
            }
        };
        positive("temperature", self.temperature)?;
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return Err(invalid(
                "learning_rate",
                self.learning_rate,
                "must be finite and >= 0",
            ));
        }
        self.kernel()?;
        self.bandwidth.to_bandwidth()?.validate()?;
        if let Some(k) = &self.optimizer_kwargs {
            k.check_for(self.optimizer)?;
        }
        if self.check_val_every_n_epoch == 0 {
            return Err(invalid("check_val_every_n_epoch", 0, "must be >= 1"));
        }
        if self.log_every_n_steps == 0 {
            return Err(invalid("log_every_n_steps", 0, "must be >= 1"));
        }
        if self.accumulate_grad_batches == 0 {
            return Err(invalid("accumulate_grad_batches", 0, "must be >= 1"));
        }
        if let Some(c) = self.gradient_clip_val {
            positive("gradient_clip_val", c)?;
        }
        if self.limit_train_batches == Some(0) {
            return Err(invalid("limit_train_batches", 0, "must be >= 1 (or unset)"));
        }
        if self.limit_val_batches == Some(0) {
            return Err(invalid("limit_val_batches", 0, "must be >= 1 (or unset)"));
        }
        if self.max_steps == Some(0) {
            return Err(invalid("max_steps", 0, "must be >= 1 (or unset)"));
        }
        if let Some(spec) = &self.lr_scheduler {
            let kwargs = self.lr_scheduler_kwargs.clone().unwrap_or_default();
            if kwargs.frequency == 0 {
                return Err(invalid("lr_scheduler_kwargs.frequency", 0, "must be >= 1"));
            }
            if spec.is_plateau() && kwargs.monitor.is_none() {
                return Err(invalid(
                    "lr_scheduler_kwargs.monitor",
                    "None",
                    "ReduceLROnPlateau needs a `monitor`: the name of a logged metric, e.g. \"loss/val\"",
                ));
            }
            if let LrSchedulerSpec::WarmupCosine { warmup_epochs, .. } = spec {
                if self.max_epochs.is_none_or(|m| m == 0) {
                    return Err(invalid(
                        "max_epochs",
                        format!("{:?}", self.max_epochs),
                        "`max_epoch` must be set in your Trainer to use warmup in the LR scheduler.",
                    ));
                }
                if !(warmup_epochs.is_finite() && *warmup_epochs >= 0.0) {
                    return Err(invalid(
                        "lr_scheduler.warmup_epochs",
                        warmup_epochs,
                        "must be finite and >= 0",
                    ));
                }
            }
            if let Some(p) = spec.plateau_config() {
                p.validate()?;
            }
            if let Some(s) = spec.schedule(Interval::Epoch, Some(2), 2)?
                && !matches!(s, Schedule::LinearWarmupCosineAnnealingLr { .. })
            {
                s.validate()?;
            }
        } else if self.lr_scheduler_kwargs.is_some() {
            // Nothing to configure: harmless, like the reference.
        }
        Ok(())
    }
}
