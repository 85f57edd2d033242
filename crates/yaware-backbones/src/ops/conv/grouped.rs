//! Grouped 3D convolutions (`groups > 1`): one ungrouped [`conv3d`] per channel group.
//!
//! Group `g` convolves input channels `[g·C_in/G, (g+1)·C_in/G)` with output channels
//! `[g·C_out/G, (g+1)·C_out/G)` of the weight (`narrow` views), and the group outputs are
//! concatenated along the channels. Gradients flow through candle's autograd (`narrow` and
//! `cat`), so the backward pass is the ungrouped one per group; the input gradient of each
//! `narrow` is zero-padded to the full input by candle, which costs `O(G · |x|)` extra memory
//! traffic in backward (negligible next to the convolutions for the few groups of ResNeXt
//! blocks, noticeable for depthwise convolutions).

use candle_core::Tensor;

use super::{Conv3dParams, OP, conv3d};
use crate::{Error, Result};

/// [`conv3d`] with `params.groups != 1`: validates the channel counts against the groups and
/// runs one ungrouped convolution per group.
pub(super) fn conv3d_grouped(x: &Tensor, w: &Tensor, params: &Conv3dParams) -> Result<Tensor> {
    params.validate()?;
    let groups = params.groups;
    let input_err = |problem: String| Error::Input { op: OP, problem };
    let (xd, wd) = (x.dims(), w.dims());
    if xd.len() != 5 {
        return Err(input_err(format!(
            "input must be (N, C_in, D, H, W), got shape {xd:?}"
        )));
    }
    if wd.len() != 5 {
        return Err(input_err(format!(
            "weight must be (C_out, C_in / groups, kD, kH, kW), got shape {wd:?}"
        )));
    }
    let (c_in, c_out) = (xd[1], wd[0]);
    for (what, c, shape) in [("input", c_in, xd), ("output", c_out, wd)] {
        if c % groups != 0 {
            return Err(Error::InvalidParam {
                name: "groups",
                value: groups.to_string(),
                reason: format!(
                    "the {what} channels ({c}, {what} shape {shape:?}) must be divisible by \
                     groups"
                ),
            });
        }
    }
    if wd[1] * groups != c_in {
        return Err(input_err(format!(
            "input has {c_in} channels (shape {xd:?}) but the weight (shape {wd:?}) with \
             groups = {groups} expects {}",
            wd[1] * groups
        )));
    }
    let (cig, cog) = (c_in / groups, c_out / groups);
    // Without an input gradient the group slices must not track `x` either: candle would
    // expect a gradient for each `narrow` node.
    let x = if params.input_grad {
        x.clone()
    } else {
        x.detach()
    };
    let single = Conv3dParams {
        groups: 1,
        ..*params
    };
    let outs = (0..groups)
        .map(|g| {
            conv3d(
                &x.narrow(1, g * cig, cig)?,
                &w.narrow(0, g * cog, cog)?,
                &single,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&outs, 1)?)
}
