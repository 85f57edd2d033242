//! The [`Callback`] trait (Lightning's hook names) and the built-in callbacks: [`EarlyStopping`],
//! [`ModelCheckpoint`], [`LearningRateMonitor`], [`CsvLogger`] and [`ProgressBar`].
//!
//! The order in which the trainer calls the hooks is documented in [`crate::trainer`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Result, invalid, io_err};
use crate::model::{StepOutput, YAwareContrastiveLearning};
use crate::trainer::TrainerState;

/// What a hook asks of the trainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop training (after the current batch, or at the end of the epoch).
    Stop,
}

/// A training callback. Every hook has a no-op default; hooks may log metrics into the state
/// ([`TrainerState::log`]) and stop training by returning [`Control::Stop`].
#[allow(unused_variables)]
pub trait Callback: Send {
    /// A name, unique among the callbacks of a run: it keys the callback's saved state.
    fn name(&self) -> &str;

    /// Once, before anything else.
    fn on_fit_start(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// Before the sanity-check validation batches.
    fn on_sanity_check_start(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// After the sanity-check validation batches.
    fn on_sanity_check_end(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// At the start of every training epoch.
    fn on_train_epoch_start(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// Before every training batch.
    fn on_train_batch_start(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
        batch_idx: usize,
    ) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// After every training batch (and its optimizer step, when one was due).
    fn on_train_batch_end(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
        outputs: &StepOutput,
        batch_idx: usize,
    ) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// Before a validation epoch.
    fn on_validation_epoch_start(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// After every validation batch.
    fn on_validation_batch_end(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
        outputs: &StepOutput,
        batch_idx: usize,
    ) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// After a validation epoch (`loss/val` is logged).
    fn on_validation_epoch_end(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// At the end of every training epoch (after validation and the epoch scheduler step).
    fn on_train_epoch_end(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// Once, at the end.
    fn on_fit_end(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// State saved in checkpoints (restored on resume by [`Callback::load_state_dict`]).
    fn state_dict(&self) -> Option<serde_json::Value> {
        None
    }
    /// Restores the state written by [`Callback::state_dict`].
    fn load_state_dict(&mut self, state: serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// Whether lower or higher values of a monitored metric are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Lower is better.
    #[default]
    Min,
    /// Higher is better.
    Max,
}

impl Mode {
    fn improved(self, current: f64, best: f64, min_delta: f64) -> bool {
        match self {
            Mode::Min => current < best - min_delta,
            Mode::Max => current > best + min_delta,
        }
    }
    fn worst(self) -> f64 {
        match self {
            Mode::Min => f64::INFINITY,
            Mode::Max => f64::NEG_INFINITY,
        }
    }
}

/// Stops training when a monitored metric has not improved by more than `min_delta` for
/// `patience` consecutive checks (Lightning's `EarlyStopping`, checked after each validation
/// epoch). A missing metric is an error ([`crate::Error::MissingMetric`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// The metric (e.g. `"loss/val"`).
    pub monitor: String,
    /// Min or max.
    pub mode: Mode,
    /// Checks without improvement tolerated.
    pub patience: u64,
    /// Smallest change that counts as an improvement (≥ 0).
    pub min_delta: f64,
    best: f64,
    wait: u64,
    stopped_epoch: Option<u64>,
}

impl EarlyStopping {
    /// Monitors `monitor`; `min_delta` must be finite and ≥ 0.
    pub fn new(
        monitor: impl Into<String>,
        mode: Mode,
        patience: u64,
        min_delta: f64,
    ) -> Result<Self> {
        if !(min_delta.is_finite() && min_delta >= 0.0) {
            return Err(invalid("min_delta", min_delta, "must be finite and >= 0"));
        }
        Ok(Self {
            monitor: monitor.into(),
            mode,
            patience,
            min_delta,
            best: mode.worst(),
            wait: 0,
            stopped_epoch: None,
        })
    }

    /// The epoch at which it stopped training, if it did.
    pub fn stopped_epoch(&self) -> Option<u64> {
        self.stopped_epoch
    }

    /// The best value seen.
    pub fn best(&self) -> f64 {
        self.best
    }
}

impl Callback for EarlyStopping {
    fn name(&self) -> &str {
        "EarlyStopping"
    }

    fn on_validation_epoch_end(
        &mut self,
        state: &mut TrainerState,
        _: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        let current = state.metric(&self.monitor)?;
        if self.mode.improved(current, self.best, self.min_delta) {
            self.best = current;
            self.wait = 0;
            return Ok(Control::Continue);
        }
        self.wait += 1;
        if self.wait >= self.patience {
            self.stopped_epoch = Some(state.epoch);
            return Ok(Control::Stop);
        }
        Ok(Control::Continue)
    }

    fn state_dict(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }

    fn load_state_dict(&mut self, state: serde_json::Value) -> Result<()> {
        *self = serde_json::from_value(state)?;
        Ok(())
    }
}

/// Saves checkpoints ([`YAwareContrastiveLearning::save_checkpoint`]: the `state_dict` under the
/// reference names plus optimizer, scheduler and trainer state) into `dirpath`: the best
/// `save_top_k` by `monitor` (`epoch=E-step=S.safetensors`, worse ones deleted) and/or
/// `last.safetensors`, at the end of every training epoch and, with `every_n_train_steps`, after
/// every n-th optimizer step. Files are written atomically (temporary file + rename).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCheckpoint {
    /// Folder of the checkpoints.
    pub dirpath: PathBuf,
    /// Metric ranking the checkpoints; `None` keeps only `last`.
    pub monitor: Option<String>,
    /// Min or max.
    pub mode: Mode,
    /// How many of the best checkpoints to keep.
    pub save_top_k: usize,
    /// Also write `last.safetensors`.
    pub save_last: bool,
    /// Also save after every n-th optimizer step (mid-epoch, never inside a gradient
    /// accumulation window), as `last`.
    pub every_n_train_steps: Option<u64>,
    best: Vec<(f64, PathBuf)>,
    /// Whether the "monitor never logged" warning was printed.
    #[serde(skip, default)]
    warned_missing: bool,
}

impl ModelCheckpoint {
    /// The best `save_top_k` by `monitor`, plus `last`.
    pub fn new(
        dirpath: impl Into<PathBuf>,
        monitor: impl Into<String>,
        mode: Mode,
        save_top_k: usize,
    ) -> Self {
        Self {
            dirpath: dirpath.into(),
            monitor: Some(monitor.into()),
            mode,
            save_top_k,
            save_last: true,
            every_n_train_steps: None,
            best: Vec::new(),
            warned_missing: false,
        }
    }

    /// Only `last.safetensors`, at the end of every epoch.
    pub fn last_only(dirpath: impl Into<PathBuf>) -> Self {
        Self {
            dirpath: dirpath.into(),
            monitor: None,
            mode: Mode::Min,
            save_top_k: 0,
            save_last: true,
            every_n_train_steps: None,
            best: Vec::new(),
            warned_missing: false,
        }
    }

    /// The same, also saving `last` after every `n`-th optimizer step (mid-epoch).
    pub fn every_n_train_steps(mut self, n: u64) -> Self {
        self.every_n_train_steps = Some(n);
        self
    }

    /// The kept checkpoints, best first, with their monitored values.
    pub fn best_checkpoints(&self) -> &[(f64, PathBuf)] {
        &self.best
    }

    /// Path of `last.safetensors`.
    pub fn last_path(&self) -> PathBuf {
        self.dirpath.join("last.safetensors")
    }

    fn with_own_state(&self, state: &TrainerState) -> TrainerState {
        let mut s = state.clone();
        if let Some(v) = self.state_dict() {
            s.callback_states.insert(self.name().to_string(), v);
        }
        s
    }

    fn save_last(&self, state: &TrainerState, model: &YAwareContrastiveLearning) -> Result<()> {
        if self.save_last {
            model.save_checkpoint(self.last_path(), &self.with_own_state(state))?;
        }
        Ok(())
    }
}

impl Callback for ModelCheckpoint {
    fn name(&self) -> &str {
        "ModelCheckpoint"
    }

    fn on_train_batch_end(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
        _: &StepOutput,
        _: usize,
    ) -> Result<Control> {
        if let Some(n) = self.every_n_train_steps
            && n > 0
            && state.global_step > 0
            && state.global_step.is_multiple_of(n)
            && state.optimizer_stepped
        {
            self.save_last(state, model)?;
        }
        Ok(Control::Continue)
    }

    fn on_train_epoch_end(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        let monitored = match &self.monitor {
            Some(monitor) if self.save_top_k > 0 => match state.logged.get(monitor) {
                Some(&value) => Some(value),
                // Lightning: an error once validation has run (the metric should exist by
                // then), a warning before (it may be a validation metric).
                None if !state.history.val_loss.is_empty() => {
                    state.metric(monitor)?; // Error::MissingMetric, listing the logged ones
                    None
                }
                None => {
                    if !self.warned_missing {
                        self.warned_missing = true;
                        let logged: Vec<&String> = state.logged.keys().collect();
                        eprintln!(
                            "yaware-estimator: warning: ModelCheckpoint(monitor={monitor:?}) could \
                             not find the monitored metric among the logged ones {logged:?}; no \
                             top-k checkpoint is saved until it is logged"
                        );
                    }
                    None
                }
            },
            _ => None,
        };
        if let Some(value) = monitored
            && value.is_finite()
        {
            let qualifies = self.best.len() < self.save_top_k
                || self
                    .best
                    .last()
                    .is_some_and(|(worst, _)| self.mode.improved(value, *worst, 0.0));
            if qualifies {
                let path = self.dirpath.join(format!(
                    "epoch={}-step={}.safetensors",
                    state.epoch, state.global_step
                ));
                self.best.push((value, path.clone()));
                let mode = self.mode;
                self.best.sort_by(|a, b| match mode {
                    Mode::Min => a.0.total_cmp(&b.0),
                    Mode::Max => b.0.total_cmp(&a.0),
                });
                let removed: Vec<PathBuf> = if self.best.len() > self.save_top_k {
                    self.best
                        .split_off(self.save_top_k)
                        .into_iter()
                        .map(|(_, p)| p)
                        .collect()
                } else {
                    Vec::new()
                };
                if !removed.contains(&path) {
                    model.save_checkpoint(&path, &self.with_own_state(state))?;
                }
                for p in removed {
                    if p != path {
                        std::fs::remove_file(&p).map_err(io_err(&p))?;
                    }
                }
            }
        }
        self.save_last(state, model)?;
        Ok(Control::Continue)
    }

    fn state_dict(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.best).ok()
    }

    fn load_state_dict(&mut self, state: serde_json::Value) -> Result<()> {
        self.best = serde_json::from_value(state)?;
        Ok(())
    }
}

/// Logs the learning rate of every parameter group, `lr/<group>`, at the start of every
/// training batch (Lightning's `LearningRateMonitor(logging_interval="step")`).
#[derive(Debug, Clone, Default)]
pub struct LearningRateMonitor;

impl Callback for LearningRateMonitor {
    fn name(&self) -> &str {
        "LearningRateMonitor"
    }

    fn on_train_batch_start(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
        _: usize,
    ) -> Result<Control> {
        if let Some(opt) = model.optimizer() {
            for g in 0..opt.num_groups() {
                let name = format!("lr/{}", opt.group_name(g)?);
                state.log(&name, opt.lr(g)?);
            }
        }
        Ok(Control::Continue)
    }
}

/// Writes the logged values to a CSV file in Lightning's `CSVLogger` layout ("wide"): one
/// column per metric next to `epoch` and `step`, one row per logging call (the values logged at
/// one step between two writes; a metric logged twice at one step starts a new row), empty cells
/// for metrics a row does not have. When a new metric appears the whole file is rewritten with
/// the wider header, as Lightning does; otherwise rows are appended after every batch and
/// epoch. Columns: `epoch`, `step`, then the metrics in order of first appearance (those that
/// appear together sorted by name); readers that go by column name see Lightning's table.
/// Values are written in Rust's shortest round-trip form (`nan`, `inf`, `-inf` as Python
/// writes them). At the start of a run the file is rewritten from the full record (so a
/// resumed run's file holds its whole history; rows are then grouped by `(epoch, step)`).
#[derive(Debug, Clone)]
pub struct CsvLogger {
    path: PathBuf,
    written: usize,
    columns: Vec<String>,
    rows: Vec<CsvRow>,
}

#[derive(Debug, Clone)]
struct CsvRow {
    epoch: u64,
    step: u64,
    values: std::collections::BTreeMap<String, f64>,
}

fn csv_value(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{v}")
    }
}

impl CsvLogger {
    /// Logs into `path` (e.g. `<run dir>/metrics.csv`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            written: 0,
            columns: Vec::new(),
            rows: Vec::new(),
        }
    }

    fn row_text(&self, row: &CsvRow) -> String {
        let mut line = format!("{},{}", row.epoch, row.step);
        for c in &self.columns {
            line.push(',');
            if let Some(&v) = row.values.get(c) {
                line.push_str(&csv_value(v));
            }
        }
        line.push('\n');
        line
    }

    fn rewrite(&self) -> Result<()> {
        let mut text = String::from("epoch,step");
        for c in &self.columns {
            text.push(',');
            text.push_str(c);
        }
        text.push('\n');
        for row in &self.rows {
            text.push_str(&self.row_text(row));
        }
        std::fs::write(&self.path, text).map_err(io_err(&self.path))
    }

    fn flush(&mut self, state: &TrainerState) -> Result<()> {
        if self.written >= state.records.len() {
            return Ok(());
        }
        let first_new = self.rows.len();
        let mut new_columns = Vec::new();
        for r in &state.records[self.written..] {
            let joins = self.rows.len() > first_new
                && self.rows.last().is_some_and(|last| {
                    last.epoch == r.epoch
                        && last.step == r.step
                        && !last.values.contains_key(&r.name)
                });
            if !joins {
                self.rows.push(CsvRow {
                    epoch: r.epoch,
                    step: r.step,
                    values: Default::default(),
                });
            }
            if let Some(last) = self.rows.last_mut() {
                last.values.insert(r.name.clone(), r.value);
            }
            if !self.columns.contains(&r.name) && !new_columns.contains(&r.name) {
                new_columns.push(r.name.clone());
            }
        }
        self.written = state.records.len();
        if new_columns.is_empty() {
            let text: String = self.rows[first_new..]
                .iter()
                .map(|r| self.row_text(r))
                .collect();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&self.path)
                .map_err(io_err(&self.path))?;
            f.write_all(text.as_bytes()).map_err(io_err(&self.path))
        } else {
            new_columns.sort();
            self.columns.extend(new_columns);
            self.rewrite()
        }
    }
}

impl Callback for CsvLogger {
    fn name(&self) -> &str {
        "CsvLogger"
    }

    fn on_fit_start(
        &mut self,
        state: &mut TrainerState,
        _: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        self.written = 0;
        self.columns.clear();
        self.rows.clear();
        self.rewrite()?;
        // A resumed run's history: one row per (epoch, step), a repeated metric starting a
        // new one.
        self.flush(state)?;
        Ok(Control::Continue)
    }

    fn on_train_batch_end(
        &mut self,
        state: &mut TrainerState,
        _: &YAwareContrastiveLearning,
        _: &StepOutput,
        _: usize,
    ) -> Result<Control> {
        self.flush(state)?;
        Ok(Control::Continue)
    }

    fn on_train_epoch_end(
        &mut self,
        state: &mut TrainerState,
        _: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        self.flush(state)?;
        Ok(Control::Continue)
    }

    fn on_fit_end(
        &mut self,
        state: &mut TrainerState,
        _: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        self.flush(state)?;
        Ok(Control::Continue)
    }
}

/// One progress line on stderr when it is a terminal (epoch, step, loss, lr, samples/s, ETA),
/// nothing otherwise.
#[derive(Debug)]
pub struct ProgressBar {
    enabled: bool,
    start: Option<Instant>,
    start_samples: u64,
    start_step: u64,
}

impl ProgressBar {
    /// Enabled when stderr is a terminal.
    pub fn new() -> Self {
        Self {
            enabled: std::io::stderr().is_terminal(),
            start: None,
            start_samples: 0,
            start_step: 0,
        }
    }
}

impl Default for ProgressBar {
    fn default() -> Self {
        Self::new()
    }
}

impl Callback for ProgressBar {
    fn name(&self) -> &str {
        "ProgressBar"
    }

    fn on_fit_start(
        &mut self,
        state: &mut TrainerState,
        _: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        self.start = Some(Instant::now());
        self.start_samples = state.samples_seen;
        self.start_step = state.global_step;
        Ok(Control::Continue)
    }

    fn on_train_batch_end(
        &mut self,
        state: &mut TrainerState,
        model: &YAwareContrastiveLearning,
        _: &StepOutput,
        batch_idx: usize,
    ) -> Result<Control> {
        if !self.enabled {
            return Ok(Control::Continue);
        }
        let elapsed = self
            .start
            .map_or(0.0, |s| s.elapsed().as_secs_f64())
            .max(1e-9);
        let rate = (state.samples_seen - self.start_samples) as f64 / elapsed;
        let steps_done = (state.global_step - self.start_step) as f64;
        let per_epoch = state
            .num_train_batches
            .div_ceil(model.config().accumulate_grad_batches) as u64;
        let total = match (state.max_epochs, state.max_steps) {
            (Some(e), Some(s)) => Some((e * per_epoch).min(s)),
            (Some(e), None) => Some(e * per_epoch),
            (None, s) => s,
        };
        let eta = match total {
            Some(t) if steps_done > 0.0 => {
                let secs = (t.saturating_sub(state.global_step)) as f64 * elapsed / steps_done;
                format!(
                    "{:02}:{:02}:{:02}",
                    (secs / 3600.0) as u64,
                    (secs / 60.0) as u64 % 60,
                    secs as u64 % 60
                )
            }
            _ => "?".into(),
        };
        let loss = state.logged.get("loss/train").copied().unwrap_or(f64::NAN);
        let lr = model
            .optimizer()
            .and_then(|o| o.lr(0).ok())
            .unwrap_or(f64::NAN);
        eprint!(
            "\repoch {} batch {}/{} step {} loss {loss:.4} lr {lr:.3e} {rate:.1} samples/s ETA {eta}   ",
            state.epoch,
            batch_idx + 1,
            state.num_train_batches,
            state.global_step
        );
        Ok(Control::Continue)
    }

    fn on_fit_end(
        &mut self,
        _: &mut TrainerState,
        _: &YAwareContrastiveLearning,
    ) -> Result<Control> {
        if self.enabled {
            eprintln!();
        }
        Ok(Control::Continue)
    }
}
