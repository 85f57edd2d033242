//! The training loop of [`YAwareContrastiveLearning::fit`], its state, the metrics history and
//! checkpoints.
//!
//! # Hook order
//!
//! ```text
//! on_fit_start
//! [sanity check, when a validation source is given and num_sanity_val_steps > 0 (not on resume):
//!  on_sanity_check_start, validation of the first batches (nothing logged), on_sanity_check_end]
//! for each epoch:
//!   on_train_epoch_start
//!   for each batch:
//!     on_train_batch_start, training_step, backward,
//!     (every accumulate_grad_batches batches: gradient clipping, optimizer step,
//!      interval-"step" scheduler step), log "loss/train", on_train_batch_end
//!   if validation is due (every check_val_every_n_epoch epochs):
//!     on_validation_epoch_start, validation_step ×B (on_validation_batch_end each),
//!     log "loss/val" (batch-size weighted mean), on_validation_epoch_end
//!   interval-"epoch" scheduler step (plateau schedulers get their monitored metric)
//!   on_train_epoch_end
//! on_fit_end
//! ```
//!
//! A hook returning [`Control::Stop`] stops training after the current
//! batch (batch hooks) or epoch. Unlike Lightning, epoch-interval schedulers step *before*
//! `on_train_epoch_end`, so a checkpoint written there holds the state the next epoch starts
//! from (resuming is then exact).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::callbacks::{Callback, Control, CsvLogger, ModelCheckpoint, ProgressBar};
use crate::error::{Error, Result, io_err};
use crate::model::YAwareContrastiveLearning;
use crate::source::BatchSource;

/// Serialisation of f64 values that may be non-finite: numbers stay numbers, NaN and ±inf
/// become the strings `"NaN"`, `"inf"`, `"-inf"` (JSON has no literal for them).
mod non_finite {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Num(f64),
        Text(String),
    }

    fn to(v: f64) -> Repr {
        if v.is_finite() {
            Repr::Num(v)
        } else {
            Repr::Text(v.to_string())
        }
    }

    fn from<E: serde::de::Error>(r: Repr) -> Result<f64, E> {
        match r {
            Repr::Num(v) => Ok(v),
            Repr::Text(t) => t
                .parse::<f64>()
                .map_err(|_| E::custom(format!("not a number: {t:?}"))),
        }
    }

    pub(super) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        to(*v).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        from(Repr::deserialize(d)?)
    }

    pub(super) mod map {
        use super::*;

        pub(in super::super) fn serialize<S: Serializer>(
            m: &BTreeMap<String, f64>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            m.iter()
                .map(|(k, v)| (k, to(*v)))
                .collect::<BTreeMap<_, _>>()
                .serialize(s)
        }

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<BTreeMap<String, f64>, D::Error> {
            BTreeMap::<String, Repr>::deserialize(d)?
                .into_iter()
                .map(|(k, v)| Ok((k, from(v)?)))
                .collect()
        }
    }

    pub(super) mod pairs {
        use super::*;

        pub(in super::super) fn serialize<S: Serializer>(
            v: &[(u64, f64)],
            s: S,
        ) -> Result<S::Ok, S::Error> {
            v.iter()
                .map(|(k, x)| (*k, to(*x)))
                .collect::<Vec<_>>()
                .serialize(s)
        }

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<(u64, f64)>, D::Error> {
            Vec::<(u64, Repr)>::deserialize(d)?
                .into_iter()
                .map(|(k, v)| Ok((k, from(v)?)))
                .collect()
        }
    }
}

/// One logged value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// Epoch.
    pub epoch: u64,
    /// Global step when it was logged.
    pub step: u64,
    /// Metric name (`loss/train`, `loss/val`, `lr/backbone`, …).
    pub name: String,
    /// Value.
    #[serde(with = "non_finite")]
    pub value: f64,
}

/// Per-step and per-epoch history of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// `(global step, loss)` of every training batch (the step is the optimizer-step count
    /// before the batch's update).
    #[serde(with = "non_finite::pairs")]
    pub train_loss: Vec<(u64, f64)>,
    /// `(epoch, loss)` of every validation epoch.
    #[serde(with = "non_finite::pairs")]
    pub val_loss: Vec<(u64, f64)>,
    /// `(global step, lr of the first group)` used by every optimizer step.
    #[serde(with = "non_finite::pairs")]
    pub lr: Vec<(u64, f64)>,
}

/// Where training stands, what was logged, and the run's limits; callbacks read it and log
/// into it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainerState {
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Optimizer steps taken.
    pub global_step: u64,
    /// Batches of the current epoch already consumed.
    pub batch_in_epoch: usize,
    /// Whether the current epoch is complete (all its end-of-epoch work done).
    pub epoch_finished: bool,
    /// Latest value of every logged metric (Lightning's `callback_metrics`).
    #[serde(with = "non_finite::map")]
    pub logged: BTreeMap<String, f64>,
    /// Every logged value, in order.
    pub records: Vec<MetricRecord>,
    /// Loss and learning-rate history.
    pub history: History,
    /// Number of training batches per epoch.
    pub num_train_batches: usize,
    /// Epoch limit of the run.
    pub max_epochs: Option<u64>,
    /// Step limit of the run.
    pub max_steps: Option<u64>,
    /// Samples seen in training.
    pub samples_seen: u64,
    /// Whether the last training batch ended with an optimizer step (false inside a gradient
    /// accumulation window).
    #[serde(skip)]
    pub optimizer_stepped: bool,
    /// True while the sanity-check validation runs.
    #[serde(skip)]
    pub sanity_checking: bool,
    /// Set by a callback (or a limit) to stop training.
    #[serde(skip)]
    pub should_stop: bool,
    /// The run directory, if any.
    #[serde(skip)]
    pub run_dir: Option<PathBuf>,
    /// Callback states restored from a checkpoint, by callback name.
    #[serde(default)]
    pub callback_states: BTreeMap<String, serde_json::Value>,
}

impl TrainerState {
    /// Logs `value` under `name` (kept as the latest value and appended to the records).
    pub fn log(&mut self, name: &str, value: f64) {
        self.logged.insert(name.to_string(), value);
        self.records.push(MetricRecord {
            epoch: self.epoch,
            step: self.global_step,
            name: name.to_string(),
            value,
        });
    }

    /// The latest value of a logged metric, or [`Error::MissingMetric`] listing the logged ones.
    pub fn metric(&self, name: &str) -> Result<f64> {
        self.logged
            .get(name)
            .copied()
            .ok_or_else(|| Error::MissingMetric {
                monitor: name.to_string(),
                available: self.logged.keys().cloned().collect(),
            })
    }
}

/// Writes tensors to `path` through a temporary file and a rename, so that a crash never leaves
/// a half-written file under the final name.
pub(crate) fn save_atomic(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(tensors, &tmp)?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

const TRAINER_STATE_KEY: &str = "trainer_state_json";
/// The labels that fitted a lazily fitted kernel metric (Scott, Silverman), refitted on resume.
const METRIC_LABELS_KEY: &str = "loss.metric_labels";
/// The state of the encoder's own generator (dropout masks), as the bits of a u64 in an I64.
const ENCODER_RNG_KEY: &str = "encoder_rng.state";

impl YAwareContrastiveLearning {
    /// Writes a full checkpoint: the `state_dict` (`encoder.*`, `projection_head.*`), the
    /// optimizer (`optimizer.*`) and scheduler (`lr_scheduler.*`) states and the trainer state
    /// (JSON bytes under `trainer_state_json`), in one safetensors file written atomically.
    pub fn save_checkpoint(&self, path: impl AsRef<Path>, state: &TrainerState) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (n, v) in self.state_dict() {
            tensors.insert(n, v.as_tensor().to_device(&Device::Cpu)?);
        }
        if let Some(opt) = &self.optimizer {
            for (k, t) in opt.state_tensors()? {
                tensors.insert(format!("optimizer.{k}"), t);
            }
        }
        if let Some(s) = &self.lr_scheduler {
            for (k, t) in s.scheduler.state_tensors()? {
                tensors.insert(format!("lr_scheduler.{k}"), t);
            }
        }
        if let Some(y) = self
            .metric_labels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            tensors.insert(METRIC_LABELS_KEY.into(), y.clone());
        }
        if let Some(rng) = self.encoder.rng_state() {
            let bits = i64::from_ne_bytes(rng.to_ne_bytes());
            tensors.insert(ENCODER_RNG_KEY.into(), Tensor::new(&[bits], &Device::Cpu)?);
        }
        let json = serde_json::to_vec(state)?;
        let n = json.len();
        tensors.insert(
            TRAINER_STATE_KEY.into(),
            Tensor::from_vec(json, n, &Device::Cpu)?,
        );
        save_atomic(path.as_ref(), &tensors)
    }

    /// Restores weights, optimizer and scheduler states and the trainer state from a checkpoint
    /// written by [`save_checkpoint`](Self::save_checkpoint). The optimizer and scheduler must
    /// be configured (as `fit` does before resuming).
    pub(crate) fn restore_checkpoint(&mut self, path: &Path) -> Result<TrainerState> {
        let bad = |problem: String| Error::Checkpoint {
            path: path.to_path_buf(),
            problem,
        };
        let all = candle_core::safetensors::load(path, &Device::Cpu)?;
        let mut weights = HashMap::new();
        let mut opt = HashMap::new();
        let mut sched = HashMap::new();
        let mut state = None;
        let mut labels = None;
        let mut encoder_rng = None;
        for (k, t) in all {
            if let Some(rest) = k.strip_prefix("optimizer.") {
                opt.insert(rest.to_string(), t);
            } else if let Some(rest) = k.strip_prefix("lr_scheduler.") {
                sched.insert(rest.to_string(), t);
            } else if k == METRIC_LABELS_KEY {
                labels = Some(t);
            } else if k == ENCODER_RNG_KEY {
                let bits = t.to_vec1::<i64>()?;
                let bits = bits
                    .first()
                    .ok_or_else(|| bad("empty encoder generator state".into()))?;
                encoder_rng = Some(u64::from_ne_bytes(bits.to_ne_bytes()));
            } else if k == TRAINER_STATE_KEY {
                let bytes = t.to_dtype(DType::U8)?.to_vec1::<u8>()?;
                state = Some(
                    serde_json::from_slice::<TrainerState>(&bytes)
                        .map_err(|e| bad(format!("trainer state: {e}")))?,
                );
            } else {
                weights.insert(k, t);
            }
        }
        self.load_state_dict(&weights, true)?;
        let state = state.ok_or_else(|| bad("no trainer state".into()))?;
        if let Some(rng) = encoder_rng {
            self.encoder.set_rng_state(rng);
        }
        if let Some(y) = labels {
            // The same labels fit the same metric, bit for bit.
            self.loss.reset();
            self.loss.weights(&y)?;
            *self
                .metric_labels
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(y);
        }
        if let Some(o) = self.optimizer.as_deref_mut() {
            o.load_state_tensors(&opt)?;
        }
        match (&mut self.lr_scheduler, sched.is_empty()) {
            (Some(s), false) => s.scheduler.load_state_tensors(&sched)?,
            (None, true) => {}
            (Some(_), true) => {
                return Err(bad("no scheduler state for the configured scheduler".into()));
            }
            (None, false) => return Err(bad("scheduler state but no scheduler configured".into())),
        }
        Ok(state)
    }

    /// Trains on `train`, validating on `val` (see the module documentation for the loop and
    /// the hook order). Refitting continues from the current weights with a new optimizer and
    /// scheduler (unless user ones were set), as the reference.
    pub fn fit(
        &mut self,
        train: &dyn BatchSource,
        val: Option<&dyn BatchSource>,
    ) -> Result<&mut Self> {
        self.fit_from(train, val, None::<&Path>)
    }

    /// As [`fit`](Self::fit), resuming from a checkpoint written by
    /// [`save_checkpoint`](Self::save_checkpoint) (e.g. by [`ModelCheckpoint`]): weights,
    /// optimizer and scheduler states, epoch and step, history and callback states are
    /// restored, and the run continues as if it had not been interrupted.
    pub fn fit_from(
        &mut self,
        train: &dyn BatchSource,
        val: Option<&dyn BatchSource>,
        ckpt_path: Option<impl AsRef<Path>>,
    ) -> Result<&mut Self> {
        let mut callbacks = std::mem::take(&mut self.callbacks);
        let result = self.run_fit(
            train,
            val,
            ckpt_path.as_ref().map(|p| p.as_ref()),
            &mut callbacks,
        );
        self.callbacks = callbacks;
        result?;
        self.fitted = true;
        Ok(self)
    }

    fn run_fit(
        &mut self,
        train: &dyn BatchSource,
        val: Option<&dyn BatchSource>,
        ckpt_path: Option<&Path>,
        user_callbacks: &mut Vec<Box<dyn Callback>>,
    ) -> Result<()> {
        let num_batches = self
            .config
            .limit_train_batches
            .map_or(train.num_batches(), |l| l.min(train.num_batches()));
        if num_batches == 0 {
            return Err(crate::error::invalid(
                "train",
                "0 batches",
                "the training source is empty",
            ));
        }
        self.configure_optimizers(num_batches)?;
        let mut state = match ckpt_path {
            Some(p) => {
                let mut s = self.restore_checkpoint(p)?;
                if s.epoch_finished {
                    s.epoch += 1;
                    s.batch_in_epoch = 0;
                    s.epoch_finished = false;
                }
                s
            }
            None => TrainerState::default(),
        };
        let resumed = ckpt_path.is_some();
        state.num_train_batches = num_batches;
        state.max_epochs = self.config.effective_max_epochs();
        state.max_steps = self.config.max_steps;
        state.should_stop = false;
        state.run_dir = self.config.default_root_dir.clone();

        // Built-in callbacks: progress on a terminal; with a run directory the config, the
        // metrics file and the last checkpoint.
        let mut builtin: Vec<Box<dyn Callback>> = Vec::new();
        if self.config.enable_progress_bar {
            builtin.push(Box::new(ProgressBar::new()));
        }
        if let Some(dir) = &self.config.default_root_dir {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            let mut cfg = serde_json::to_value(&self.config)?;
            if let Some(o) = cfg.as_object_mut() {
                o.insert("random_state".into(), self.seed.into());
            }
            write_atomic(&dir.join("config.json"), &serde_json::to_vec_pretty(&cfg)?)?;
            builtin.push(Box::new(CsvLogger::new(dir.join("metrics.csv"))));
            if !user_callbacks.iter().any(|c| c.name() == "ModelCheckpoint") {
                builtin.push(Box::new(ModelCheckpoint::last_only(
                    dir.join("checkpoints"),
                )));
            }
        }
        let mut cbs: Vec<&mut Box<dyn Callback>> = user_callbacks
            .iter_mut()
            .chain(builtin.iter_mut())
            .collect();
        if resumed {
            for cb in cbs.iter_mut() {
                if let Some(v) = state.callback_states.get(cb.name()) {
                    cb.load_state_dict(v.clone())?;
                }
            }
        }

        let result = self.train_loop(train, val, &mut state, &mut cbs, resumed);
        // Kept on error too (e.g. a non-finite loss): the history up to the failure.
        self.state = state;
        result
    }

    fn train_loop(
        &mut self,
        train: &dyn BatchSource,
        val: Option<&dyn BatchSource>,
        state: &mut TrainerState,
        cbs: &mut [&mut Box<dyn Callback>],
        resumed: bool,
    ) -> Result<()> {
        let num_batches = state.num_train_batches;
        macro_rules! hook {
            ($method:ident $(, $arg:expr)*) => {{
                for cb in cbs.iter_mut() {
                    if cb.$method(state, &*self $(, $arg)*)? == Control::Stop {
                        state.should_stop = true;
                    }
                }
            }};
        }

        // Checkpoints are written in these two hooks: every callback's state goes in first.
        macro_rules! collect_states {
            () => {{
                for cb in cbs.iter() {
                    if let Some(v) = cb.state_dict() {
                        state.callback_states.insert(cb.name().to_string(), v);
                    }
                }
            }};
        }

        hook!(on_fit_start);
        if let Some(val) = val
            && self.config.num_sanity_val_steps > 0
            && !resumed
        {
            state.sanity_checking = true;
            hook!(on_sanity_check_start);
            for (i, b) in val
                .batches(0)
                .take(self.config.num_sanity_val_steps)
                .enumerate()
            {
                let out = self.validation_step(&b?, i)?;
                out.loss_value()?;
            }
            hook!(on_sanity_check_end);
            state.sanity_checking = false;
        }

        let acc = self.config.accumulate_grad_batches;
        let reached_max_steps = |s: &TrainerState| s.max_steps.is_some_and(|m| s.global_step >= m);
        'epochs: while state.max_epochs.is_none_or(|m| state.epoch < m)
            && !state.should_stop
            && !reached_max_steps(state)
        {
            let epoch = state.epoch;
            hook!(on_train_epoch_start);
            let skip = state.batch_in_epoch;
            let mut grads: Option<GradStore> = None;
            let mut pending = 0usize;
            for (batch_idx, batch) in train
                .batches(epoch)
                .enumerate()
                .take(num_batches)
                .skip(skip)
            {
                if reached_max_steps(state) {
                    break;
                }
                let batch = batch?;
                hook!(on_train_batch_start, batch_idx);
                let out = self.training_step(&batch, batch_idx)?;
                let value = out.loss_value()?;
                if !value.is_finite() {
                    return Err(Error::NonFiniteLoss {
                        value,
                        step: state.global_step,
                        epoch,
                        batch: batch_idx,
                    });
                }
                let to_backprop = if acc > 1 {
                    out.loss.affine(1.0 / acc as f64, 0.0)?
                } else {
                    out.loss.clone()
                };
                let g = to_backprop.backward()?;
                grads = Some(match grads.take() {
                    None => g,
                    Some(prev) => self.accumulate(prev, &g)?,
                });
                pending += 1;
                state.history.train_loss.push((state.global_step, value));
                state.logged.insert("loss/train".into(), value);
                if (state.history.train_loss.len() as u64)
                    .is_multiple_of(self.config.log_every_n_steps)
                {
                    state.log("loss/train", value);
                }
                state.samples_seen += batch.len() as u64;
                let last = batch_idx + 1 == num_batches;
                state.optimizer_stepped = pending == acc || last;
                if state.optimizer_stepped {
                    let mut g = grads.take().ok_or(Error::NoOptimizer)?;
                    if let Some(max_norm) = self.config.gradient_clip_val {
                        self.clip_grad_norm(&mut g, max_norm)?;
                    }
                    let lr = self.optimizer.as_deref().ok_or(Error::NoOptimizer)?.lr(0)?;
                    state.history.lr.push((state.global_step, lr));
                    self.optimizer_step(&g)?;
                    pending = 0;
                    state.global_step += 1;
                    self.step_scheduler(state, yaware_optim::Interval::Step)?;
                }
                state.batch_in_epoch = batch_idx + 1;
                collect_states!();
                hook!(on_train_batch_end, &out, batch_idx);
                if state.should_stop {
                    break 'epochs;
                }
            }
            state.batch_in_epoch = num_batches;
            if let Some(val) = val
                && (epoch + 1).is_multiple_of(self.config.check_val_every_n_epoch)
            {
                self.run_validation(val, state, cbs)?;
            }
            if (epoch + 1).is_multiple_of(self.lr_frequency() as u64) {
                self.step_scheduler(state, yaware_optim::Interval::Epoch)?;
            }
            state.epoch_finished = true;
            collect_states!();
            hook!(on_train_epoch_end);
            state.epoch_finished = false;
            state.epoch += 1;
            state.batch_in_epoch = 0;
        }
        // Leave the state pointing at the last completed position.
        hook!(on_fit_end);
        Ok(())
    }

    fn lr_frequency(&self) -> usize {
        self.lr_scheduler
            .as_ref()
            .map_or(1, |s| s.config.frequency.max(1))
    }

    fn run_validation(
        &mut self,
        val: &dyn BatchSource,
        state: &mut TrainerState,
        cbs: &mut [&mut Box<dyn Callback>],
    ) -> Result<()> {
        for cb in cbs.iter_mut() {
            if cb.on_validation_epoch_start(state, &*self)? == Control::Stop {
                state.should_stop = true;
            }
        }
        let (mut total, mut count) = (0.0, 0usize);
        let limit = self.config.limit_val_batches.unwrap_or(usize::MAX);
        for (i, b) in val.batches(state.epoch).enumerate().take(limit) {
            let b = b?;
            let out = self.validation_step(&b, i)?;
            let n = b.len();
            total += out.loss_value()? * n as f64;
            count += n;
            for cb in cbs.iter_mut() {
                if cb.on_validation_batch_end(state, &*self, &out, i)? == Control::Stop {
                    state.should_stop = true;
                }
            }
        }
        if count > 0 {
            let v = total / count as f64;
            state.log("loss/val", v);
            state.history.val_loss.push((state.epoch, v));
        }
        for cb in cbs.iter_mut() {
            if cb.on_validation_epoch_end(state, &*self)? == Control::Stop {
                state.should_stop = true;
            }
        }
        Ok(())
    }

    fn step_scheduler(
        &mut self,
        state: &TrainerState,
        interval: yaware_optim::Interval,
    ) -> Result<()> {
        let Some(s) = self.lr_scheduler.as_mut() else {
            return Ok(());
        };
        if s.config.interval != interval {
            return Ok(());
        }
        if interval == yaware_optim::Interval::Step
            && !state
                .global_step
                .is_multiple_of(s.config.frequency.max(1) as u64)
        {
            return Ok(());
        }
        let optimizer = self.optimizer.as_deref_mut().ok_or(Error::NoOptimizer)?;
        if s.scheduler.needs_metric() {
            let logged: HashMap<String, f64> =
                state.logged.iter().map(|(k, v)| (k.clone(), *v)).collect();
            if let Some(m) = s.config.metric(&logged)? {
                s.scheduler.step(optimizer, Some(m))?;
            }
        } else {
            s.scheduler.step(optimizer, None)?;
        }
        Ok(())
    }

    fn accumulate(&self, mut acc: GradStore, new: &GradStore) -> Result<GradStore> {
        for (_, v) in self.named_parameters() {
            let t = v.as_tensor();
            if let Some(g) = new.get(t) {
                let sum = match acc.get(t) {
                    Some(a) => (a + g)?,
                    None => g.clone(),
                };
                acc.insert(t, sum);
            }
        }
        Ok(acc)
    }

    /// Scales the gradients so that their global L2 norm is at most `max_norm` (PyTorch's
    /// `clip_grad_norm_`: coefficient `max_norm / (norm + 1e-6)`, applied only when below 1).
    /// Returns the norm before clipping.
    pub fn clip_grad_norm(&self, grads: &mut GradStore, max_norm: f64) -> Result<f64> {
        let params = self.named_parameters();
        let mut sq = 0.0;
        for (_, v) in &params {
            if let Some(g) = grads.get(v.as_tensor()) {
                sq += g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?;
            }
        }
        let norm = sq.sqrt();
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for (_, v) in &params {
                let t = v.as_tensor();
                if let Some(g) = grads.get(t) {
                    let scaled = g.affine(coef, 0.0)?;
                    grads.insert(t, scaled);
                }
            }
        }
        Ok(norm)
    }

    /// The training history of the last `fit`.
    pub fn history(&self) -> &History {
        &self.state.history
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainer_state_round_trips_through_json_bit_for_bit_including_non_finite_values() {
        let mut s = TrainerState::default();
        s.log("loss/val", f64::NAN);
        s.log("a", 0.1 + 0.2);
        s.log("b", f64::NEG_INFINITY);
        s.history.train_loss = vec![(0, 2.1990690827369686), (1, f64::INFINITY)];
        s.history.lr = vec![(0, 0.0011200000000000001)];
        let json = serde_json::to_vec(&s).unwrap();
        let back: TrainerState = serde_json::from_slice(&json).unwrap();
        let bits = |m: &BTreeMap<String, f64>| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.to_bits()))
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&back.logged), bits(&s.logged));
        assert_eq!(back.history.lr, s.history.lr);
        assert_eq!(back.history.train_loss[0], s.history.train_loss[0]);
        assert_eq!(back.history.train_loss[1].1, f64::INFINITY);
        assert!(back.records[0].value.is_nan());
    }
}
