//! # yaware-estimator
//!
//! `YAwareContrastiveLearning`: the y-Aware estimator composing an encoder, a projection head,
//! the y-Aware InfoNCE loss, an optimizer and a scheduler, with a small Lightning-like trainer
//! (hooks, callbacks, `fit` / `transform`).
//!
//! Place in the workspace: the top library crate; it depends on every other `yaware-*` crate
//! and is the only one that knows about epochs, callbacks, checkpoints and logging.
//!
//! **Status: not implemented yet.** This crate is a placeholder for the estimator issue; it
//! exports nothing.
