//! The [`Backbone`] trait every encoder implements, and helpers to tell parameters from buffers.

use candle_core::{Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::{Error, Result};

/// An encoder: `(N, C, D, H, W)` volumes (or `(N, F)` features for an MLP) → `(N, output_dim)`.
///
/// Every parameter and buffer lives in the [`VarMap`] returned by [`Backbone::varmap`] under
/// its reference `state_dict` name (`conv1.weight`, `bn1.running_mean`, …), so saving the map
/// gives a checkpoint PyTorch users recognise and loading converted PyTorch weights is loading
/// the map.
pub trait Backbone: Send + Sync {
    /// Forward pass; `train` selects batch statistics (and updates the running statistics of
    /// every batch norm) or the running statistics.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;

    /// Width of the output embedding.
    fn output_dim(&self) -> usize;

    /// Parameters and buffers by their reference names.
    fn varmap(&self) -> &VarMap;

    /// State of the network's own random generator (dropout masks), saved by checkpoints so a
    /// resumed run draws the same masks as an uninterrupted one; `None` (the default) for
    /// networks that draw nothing.
    fn rng_state(&self) -> Option<u64> {
        None
    }

    /// Restores a state returned by [`rng_state`](Self::rng_state); a no-op by default.
    fn set_rng_state(&self, state: u64) {
        let _ = state;
    }
}

/// Whether a `state_dict` name is a buffer (batch-norm running statistics and counter), which
/// optimisers must not update.
pub fn is_buffer_name(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}

/// The trainable variables of a map (buffers left out), sorted by name for a stable order.
pub fn trainable_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    sorted_vars(varmap, |n| !is_buffer_name(n))
}

/// The buffers of a map (batch-norm running statistics and counters), sorted by name.
pub fn buffer_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    sorted_vars(varmap, is_buffer_name)
}

fn sorted_vars(varmap: &VarMap, keep: impl Fn(&str) -> bool) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(n, _)| keep(n))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Reads the weight `name` of shape `shape` from `vb`, never creating it: a missing name is
/// [`Error::MissingWeight`], a different shape [`Error::WeightShape`] (both name the weight).
pub(crate) fn get_weight(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Tensor> {
    if !vb.contains_tensor(name) {
        return Err(Error::MissingWeight {
            name: full_name(vb, name),
            expected: shape.to_vec(),
        });
    }
    match vb.get(shape, name) {
        Ok(t) => Ok(t),
        Err(e) => match vb.get_unchecked(name) {
            Ok(t) if t.dims() != shape => Err(Error::WeightShape {
                name: full_name(vb, name),
                got: t.dims().to_vec(),
                expected: shape.to_vec(),
            }),
            // A VarMap cannot be read unchecked: candle's message names the weight and both
            // shapes.
            _ => Err(e.into()),
        },
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
