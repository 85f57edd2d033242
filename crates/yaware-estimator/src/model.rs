//! [`YAwareContrastiveLearning`]: construction from a [`YAwareConfig`], the step methods and
//! `transform`.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use yaware_backbones::{Backbone, buffer_vars, trainable_vars};
use yaware_data::{BatchItem, TwoViewBatch, parse_two_views_batch};
use yaware_heads::ProjectionHead;
use yaware_losses::{KernelMetric, YAwareInfoNce};
use yaware_optim::{
    Adam, AdamConfig, AdamW, AdamWConfig, Interval, LrScheduler, LrSchedulerConfig, Optimizer,
    ParamGroup, ReduceLrOnPlateau, Scheduler, Sgd, SgdConfig, split_decay_groups,
};

use crate::callbacks::Callback;
use crate::config::{OptimizerKwargs, OptimizerName, YAwareConfig};
use crate::error::{Error, Result, invalid};
use crate::trainer::TrainerState;

/// Seed offset of the projection head, so encoder and head draw different numbers.
const HEAD_SEED_OFFSET: u64 = 0x5EED_0000_0000_00A1;

/// The projection head as the estimator holds it.
pub enum ProjectionModule {
    /// A built-in head with its variables.
    Head {
        /// The head.
        head: ProjectionHead,
        /// Its variables (`layers.0.weight`, …).
        varmap: VarMap,
    },
    /// A user module (any [`Backbone`]: `forward_t`, `output_dim`, `varmap`).
    Custom(Box<dyn Backbone>),
    /// No head (`nn.Identity`).
    Identity,
}

impl ProjectionModule {
    /// Applies the head.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(match self {
            ProjectionModule::Head { head, .. } => head.forward_t(x, train)?,
            ProjectionModule::Custom(m) => m.forward_t(x, train)?,
            ProjectionModule::Identity => x.clone(),
        })
    }

    /// The head's variables, if any.
    pub fn varmap(&self) -> Option<&VarMap> {
        match self {
            ProjectionModule::Head { varmap, .. } => Some(varmap),
            ProjectionModule::Custom(m) => Some(m.varmap()),
            ProjectionModule::Identity => None,
        }
    }
}

impl std::fmt::Debug for ProjectionModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProjectionModule::Head { head, .. } => write!(f, "Head({:?})", head.config()),
            ProjectionModule::Custom(_) => f.write_str("Custom"),
            ProjectionModule::Identity => f.write_str("Identity"),
        }
    }
}

/// What a training or validation step returns (the reference's outputs dict): the loss, with
/// its autograd graph for a training step, and the detached projections and labels that
/// metrics callbacks read.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The loss (f64 with labels, the embeddings' dtype without).
    pub loss: Tensor,
    /// Projections of the first view, detached.
    pub z1: Tensor,
    /// Projections of the second view, detached.
    pub z2: Tensor,
    /// The auxiliary variables, if any.
    pub y: Option<Tensor>,
}

impl StepOutput {
    /// The loss as an f64.
    pub fn loss_value(&self) -> Result<f64> {
        Ok(self.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }
}

/// A learning-rate scheduler with its Lightning contract.
pub struct ConfiguredScheduler {
    /// The scheduler.
    pub scheduler: Box<dyn LrScheduler>,
    /// When it steps and what it monitors.
    pub config: LrSchedulerConfig,
}

/// Builds a [`YAwareContrastiveLearning`] from a [`YAwareConfig`] plus what cannot be serialised:
/// encoder or head instances, a fitted `KernelMetric`, the device, callbacks.
pub struct YAwareBuilder {
    config: YAwareConfig,
    encoder: Option<Box<dyn Backbone>>,
    head: Option<Box<dyn Backbone>>,
    metric: Option<KernelMetric>,
    device: Device,
    callbacks: Vec<Box<dyn Callback>>,
}

impl YAwareBuilder {
    /// Uses an already built encoder (its `encoder` / `encoder_kwargs` configuration is then
    /// ignored, with a warning, as the reference).
    pub fn encoder(mut self, encoder: Box<dyn Backbone>) -> Self {
        self.encoder = Some(encoder);
        self
    }

    /// Uses a user module as the projection head (`projection_head_kwargs` are then ignored,
    /// with a warning).
    pub fn projection_head(mut self, head: Box<dyn Backbone>) -> Self {
        self.head = Some(head);
        self
    }

    /// Uses a fitted kernel metric as the bandwidth (its own kernel and bandwidth).
    pub fn kernel_metric(mut self, metric: KernelMetric) -> Self {
        self.metric = Some(metric);
        self
    }

    /// The device of the networks (default CPU).
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Adds a callback.
    pub fn callback(mut self, callback: Box<dyn Callback>) -> Self {
        self.callbacks.push(callback);
        self
    }

    /// Validates everything and builds the networks and the loss. The head's `input_dim` is
    /// checked against the encoder's output width here ([`Error::HeadInputDim`]).
    pub fn build(self) -> Result<YAwareContrastiveLearning> {
        let config = self.config;
        config.validate()?;
        let mut warnings = Vec::new();
        let seed = config.random_state.unwrap_or_else(clock_seed);
        let dtype = config.precision.dtype();
        let device = self.device;
        let kwargs_given = config
            .encoder_kwargs
            .as_ref()
            .is_some_and(|m| !m.is_empty());
        let encoder = match self.encoder {
            Some(e) => {
                if kwargs_given {
                    warnings
                        .push("encoder is already instantiated, ignoring 'encoder_kwargs'".into());
                }
                if config.encoder.is_some() {
                    warnings.push("encoder is already instantiated, ignoring 'encoder'".into());
                }
                e
            }
            None => {
                let base = config.encoder.clone().ok_or_else(|| {
                    invalid(
                        "encoder",
                        "None",
                        "an encoder configuration (or an instance given to the builder) is required",
                    )
                })?;
                let cfg = match &config.encoder_kwargs {
                    Some(kw) if !kw.is_empty() => {
                        let mut v = serde_json::to_value(&base)?;
                        if let Some(obj) = v.as_object_mut() {
                            for (k, val) in kw {
                                obj.insert(k.clone(), val.clone());
                            }
                        }
                        serde_json::from_value(v).map_err(|e| {
                            invalid(
                                "encoder_kwargs",
                                serde_json::Value::Object(kw.clone()),
                                e.to_string(),
                            )
                        })?
                    }
                    _ => base,
                };
                cfg.validate()?;
                cfg.build(&VarMap::new(), seed, dtype, &device)?
            }
        };
        let head_kwargs = config.projection_head_kwargs.unwrap_or_default();
        let head = match self.head {
            Some(h) => {
                if config.projection_head_kwargs.is_some() {
                    warnings.push(
                        "projection_head is already instantiated, ignoring 'projection_head_kwargs'"
                            .into(),
                    );
                }
                ProjectionModule::Custom(h)
            }
            None => match config.projection_head.config(&head_kwargs) {
                None => ProjectionModule::Identity,
                Some(hc) => {
                    let (input_dim, _, _) = hc.dims();
                    if input_dim != encoder.output_dim() {
                        return Err(Error::HeadInputDim {
                            head_input_dim: input_dim,
                            encoder_output_dim: encoder.output_dim(),
                        });
                    }
                    let varmap = VarMap::new();
                    let head = ProjectionHead::new(
                        hc,
                        &varmap,
                        seed.wrapping_add(HEAD_SEED_OFFSET),
                        dtype,
                        &device,
                    )?;
                    ProjectionModule::Head { head, varmap }
                }
            },
        };
        let loss = match self.metric {
            Some(m) => YAwareInfoNce::with_metric(m, config.temperature)?,
            None => YAwareInfoNce::new(
                config.kernel()?,
                config.bandwidth.to_bandwidth()?,
                config.temperature,
            )?,
        };
        for w in &warnings {
            eprintln!("yaware-estimator: warning: {w}");
        }
        Ok(YAwareContrastiveLearning {
            config,
            seed,
            device,
            dtype,
            encoder,
            projection_head: head,
            loss,
            optimizer: None,
            user_optimizer: false,
            lr_scheduler: None,
            user_scheduler: false,
            callbacks: self.callbacks,
            fitted: false,
            warnings,
            state: TrainerState::default(),
            metric_labels: std::sync::Mutex::new(None),
        })
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// y-Aware Contrastive Learning (Dufumier et al., MICCAI 2021): an encoder, a projection head,
/// the y-Aware InfoNCE loss, an optimizer and an optional scheduler, trained by a small
/// Lightning-like trainer ([`fit`](Self::fit)); [`transform`](Self::transform) embeds data with
/// the encoder only.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use yaware_backbones::{BackboneConfig, MlpConfig};
/// use yaware_data::TwoViewBatch;
/// use yaware_estimator::{HeadKwargs, YAwareConfig, YAwareContrastiveLearning};
///
/// let config = YAwareConfig {
///     encoder: Some(BackboneConfig::Mlp(MlpConfig::new(25, vec![10]))),
///     projection_head_kwargs: Some(HeadKwargs { input_dim: Some(10), hidden_dim: Some(8), output_dim: Some(4) }),
///     max_epochs: Some(1),
///     random_state: Some(0),
///     ..Default::default()
/// };
/// let mut model = YAwareContrastiveLearning::new(config)?;
/// let x = Tensor::randn(0f32, 1., (4, 25), &Device::Cpu)?;
/// let batches = vec![TwoViewBatch::new(x.clone(), (&x + 0.1)?, None)?];
/// model.fit(&batches, None)?;
/// assert_eq!(model.transform([x])?.dims(), &[4, 10]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct YAwareContrastiveLearning {
    pub(crate) config: YAwareConfig,
    pub(crate) seed: u64,
    pub(crate) device: Device,
    pub(crate) dtype: DType,
    pub(crate) encoder: Box<dyn Backbone>,
    pub(crate) projection_head: ProjectionModule,
    pub(crate) loss: YAwareInfoNce,
    pub(crate) optimizer: Option<Box<dyn Optimizer>>,
    pub(crate) user_optimizer: bool,
    pub(crate) lr_scheduler: Option<ConfiguredScheduler>,
    pub(crate) user_scheduler: bool,
    pub(crate) callbacks: Vec<Box<dyn Callback>>,
    pub(crate) fitted: bool,
    pub(crate) warnings: Vec<String>,
    pub(crate) state: TrainerState,
    /// The labels (as given, on the CPU) that fitted the loss's lazily fitted kernel metric
    /// (the first labelled batch), kept for checkpoints: refitting on them restores the metric
    /// bit for bit.
    pub(crate) metric_labels: std::sync::Mutex<Option<Tensor>>,
}

impl YAwareContrastiveLearning {
    /// A builder (for instances, a fitted metric, the device, callbacks).
    pub fn builder(config: YAwareConfig) -> YAwareBuilder {
        YAwareBuilder {
            config,
            encoder: None,
            head: None,
            metric: None,
            device: Device::Cpu,
            callbacks: Vec::new(),
        }
    }

    /// Builds the estimator from a configuration alone, on the CPU.
    pub fn new(config: YAwareConfig) -> Result<Self> {
        Self::builder(config).build()
    }

    /// The configuration.
    pub fn config(&self) -> &YAwareConfig {
        &self.config
    }

    /// The seed used to initialise the networks (`random_state`, or the one chosen).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Warnings raised while building (ignored kwargs), also printed to stderr.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The encoder.
    pub fn encoder(&self) -> &dyn Backbone {
        &*self.encoder
    }

    /// The projection head.
    pub fn projection_head(&self) -> &ProjectionModule {
        &self.projection_head
    }

    /// The loss.
    pub fn loss(&self) -> &YAwareInfoNce {
        &self.loss
    }

    /// The optimizer, once configured.
    pub fn optimizer(&self) -> Option<&dyn Optimizer> {
        self.optimizer.as_deref()
    }

    /// The scheduler, once configured.
    pub fn lr_scheduler(&self) -> Option<&ConfiguredScheduler> {
        self.lr_scheduler.as_ref()
    }

    /// Whether `fit` completed (or weights were loaded from a checkpoint).
    pub fn fitted(&self) -> bool {
        self.fitted
    }

    /// The trainer's state: epoch, global step, logged metrics and history.
    pub fn trainer_state(&self) -> &TrainerState {
        &self.state
    }

    /// Adds a callback.
    pub fn add_callback(&mut self, callback: Box<dyn Callback>) {
        self.callbacks.push(callback);
    }

    /// Uses a user optimizer (built, e.g., over [`param_groups`](Self::param_groups)) instead of
    /// the configured one; `optimizer_kwargs` are then ignored (a warning if they were given).
    pub fn set_optimizer(&mut self, optimizer: Box<dyn Optimizer>) {
        if self.config.optimizer_kwargs.is_some() {
            let w = "optimizer is already instantiated, ignoring 'optimizer_kwargs'".to_string();
            eprintln!("yaware-estimator: warning: {w}");
            self.warnings.push(w);
        }
        self.optimizer = Some(optimizer);
        self.user_optimizer = true;
    }

    /// Uses a user scheduler with its contract instead of the configured one (a warning if
    /// `lr_scheduler_kwargs` were given). Checked against the contract (a plateau scheduler
    /// needs a monitor).
    pub fn set_lr_scheduler(
        &mut self,
        scheduler: Box<dyn LrScheduler>,
        config: LrSchedulerConfig,
    ) -> Result<()> {
        config.validate(&*scheduler)?;
        if self.config.lr_scheduler_kwargs.is_some() {
            let w =
                "lr_scheduler is already instantiated, ignoring 'lr_scheduler_kwargs'".to_string();
            eprintln!("yaware-estimator: warning: {w}");
            self.warnings.push(w);
        }
        self.lr_scheduler = Some(ConfiguredScheduler { scheduler, config });
        self.user_scheduler = true;
        Ok(())
    }

    /// Trainable parameters with their `state_dict` names (`encoder.*`, then
    /// `projection_head.*`), sorted within each module.
    pub fn named_parameters(&self) -> Vec<(String, Var)> {
        let mut out = prefixed("encoder", trainable_vars(self.encoder.varmap()));
        if let Some(vm) = self.projection_head.varmap() {
            out.extend(prefixed("projection_head", trainable_vars(vm)));
        }
        out
    }

    /// Every variable (parameters and batch-norm buffers) by its `state_dict` name.
    pub fn state_dict(&self) -> Vec<(String, Var)> {
        let mut out = self.named_parameters();
        out.extend(prefixed("encoder", buffer_vars(self.encoder.varmap())));
        if let Some(vm) = self.projection_head.varmap() {
            out.extend(prefixed("projection_head", buffer_vars(vm)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Copies `tensors` into the model's variables by name (converted to the model's dtype and
    /// device). Every variable must be present with its shape; with `strict`, names the model
    /// does not have are errors too.
    pub fn load_state_dict(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        strict: bool,
    ) -> Result<()> {
        let vars = self.state_dict();
        for (name, var) in &vars {
            let t = tensors
                .get(name)
                .ok_or_else(|| Error::StateDict(format!("missing `{name}`")))?;
            if t.dims() != var.dims() {
                return Err(Error::StateDict(format!(
                    "`{name}` has shape {:?}, the model has {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        if strict {
            let known: std::collections::HashSet<&str> =
                vars.iter().map(|(n, _)| n.as_str()).collect();
            let mut extra: Vec<&String> = tensors
                .keys()
                .filter(|k| !known.contains(k.as_str()))
                .collect();
            extra.sort();
            if let Some(k) = extra.first() {
                return Err(Error::StateDict(format!("unexpected `{k}`")));
            }
        }
        Ok(())
    }

    /// Writes the model's `state_dict` (`encoder.*`, `projection_head.*`) to a safetensors
    /// file, atomically (temporary file, then rename).
    pub fn save_weights(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self
            .state_dict()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        crate::trainer::save_atomic(path.as_ref(), &tensors)
    }

    /// Loads weights written by [`save_weights`](Self::save_weights) (or a checkpoint) and marks
    /// the model fitted, as Lightning's `load_from_checkpoint`.
    pub fn load_weights(&mut self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
        tensors.retain(|k, _| k.starts_with("encoder.") || k.starts_with("projection_head."));
        self.load_state_dict(&tensors, true)?;
        self.fitted = true;
        Ok(())
    }

    /// The parameter groups `configure_optimizers` gives the optimizer: `backbone` and `head`,
    /// each split into a weight-decay group and a `*_no_decay` group (rank ≤ 1 parameters)
    /// with `exclude_bias_and_norm_wd`; empty groups are dropped.
    pub fn param_groups(&self) -> Vec<ParamGroup> {
        let enc = prefixed("encoder", trainable_vars(self.encoder.varmap()));
        let head = self
            .projection_head
            .varmap()
            .map(|vm| prefixed("projection_head", trainable_vars(vm)))
            .unwrap_or_default();
        let mut groups = Vec::new();
        for (name, params) in [("backbone", enc), ("head", head)] {
            if self.config.exclude_bias_and_norm_wd {
                let [mut decay, mut no_decay] = split_decay_groups(params);
                decay.name = name.to_string();
                no_decay.name = format!("{name}_no_decay");
                groups.push(decay);
                groups.push(no_decay);
            } else {
                groups.push(ParamGroup::new(name, params));
            }
        }
        groups.retain(|g| !g.params.is_empty());
        groups
    }

    /// Builds the optimizer (unless a user one was set) and the scheduler (unless a user one
    /// was set) for a run of `num_train_batches` batches per epoch, as the trainer does at the
    /// start of every `fit`.
    pub fn configure_optimizers(&mut self, num_train_batches: usize) -> Result<()> {
        if !self.user_optimizer {
            self.optimizer = Some(self.build_optimizer()?);
        }
        if !self.user_scheduler {
            self.lr_scheduler = self.build_scheduler(num_train_batches)?;
        }
        Ok(())
    }

    fn build_optimizer(&self) -> Result<Box<dyn Optimizer>> {
        let name = self.config.optimizer;
        let k = self
            .config
            .optimizer_kwargs
            .unwrap_or_else(|| OptimizerKwargs::defaults_for(name));
        k.check_for(name)?;
        let groups = self.param_groups();
        let lr = self.config.learning_rate;
        Ok(match name {
            OptimizerName::Adam => {
                let d = AdamConfig::default();
                Box::new(Adam::new(
                    groups,
                    AdamConfig {
                        lr,
                        betas: k.betas.unwrap_or(d.betas),
                        eps: k.eps.unwrap_or(d.eps),
                        weight_decay: k.weight_decay.unwrap_or(d.weight_decay),
                        amsgrad: k.amsgrad.unwrap_or(d.amsgrad),
                    },
                )?)
            }
            OptimizerName::AdamW => {
                let d = AdamWConfig::default();
                Box::new(AdamW::new(
                    groups,
                    AdamWConfig {
                        lr,
                        betas: k.betas.unwrap_or(d.betas),
                        eps: k.eps.unwrap_or(d.eps),
                        weight_decay: k.weight_decay.unwrap_or(d.weight_decay),
                        amsgrad: k.amsgrad.unwrap_or(d.amsgrad),
                    },
                )?)
            }
            OptimizerName::Sgd => {
                let d = SgdConfig::default();
                Box::new(Sgd::new(
                    groups,
                    SgdConfig {
                        lr,
                        momentum: k.momentum.unwrap_or(d.momentum),
                        dampening: k.dampening.unwrap_or(d.dampening),
                        nesterov: k.nesterov.unwrap_or(d.nesterov),
                        weight_decay: k.weight_decay.unwrap_or(d.weight_decay),
                    },
                )?)
            }
        })
    }

    /// Optimizer steps of the whole run (Lightning's `estimated_stepping_batches`).
    pub(crate) fn estimated_stepping_batches(&self, num_train_batches: usize) -> u64 {
        let per_epoch = num_train_batches.div_ceil(self.config.accumulate_grad_batches) as u64;
        let by_epochs = self
            .config
            .effective_max_epochs()
            .map(|e| per_epoch * e.max(1));
        match (by_epochs, self.config.max_steps) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => per_epoch,
        }
    }

    fn build_scheduler(&mut self, num_train_batches: usize) -> Result<Option<ConfiguredScheduler>> {
        let Some(spec) = self.config.lr_scheduler.clone() else {
            return Ok(None);
        };
        let kwargs = self.config.lr_scheduler_kwargs.clone().unwrap_or_default();
        let lcfg = spec.lightning_config(&kwargs);
        let total = match lcfg.interval {
            Interval::Step => self.estimated_stepping_batches(num_train_batches),
            Interval::Epoch => self.config.effective_max_epochs().unwrap_or(1),
        };
        let optimizer = self.optimizer.as_deref_mut().ok_or(Error::NoOptimizer)?;
        let scheduler: Box<dyn LrScheduler> = match spec.plateau_config() {
            Some(p) => Box::new(ReduceLrOnPlateau::new(p, optimizer)?),
            None => {
                let schedule = spec
                    .schedule(lcfg.interval, self.config.max_epochs, total)?
                    .ok_or(Error::NoOptimizer)?;
                Box::new(Scheduler::new(schedule, optimizer)?)
            }
        };
        lcfg.validate(&*scheduler)?;
        Ok(Some(ConfiguredScheduler {
            scheduler,
            config: lcfg,
        }))
    }

    /// Parses a loader's batch, `[X1, X2]` or `([X1, X2], y)` (the reference's
    /// `parse_two_views_batch`).
    pub fn parse_batch(&self, batch: &BatchItem) -> Result<TwoViewBatch> {
        Ok(parse_two_views_batch(batch)?)
    }

    fn shared_step(&self, batch: &TwoViewBatch, train: bool) -> Result<StepOutput> {
        let prep =
            |x: &Tensor| -> Result<Tensor> { Ok(x.to_device(&self.device)?.to_dtype(self.dtype)?) };
        // Two separate passes: batch-norm statistics per view, as the reference.
        let h1 = self.encoder.forward_t(&prep(batch.x1())?, train)?;
        let z1 = self.projection_head.forward_t(&h1, train)?;
        let h2 = self.encoder.forward_t(&prep(batch.x2())?, train)?;
        let z2 = self.projection_head.forward_t(&h2, train)?;
        let y = batch.y().map(|y| y.to_device(&self.device)).transpose()?;
        let fits_metric = y.is_some() && self.loss.metric().is_none();
        let loss = self.loss.forward(&z1, &z2, y.as_ref())?;
        if fits_metric && let Some(y) = &y {
            *self
                .metric_labels
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(y.to_device(&Device::Cpu)?);
        }
        Ok(StepOutput {
            loss,
            z1: z1.detach(),
            z2: z2.detach(),
            y,
        })
    }

    /// One training step (train mode): the loss with its graph, for the trainer (or the caller)
    /// to back-propagate.
    pub fn training_step(&self, batch: &TwoViewBatch, _batch_idx: usize) -> Result<StepOutput> {
        self.shared_step(batch, true)
    }

    /// One validation step (eval mode: batch norms use their running statistics).
    pub fn validation_step(&self, batch: &TwoViewBatch, _batch_idx: usize) -> Result<StepOutput> {
        let out = self.shared_step(batch, false)?;
        Ok(StepOutput {
            loss: out.loss.detach(),
            ..out
        })
    }

    /// The encoder's features of a batch, in eval mode (no projection head).
    pub fn transform_step(&self, x: &Tensor, _batch_idx: usize) -> Result<Tensor> {
        let x = x.to_device(&self.device)?.to_dtype(self.dtype)?;
        Ok(self.encoder.forward_t(&x, false)?.detach())
    }

    /// One optimizer step with `grads` (after backward); the scheduler is stepped separately.
    pub fn optimizer_step(&mut self, grads: &GradStore) -> Result<()> {
        self.optimizer
            .as_deref_mut()
            .ok_or(Error::NoOptimizer)?
            .step(grads)?;
        Ok(())
    }

    fn check_fitted(&self) -> Result<()> {
        if self.fitted {
            Ok(())
        } else {
            Err(Error::NotFitted)
        }
    }

    /// Embeds every batch with the encoder (eval mode) and concatenates: `(N, n_embedding)`.
    /// Fails with [`Error::NotFitted`] before `fit`.
    pub fn transform(&self, batches: impl IntoIterator<Item = Tensor>) -> Result<Tensor> {
        self.check_fitted()?;
        let feats: Vec<Tensor> = batches
            .into_iter()
            .enumerate()
            .map(|(i, x)| self.transform_step(&x, i))
            .collect::<Result<_>>()?;
        if feats.is_empty() {
            return Err(invalid(
                "data",
                "no batch",
                "transform needs at least one batch",
            ));
        }
        Ok(Tensor::cat(&feats, 0)?)
    }

    /// Embeds `(x, y)` batches: `(features (N, n_embedding), targets)` concatenated.
    pub fn transform_with_targets(
        &self,
        batches: impl IntoIterator<Item = (Tensor, Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        self.check_fitted()?;
        let (mut feats, mut ys) = (Vec::new(), Vec::new());
        for (i, (x, y)) in batches.into_iter().enumerate() {
            feats.push(self.transform_step(&x, i)?);
            ys.push(y);
        }
        if feats.is_empty() {
            return Err(invalid(
                "data",
                "no batch",
                "transform needs at least one batch",
            ));
        }
        Ok((Tensor::cat(&feats, 0)?, Tensor::cat(&ys, 0)?))
    }
}

fn prefixed(prefix: &str, vars: Vec<(String, Var)>) -> Vec<(String, Var)> {
    vars.into_iter()
        .map(|(n, v)| (format!("{prefix}.{n}"), v))
        .collect()
}
