//! `conv3d`: tiled im2col + gemm custom op with a hand-written backward.
//!
//! On x86-64 CPUs with AVX2 and FMA, f32 convolutions with enough output positions run the
//! forward pass and the weight gradient on a direct (implicit-GEMM) kernel instead
//! (`direct.rs`), which reads the padded input in place of an im2col copy; set the environment
//! variable `YAWARE_CONV3D_IM2COL=1` to force im2col + gemm (to compare both).
//!
//! Kernel taps that only ever read padding (a 3³ kernel on a 1³ volume) are cut before any
//! kernel runs (`live.rs`): the op then runs on the kept taps only, with a zero weight gradient
//! for the others.
//!
//! The op is a `candle_core::CustomOp2` on `(x, w)`. Its backward pass calls two helper ops
//! without autograd: the weight gradient (`dY · colᵀ`, accumulated per thread) when `w` is
//! tracked, and the input gradient when `params.input_grad` is set and `x` is tracked (for
//! stride 1 a convolution of `dY` with the flipped kernel, otherwise `Wᵀ · dY` and a race-free
//! col2im). See `kernels.rs` for the tiling. Grouped convolutions (`groups > 1`) run the
//! ungrouped op once per group (`grouped.rs`).

mod direct;
mod grouped;
mod kernels;
mod live;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use self::kernels::{Float, Geom};
use crate::{Error, Result};

const OP: &str = "conv3d";

/// Per-axis (D, H, W) hyper-parameters of a 3D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dParams {
    /// Stride per axis.
    pub stride: [usize; 3],
    /// Zero padding per axis (both sides).
    pub padding: [usize; 3],
    /// Dilation per axis.
    pub dilation: [usize; 3],
    /// Number of channel groups (PyTorch's `groups`; 1 = an ordinary convolution): input
    /// and output channels are split into `groups` blocks and block `g` of the output sees
    /// only block `g` of the input, through a weight of shape `(C_out, C_in / groups, k…)`.
    pub groups: usize,
    /// Whether the backward pass computes the input gradient (false for a stem on raw volumes).
    pub input_grad: bool,
}

impl Default for Conv3dParams {
    fn default() -> Self {
        Self {
            stride: [1; 3],
            padding: [0; 3],
            dilation: [1; 3],
            groups: 1,
            input_grad: true,
        }
    }
}

impl Conv3dParams {
    /// The same stride and padding on every axis, dilation 1, input gradient on: PyTorch's
    /// `Conv3d(…, stride=s, padding=p)`.
    pub fn new(stride: usize, padding: usize) -> Self {
        Self {
            stride: [stride; 3],
            padding: [padding; 3],
            ..Self::default()
        }
    }

    /// Sets the per-axis stride.
    pub fn with_stride(mut self, stride: [usize; 3]) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the per-axis padding.
    pub fn with_padding(mut self, padding: [usize; 3]) -> Self {
        self.padding = padding;
        self
    }

    /// Sets the per-axis dilation.
    pub fn with_dilation(mut self, dilation: [usize; 3]) -> Self {
        self.dilation = dilation;
        self
    }

    /// Sets the number of channel groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Sets whether the backward pass computes the input gradient.
    pub fn with_input_grad(mut self, input_grad: bool) -> Self {
        self.input_grad = input_grad;
        self
    }

    /// Checks that stride and dilation are positive on every axis and `groups` is positive.
    pub fn validate(&self) -> Result<()> {
        if self.groups == 0 {
            return Err(Error::InvalidParam {
                name: "groups",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        for (name, v) in [("stride", self.stride), ("dilation", self.dilation)] {
            if v.contains(&0) {
                return Err(Error::InvalidParam {
                    name,
                    value: format!("{v:?}"),
                    reason: "must be at least 1 on every axis".into(),
                });
            }
        }
        Ok(())
    }

    /// Output size `(oD, oH, oW)` for an input volume `(D, H, W)` and a kernel `(kD, kH, kW)`:
    /// `⌊(I + 2p − d·(k − 1) − 1) / s⌋ + 1` per axis. Fails on a zero stride, dilation or kernel
    /// size, or when the (dilated) kernel does not fit in the padded input.
    pub fn output_size(&self, input: [usize; 3], kernel: [usize; 3]) -> Result<[usize; 3]> {
        self.validate()?;
        if kernel.contains(&0) {
            return Err(Error::InvalidParam {
                name: "kernel_size",
                value: format!("{kernel:?}"),
                reason: "must be at least 1 on every axis".into(),
            });
        }
        let mut out = [0; 3];
        for a in 0..3 {
            let span = self.dilation[a] * (kernel[a] - 1) + 1;
            let padded = input[a] + 2 * self.padding[a];
            if span > padded {
                return Err(Error::Input {
                    op: OP,
                    problem: format!(
                        "input volume {input:?} with padding {:?} is smaller than the kernel \
                         {kernel:?} with dilation {:?} (axis {a}: {padded} < {span}); the \
                         output would be empty",
                        self.padding, self.dilation
                    ),
                });
            }
            out[a] = (padded - span) / self.stride[a] + 1;
        }
        Ok(out)
    }
}

/// 3D convolution of `x (N, C_in, D, H, W)` with `w (C_out, C_in / groups, kD, kH, kW)`, no
/// bias (add one with `broadcast_add`).
///
/// PyTorch semantics (cross-correlation, zero padding); the output is
/// `(N, C_out, oD, oH, oW)` with the sizes of [`Conv3dParams::output_size`]. Runs on the CPU in
/// f32 or f64; non-contiguous inputs are copied first. The result has autograd: the weight
/// gradient always, the input gradient when `params.input_grad` is set and `x` is tracked.
///
/// With `params.groups > 1`, `C_in` and `C_out` must be multiples of `groups` and the weight
/// must have `C_in / groups` input channels ([`Error::InvalidParam`] / [`Error::Input`] naming
/// the values otherwise); each group is then an ordinary convolution of its channel block,
/// the results concatenated along the channels.
pub fn conv3d(x: &Tensor, w: &Tensor, params: &Conv3dParams) -> Result<Tensor> {
    if params.groups != 1 {
        return grouped::conv3d_grouped(x, w, params);
    }
    let geom = check(x, w, params)?;
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let op = Conv3dOp {
        params: *params,
        geom,
    };
    Ok(x.apply_op2(&w, op)?)
}

/// Validates the inputs and returns the geometry of the convolution.
fn check(x: &Tensor, w: &Tensor, params: &Conv3dParams) -> Result<Geom> {
    let input_err = |problem: String| Error::Input { op: OP, problem };
    let (xd, wd) = (x.dims(), w.dims());
    if xd.len() != 5 {
        return Err(input_err(format!(
            "input must be (N, C_in, D, H, W), got shape {xd:?}"
        )));
    }
    if wd.len() != 5 {
        return Err(input_err(format!(
            "weight must be (C_out, C_in, kD, kH, kW), got shape {wd:?}"
        )));
    }
    for (name, dt) in [("input", x.dtype()), ("weight", w.dtype())] {
        if !matches!(dt, DType::F32 | DType::F64) {
            return Err(input_err(format!(
                "{name} has dtype {dt:?}; only f32 and f64 are supported"
            )));
        }
    }
    if x.dtype() != w.dtype() {
        return Err(input_err(format!(
            "input dtype {:?} differs from weight dtype {:?}",
            x.dtype(),
            w.dtype()
        )));
    }
    if !x.device().is_cpu() || !w.device().is_cpu() {
        return Err(input_err(format!(
            "runs on the CPU only, got input on {:?} and weight on {:?}",
            x.device().location(),
            w.device().location()
        )));
    }
    if xd[1] != wd[1] {
        return Err(input_err(format!(
            "input has {} channels (shape {xd:?}) but the weight expects {} (shape {wd:?})",
            xd[1], wd[1]
        )));
    }
    if wd[0] == 0 || wd[1] == 0 {
        return Err(input_err(format!(
            "weight shape {wd:?} has zero output or input channels"
        )));
    }
    let input = [xd[2], xd[3], xd[4]];
    if input.contains(&0) {
        return Err(input_err(format!(
            "input shape {xd:?} has an empty spatial axis"
        )));
    }
    let kernel = [wd[2], wd[3], wd[4]];
    let output = params.output_size(input, kernel)?;
    Ok(Geom {
        n: xd[0],
        c_in: wd[1],
        c_out: wd[0],
        input,
        kernel,
        output,
        stride: params.stride,
        padding: params.padding,
        dilation: params.dilation,
    })
}

/// The contiguous data of one operand.
fn data<'a, T>(s: &'a [T], l: &Layout, shape: &Shape, what: &str) -> candle_core::Result<&'a [T]> {
    if l.shape() != shape {
        candle_core::bail!("{OP}: {what} has shape {:?}, expected {shape:?}", l.shape());
    }
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s[start..end]),
        None => candle_core::bail!("{OP}: {what} must be contiguous"),
    }
}

/// Which kernel a [`GeomOp`] runs.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `(x, w) → y`.
    Forward,
    /// `(x, dy) → dw`.
    GradWeight,
    /// `(dy, w) → dx`.
    GradInput,
}

impl Kind {
    fn run<T: Float>(self, g: &Geom, a: &[T], b: &[T]) -> Vec<T> {
        if let Some(nr) = live::Narrowed::new(g) {
            let ng = &nr.geom;
            return match self {
                Self::Forward => kernels::forward(ng, a, &nr.pack(b)),
                Self::GradWeight => nr.unpack(&kernels::grad_weight(ng, a, b)),
                Self::GradInput => kernels::grad_input(ng, a, &nr.pack(b)),
            };
        }
        match self {
            Self::Forward => kernels::forward(g, a, b),
            Self::GradWeight => kernels::grad_weight(g, a, b),
            Self::GradInput => kernels::grad_input(g, a, b),
        }
    }
}

/// Shapes of the operands and result of each kernel.
fn shapes(kind: Kind, g: &Geom) -> [Shape; 3] {
    let [d, h, w] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [od, oh, ow] = g.output;
    let x = Shape::from((g.n, g.c_in, d, h, w));
    let wt = Shape::from((g.c_out, g.c_in, kd, kh, kw));
    let y = Shape::from((g.n, g.c_out, od, oh, ow));
    match kind {
        Kind::Forward => [x, wt, y],
        Kind::GradWeight => [x, y, wt],
        Kind::GradInput => [y, wt, x],
    }
}

fn cpu_run(
    kind: Kind,
    g: &Geom,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let [sh1, sh2, out] = shapes(kind, g);
    let storage = match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            let (a, b) = (data(a, l1, &sh1, "lhs")?, data(b, l2, &sh2, "rhs")?);
            CpuStorage::F32(kind.run(g, a, b))
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            let (a, b) = (data(a, l1, &sh1, "lhs")?, data(b, l2, &sh2, "rhs")?);
            CpuStorage::F64(kind.run(g, a, b))
        }
        (a, b) => candle_core::bail!(
            "{OP}: unsupported dtypes {:?} and {:?} (f32 or f64 only)",
            a.dtype(),
            b.dtype()
        ),
    };
    Ok((storage, out))
}

/// The differentiable forward op.
#[derive(Debug, Clone, Copy)]
struct Conv3dOp {
    params: Conv3dParams,
    geom: Geom,
}

impl CustomOp2 for Conv3dOp {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_run(Kind::Forward, &self.geom, s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&dy, &GradOp(Kind::GradWeight, self.geom))?)
        } else {
            None
        };
        let dx = if self.params.input_grad && x.track_op() {
            Some(dy.apply_op2_no_bwd(w, &GradOp(Kind::GradInput, self.geom))?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// A gradient kernel, run without autograd.
#[derive(Debug, Clone, Copy)]
struct GradOp(Kind, Geom);

impl CustomOp2 for GradOp {
    fn name(&self) -> &'static str {
        match self.0 {
            Kind::Forward => OP,
            Kind::GradWeight => "conv3d-grad-weight",
            Kind::GradInput => "conv3d-grad-input",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_run(self.0, &self.1, s1, l1, s2, l2)
    }
}
