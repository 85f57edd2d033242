//! A fused linear layer `y = x·Wᵀ + b`, optionally followed by a ReLU.
//!
//! On the CPU the layer is one custom op (`CustomOp3(x, W, b)`, or `CustomOp2(x, W)` without a
//! bias) whose forward is one `gemm` and one pass adding the bias (and clamping for the
//! ReLU), and whose backward calls `gemm` directly on the stored operands:
//! `dW = gᵀ·x`, `dx = g·W` (only when `x` can need a gradient) and `db = Σ_rows g`, with `g`
//! the output gradient masked by `y > 0` after a ReLU. candle's composed path
//! (`matmul` + `broadcast_add` + `relu`) spends most of its backward on single-threaded
//! element-wise ops instead: the broadcast bias sum, the ReLU's comparison mask, its dtype
//! conversion and product, the transposed weight gradient's strided copy.
//!
//! Other devices and dtypes use the composed candle ops (same values; autograd from candle).
//! The ReLU's gradient at a pre-activation of exactly 0 is 0 in the fused op (as PyTorch) and
//! 1 in candle's composed path; the two agree everywhere else.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType};
use std::sync::OnceLock;

use gemm::Parallelism;

use super::elem::{Real, cpu_slice, dispatch, with_cpu_slices};
use crate::{Error, Result};

/// `x·Wᵀ + b` for `x (…, in)`, `weight (out, in)` and `bias (out)`: the layer of PyTorch's
/// `nn.Linear` (and candle's `Linear`), as one fused op with a hand-written backward on the CPU.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use yaware_backbones::ops::linear;
///
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[1f32, 2.0]], &dev)?;
/// let w = Tensor::new(&[[1f32, 0.0], [0.0, -1.0], [1.0, 1.0]], &dev)?;
/// let b = Tensor::new(&[0.5f32, 0.0, -1.0], &dev)?;
/// assert_eq!(linear(&x, &w, Some(&b), false)?.to_vec2::<f32>()?, [[1.5, -2.0, 2.0]]);
/// assert_eq!(linear(&x, &w, Some(&b), true)?.to_vec2::<f32>()?, [[1.5, 0.0, 2.0]]);
/// # Ok::<(), yaware_backbones::Error>(())
/// ```
///
/// With `relu` the output is `max(x·Wᵀ + b, 0)`. Inputs of rank > 2 are flattened to rows and
/// the output gets their leading dimensions back.
///
/// Errors ([`Error::Input`], naming the shapes or dtypes): `x` of rank < 2, a weight that is
/// not 2D or whose width differs from `x`'s last dimension, a bias whose shape is not
/// `(out,)`, and operands of different dtypes or devices.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    let fused = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64);
    linear_impl(x, weight, bias, relu, fused)
}

/// The layer through the fused op (`fused`) or composed candle ops.
fn linear_impl(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
    fused: bool,
) -> Result<Tensor> {
    let out = check(x, weight, bias)?;
    if !fused {
        let y = x.broadcast_matmul(&weight.t()?)?;
        let y = match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        return Ok(if relu { y.relu()? } else { y });
    }
    let dims = x.dims();
    let (lead, width) = dims.split_at(dims.len() - 1);
    let rows: usize = lead.iter().product();
    let x2 = x.contiguous()?.reshape((rows, width[0]))?;
    let w = weight.contiguous()?;
    let op = LinearOp {
        relu,
        // Without a graph behind it (a data batch), x needs no gradient.
        input_grad: x.track_op(),
    };
    let y = match bias {
        Some(b) => x2.apply_op3(&w, &b.contiguous()?, op)?,
        None => x2.apply_op2(&w, op)?,
    };
    let mut shape = lead.to_vec();
    shape.push(out);
    Ok(y.reshape(shape)?)
}

/// Validates the operands and returns the output width.
fn check(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<usize> {
    let op = "linear";
    let bad = |problem: String| Err(Error::Input { op, problem });
    if x.rank() < 2 {
        return bad(format!(
            "expected an input (N, …, in), got shape {:?}",
            x.dims()
        ));
    }
    let &[out, width] = weight.dims() else {
        return bad(format!(
            "expected a weight (out, in), got shape {:?}",
            weight.dims()
        ));
    };
    if x.dims()[x.rank() - 1] != width {
        return bad(format!(
            "input shape {:?} does not match the weight's shape {:?} (in = {width})",
            x.dims(),
            weight.dims()
        ));
    }
    if let Some(b) = bias
        && b.dims() != [out]
    {
        return bad(format!(
            "expected a bias of shape [{out}] for the weight {:?}, got {:?}",
            weight.dims(),
            b.dims()
        ));
    }
    for (name, t) in [("weight", Some(weight)), ("bias", bias)] {
        let Some(t) = t else { continue };
        if t.dtype() != x.dtype() {
            return bad(format!(
                "the {name} is {:?} but the input is {:?}",
                t.dtype(),
                x.dtype()
            ));
        }
        if !t.device().same_device(x.device()) {
            return bad(format!(
                "the {name} is on {:?} but the input is on {:?}",
                t.device(),
                x.device()
            ));
        }
    }
    Ok(out)
}

/// The fused op: `y = [relu](x·Wᵀ [+ b])` for `x (n, in)`, `W (out, in)`, `b (out)`.
struct LinearOp {
    relu: bool,
    input_grad: bool,
}

/// A gemm parallelism over `threads` threads.
fn parallelism(threads: usize) -> Parallelism {
    match threads {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// The number of threads candle gives its own matmuls, read once: candle computes it on every
/// call from `RAYON_NUM_THREADS` or `/proc/cpuinfo` (tens of microseconds, more than the
/// smallest layers' gemms).
fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| candle_core::utils::get_num_threads().max(1))
}

/// `dst (m, n) = lhs (m, k) · rhs (k, n)` into a row-major `dst`, the operands given by their
/// (column, row) strides, on `threads` threads.
fn gemm_to<T: Real>(
    [m, n, k]: [usize; 3],
    dst: &mut [T],
    lhs: &[T],
    [lhs_cs, lhs_rs]: [usize; 2],
    rhs: &[T],
    [rhs_cs, rhs_rs]: [usize; 2],
    threads: usize,
) {
    let last = |rows: usize, cols: usize, cs: usize, rs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    assert!(dst.len() >= m * n, "linear: gemm destination too small");
    assert!(
        lhs.len() >= last(m, k, lhs_cs, lhs_rs),
        "linear: gemm lhs too small"
    );
    assert!(
        rhs.len() >= last(k, n, rhs_cs, rhs_rs),
        "linear: gemm rhs too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above keep every element the strides address inside its slice, and
    // `dst` is a distinct mutable slice, so it overlaps neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::from_f64(0.0),
            T::from_f64(1.0),
            false,
            false,
            false,
            parallelism(threads),
        );
    }
}

/// The forward pass: `(rows, out)` output of `x (rows, width)`.
fn forward_kernel<T: Real>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    [rows, width, out]: [usize; 3],
    relu: bool,
) -> Vec<T> {
    let zero = T::from_f64(0.0);
    let mut y = vec![zero; rows * out];
    // y = x · Wᵀ: Wᵀ (width, out) is W read with column stride `width` and row stride 1.
    gemm_to(
        [rows, out, width],
        &mut y,
        x,
        [1, width],
        w,
        [width, 1],
        threads(),
    );
    if out > 0 && (b.is_some() || relu) {
        for row in y.chunks_exact_mut(out) {
            if let Some(b) = b {
                for (v, &bj) in row.iter_mut().zip(b) {
                    *v += bj;
                }
            }
            if relu {
                for v in row.iter_mut() {
                    // max(v, 0) as candle's ReLU (NaN gives 0).
                    *v = T::pick(*v > zero, *v, zero);
                }
            }
        }
    }
    y
}

/// The gradients `(dx if wanted, dW, db if wanted)` from the output gradient `dy` (masked by
/// `y > 0` when `y` is given, i.e. after a ReLU).
#[allow(clippy::type_complexity)]
fn backward_kernel<T: Real>(
    x: &[T],
    w: &[T],
    y: Option<&[T]>,
    dy: &[T],
    [rows, width, out]: [usize; 3],
    need_dx: bool,
    need_db: bool,
) -> (Option<Vec<T>>, Vec<T>, Option<Vec<T>>) {
    let zero = T::from_f64(0.0);
    let masked;
    let g = match y {
        Some(y) => {
            masked = dy
                .iter()
                .zip(y)
                .map(|(&d, &v)| T::pick(v > zero, d, zero))
                .collect::<Vec<T>>();
            &masked[..]
        }
        None => dy,
    };
    // dW (out, width) = gᵀ · x (gᵀ is g read with column stride `out` and row stride 1) and
    // dx (rows, width) = g · W have the same size: with both wanted they run side by side,
    // each on half the threads, instead of one after the other on all of them (fewer
    // synchronisations inside small gemms).
    let all = threads();
    let (dw_threads, dx_threads) = if need_dx {
        (all.div_ceil(2), all / 2)
    } else {
        (all, 0)
    };
    let grad_w = || {
        let mut dw = vec![zero; out * width];
        gemm_to(
            [out, width, rows],
            &mut dw,
            g,
            [out, 1],
            x,
            [1, width],
            dw_threads,
        );
        dw
    };
    let grad_x_b = || {
        let dx = need_dx.then(|| {
            let mut dx = vec![zero; rows * width];
            gemm_to(
                [rows, width, out],
                &mut dx,
                g,
                [1, out],
                w,
                [1, width],
                dx_threads,
            );
            dx
        });
        let db = need_db.then(|| {
            let mut db = vec![zero; out];
            if out > 0 {
                for row in g.chunks_exact(out) {
                    for (s, &v) in db.iter_mut().zip(row) {
                        *s += v;
                    }
                }
            }
            db
        });
        (dx, db)
    };
    let (dw, (dx, db)) = if need_dx && all > 1 {
        rayon::join(grad_w, grad_x_b)
    } else {
        (grad_w(), grad_x_b())
    };
    (dx, dw, db)
}

type Grads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

impl LinearOp {
    fn forward(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = "linear";
        let (rows, width) = x.1.shape().dims2()?;
        let (out, _) = w.1.shape().dims2()?;
        dispatch!(x.0, name, |T| {
            let xs = cpu_slice::<T>(x.0, x.1, name)?;
            let ws = cpu_slice::<T>(w.0, w.1, name)?;
            let bs = match b {
                Some((s, l)) => Some(cpu_slice::<T>(s, l, name)?),
                None => None,
            };
            let y = forward_kernel(xs, ws, bs, [rows, width, out], self.relu);
            Ok((T::to_cpu_storage_owned(y), Shape::from((rows, out))))
        })
    }

    fn backward<T: Real>(
        &self,
        x: &Tensor,
        w: &Tensor,
        has_bias: bool,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<Grads> {
        let (rows, width) = x.dims2()?;
        let (out, _) = w.dims2()?;
        let need_dx = self.input_grad;
        with_cpu_slices::<T, _, 4>([x, w, res, dy], "linear", |[xs, ws, ys, dys]| {
            let ys = self.relu.then_some(ys);
            let dims = [rows, width, out];
            let (dx, dw, db) = backward_kernel(xs, ws, ys, dys, dims, need_dx, has_bias);
            let dev = x.device();
            let dx = dx
                .map(|d| Tensor::from_vec(d, (rows, width), dev))
                .transpose()?;
            let dw = Tensor::from_vec(dw, (out, width), dev)?;
            let db = db.map(|d| Tensor::from_vec(d, out, dev)).transpose()?;
            Ok((dx, Some(dw), db))
        })
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        has_bias: bool,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<Grads> {
        match x.dtype() {
            DType::F32 => self.backward::<f32>(x, w, has_bias, res, dy),
            DType::F64 => self.backward::<f64>(x, w, has_bias, res, dy),
            other => candle_core::bail!("linear: unsupported dtype {other:?}"),
        }
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<Grads> {
        self.grads(x, w, true, res, dy)
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, w, false, res, dy)?;
        Ok((dx, dw))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::linear_impl;
    use crate::Error;
    use crate::init::SeededRng;

    fn normal(rng: &mut SeededRng, shape: &[usize], dtype: DType) -> Tensor {
        rng.normal_tensor(shape, 0.0, 1.0, dtype, &Device::Cpu)
            .unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * scale,
                "{what}[{i}]: {x} vs {y} (tol {tol} × {scale})"
            );
        }
    }

    /// Output and gradients `[y, dx?, dW, db?]` of `Σ y ⊙ r` through the fused op or the
    /// composed candle ops.
    fn run(
        x: &Tensor,
        w: &Var,
        b: Option<&Var>,
        relu: bool,
        fused: bool,
        r: &Tensor,
    ) -> Vec<Option<Vec<f64>>> {
        let y = linear_impl(x, w.as_tensor(), b.map(|b| b.as_tensor()), relu, fused).unwrap();
        let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
        vec![
            Some(flat(&y)),
            g.get(x).map(flat),
            g.get(w.as_tensor()).map(flat),
            b.and_then(|b| g.get(b.as_tensor())).map(flat),
        ]
    }

    /// The fused op and candle's composed `matmul + broadcast_add + relu` agree in values and
    /// in every gradient, for f64 (rounding only: 1e-12 of the largest value) and f32 (1e-5),
    /// with and without bias and ReLU, for a variable and a constant input and a 3D input.
    #[test]
    fn fused_op_matches_composed_candle_ops() {
        let mut rng = SeededRng::new(7);
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            for shape in [vec![9, 5], vec![3, 4, 5]] {
                let mut out_shape = shape.clone();
                *out_shape.last_mut().unwrap() = 6;
                let w = Var::from_tensor(&normal(&mut rng, &[6, 5], dtype)).unwrap();
                let b = Var::from_tensor(&normal(&mut rng, &[6], dtype)).unwrap();
                let r = normal(&mut rng, &out_shape, dtype);
                let xv = Var::from_tensor(&normal(&mut rng, &shape, dtype)).unwrap();
                let xc = xv.as_tensor().detach();
                for x in [xv.as_tensor(), &xc] {
                    for bias in [Some(&b), None] {
                        for relu in [false, true] {
                            let fused = run(x, &w, bias, relu, true, &r);
                            let composed = run(x, &w, bias, relu, false, &r);
                            let what =
                                format!("{dtype:?} {shape:?} bias {} relu {relu}", bias.is_some());
                            for (k, (f, c)) in fused.iter().zip(&composed).enumerate() {
                                // candle's matmul also differentiates a constant input.
                                if k == 1 && !x.is_variable() {
                                    continue;
                                }
                                match (f, c) {
                                    (Some(f), Some(c)) => {
                                        assert_close(f, c, tol, &format!("{what} #{k}"))
                                    }
                                    (None, None) => {}
                                    _ => panic!("{what} #{k}: a gradient is missing on one side"),
                                }
                            }
                            // A variable input gets a gradient, a constant one does not.
                            assert_eq!(fused[1].is_some(), x.is_variable(), "{what}");
                            assert_eq!(fused[3].is_some(), bias.is_some(), "{what}");
                        }
                    }
                }
            }
        }
    }

    /// Central finite differences of `Σ y ⊙ r` (f64, step 1e-6) match every gradient of the
    /// fused op to 1e-7 relative (the truncation error is O(step²) on a piecewise-linear
    /// function; the values are kept away from the ReLU's kink).
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = SeededRng::new(11);
        let dt = DType::F64;
        let (n, i, o) = (4, 3, 5);
        let x = Var::from_tensor(&normal(&mut rng, &[n, i], dt)).unwrap();
        let w = Var::from_tensor(&normal(&mut rng, &[o, i], dt)).unwrap();
        let b = Var::from_tensor(&normal(&mut rng, &[o], dt)).unwrap();
        let r = normal(&mut rng, &[n, o], dt);
        for relu in [false, true] {
            let f = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
                let y = linear_impl(x, w, Some(b), relu, true).unwrap();
                (&y * &r).unwrap().sum_all().unwrap().to_scalar().unwrap()
            };
            let y = linear_impl(
                x.as_tensor(),
                w.as_tensor(),
                Some(b.as_tensor()),
                relu,
                true,
            )
            .unwrap();
            let pre = linear_impl(
                x.as_tensor(),
                w.as_tensor(),
                Some(b.as_tensor()),
                false,
                true,
            )
            .unwrap();
            assert!(
                flat(&pre).iter().all(|v| v.abs() > 1e-3),
                "too close to the kink"
            );
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let h = 1e-6;
            for (k, var) in [&x, &w, &b].into_iter().enumerate() {
                let base = flat(var.as_tensor());
                let analytic = flat(g.get(var.as_tensor()).unwrap());
                let numeric: Vec<f64> = (0..base.len())
                    .map(|j| {
                        let shifted = |d: f64| {
                            let mut v = base.clone();
                            v[j] += d;
                            let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                            let mut args = [
                                x.as_tensor().clone(),
                                w.as_tensor().clone(),
                                b.as_tensor().clone(),
                            ];
                            args[k] = t;
                            f(&args[0], &args[1], &args[2])
                        };
                        (shifted(h) - shifted(-h)) / (2.0 * h)
                    })
                    .collect();
                assert_close(&analytic, &numeric, 1e-7, &format!("relu {relu} arg {k}"));
            }
        }
    }

    /// After the ReLU, a pre-activation of exactly 0 passes no gradient (PyTorch's rule).
    #[test]
    fn relu_gradient_is_zero_at_zero() {
        let dev = Device::Cpu;
        let x = Var::new(&[[1.0f64, 2.0]], &dev).unwrap();
        let w = Var::new(&[[1.0f64, -0.5], [1.0, 1.0]], &dev).unwrap();
        let y = linear_impl(x.as_tensor(), w.as_tensor(), None, true, true).unwrap();
        assert_eq!(y.to_vec2::<f64>().unwrap(), [[0.0, 3.0]]);
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(
            g.get(x.as_tensor()).unwrap().to_vec2::<f64>().unwrap(),
            [[1.0, 1.0]]
        );
        assert_eq!(
            g.get(w.as_tensor()).unwrap().to_vec2::<f64>().unwrap(),
            [[0.0, 0.0], [1.0, 2.0]]
        );
    }

    #[test]
    fn errors_name_the_bad_shapes_and_dtypes() {
        let dev = Device::Cpu;
        let z = |s: &[usize], dt: DType| Tensor::zeros(s, dt, &dev).unwrap();
        let f = DType::F32;
        let cases = [
            (z(&[5], f), z(&[2, 5], f), None, "[5]"),
            (z(&[3, 5], f), z(&[2, 5, 1], f), None, "[2, 5, 1]"),
            (z(&[3, 4], f), z(&[2, 5], f), None, "[3, 4]"),
            (z(&[3, 5], f), z(&[2, 5], f), Some(z(&[3], f)), "got [3]"),
            (z(&[3, 5], f), z(&[2, 5], DType::F64), None, "F64"),
            (
                z(&[3, 5], f),
                z(&[2, 5], f),
                Some(z(&[2], DType::F64)),
                "F64",
            ),
        ];
        for (x, w, b, needle) in cases {
            for fused in [true, false] {
                let e = linear_impl(&x, &w, b.as_ref(), false, fused).unwrap_err();
                assert!(
                    matches!(&e, Error::Input { op: "linear", problem } if problem.contains(needle)),
                    "{e}"
                );
            }
        }
        // Half precision goes through the composed path.
        let y = super::linear(&z(&[3, 5], DType::F16), &z(&[2, 5], DType::F16), None, true);
        assert_eq!(y.unwrap().dims(), &[3, 2]);
    }
}
