//! CPU kernels of `conv3d`: tiled im2col + `gemm`.
//!
//! The output positions `(n, od, oh, ow)` are flattened into one axis of length
//! `P = N·oD·oH·oW` and cut into tiles of a few hundred columns (whole output rows when a row
//! fits). A tile's column buffer is the `(K, T)` matrix (`K = C_in·kD·kH·kW` rows, `T` tile
//! columns, row-major) of the input values each output position sees; the forward pass is then
//! `(C_out, K) · (K, T)`. Tiles are spread over the rayon threads in contiguous groups, each with
//! its own buffers and a single-threaded `gemm`; when the whole problem is one small tile (tiny
//! volumes) the rows of its `gemm` are split over the threads instead.
//!
//! im2col reads a staged copy of the input ([`Staging`]: zero-padded, W split into stride
//! phases), so that every (row, output row) pair is one contiguous copy with no bounds tests.
//!
//! - Weight gradient: `dW = Σ_tiles dY_tile · colᵀ`, accumulated per thread group, then summed.
//! - Input gradient: for stride 1, the forward kernel on `dY` with the flipped, transposed
//!   weights; otherwise `Wᵀ · dY` per tile and a col2im scatter-add, parallel over channels.
//! - 1×1×1 kernels: stride 1 and no padding is a plain matmul per sample (no im2col); strided is
//!   a subsample followed by that matmul.

use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::direct;

/// The element types the kernels run on.
pub(super) trait Float: Copy + Send + Sync + 'static + std::ops::AddAssign {
    const ZERO: Self;
    const ONE: Self;

    /// The forward pass by the direct kernel (`direct.rs`) where this type, the CPU and the
    /// geometry suit it; `None` to use im2col + `gemm`.
    fn direct_forward(_g: &Geom, _st: &Staging, _xs: &[Self], _w: &[Self]) -> Option<Vec<Self>> {
        None
    }

    /// The weight gradient by the direct kernel, under the same conditions.
    fn direct_grad_weight(
        _g: &Geom,
        _st: &Staging,
        _xs: &[Self],
        _dy: &[Self],
    ) -> Option<Vec<Self>> {
        None
    }
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;

    fn direct_forward(g: &Geom, st: &Staging, xs: &[Self], w: &[Self]) -> Option<Vec<Self>> {
        (direct::enabled() && direct::preferred_forward(g, st))
            .then(|| direct::forward(g, st, xs, w))
    }

    fn direct_grad_weight(g: &Geom, st: &Staging, xs: &[Self], dy: &[Self]) -> Option<Vec<Self>> {
        (direct::enabled() && direct::suits(g, st)).then(|| direct::grad_weight(g, st, xs, dy))
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// Shapes and hyper-parameters of one convolution, already validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) c_in: usize,
    pub(super) c_out: usize,
    pub(super) input: [usize; 3],
    pub(super) kernel: [usize; 3],
    pub(super) output: [usize; 3],
    pub(super) stride: [usize; 3],
    pub(super) padding: [usize; 3],
    pub(super) dilation: [usize; 3],
}

impl Geom {
    pub(super) fn in_vol(&self) -> usize {
        self.input.iter().product()
    }

    pub(super) fn out_vol(&self) -> usize {
        self.output.iter().product()
    }

    /// Rows of the column matrix: `C_in·kD·kH·kW`.
    pub(super) fn kdim(&self) -> usize {
        self.c_in * self.kernel.iter().product::<usize>()
    }

    pub(super) fn positions(&self) -> usize {
        self.n * self.out_vol()
    }

    /// A 1×1×1 kernel with stride 1 and no padding: the column matrix is the input itself.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1; 3] && self.stride == [1; 3] && self.padding == [0; 3]
    }

    /// A strided 1×1×1 kernel without padding: a pointwise convolution of the subsampled
    /// input, [`Geom::subsampled`].
    fn is_subsampling(&self) -> bool {
        self.kernel == [1; 3] && self.padding == [0; 3] && self.stride != [1; 3]
    }

    /// The pointwise convolution on the subsampled input `x[:, :, ::sD, ::sH, ::sW]`.
    fn subsampled(&self) -> Self {
        Self {
            input: self.output,
            stride: [1; 3],
            dilation: [1; 3],
            ..*self
        }
    }

    /// Calls `f(offset in x, offset in the subsampled volume)` for the start of every output
    /// row of one `(n, c)` volume of a subsampling convolution.
    fn for_each_sub_row(&self, mut f: impl FnMut(usize, usize)) {
        let [_, h, w] = self.input;
        let [od, oh, ow] = self.output;
        let [sd, sh, _] = self.stride;
        for z in 0..od {
            for y in 0..oh {
                f((z * sd * h + y * sh) * w, (z * oh + y) * ow);
            }
        }
    }
}

/// The input re-laid out for im2col: zero-padded on every axis and, along W, split into
/// `stride_w` phases (`(N, C, Dp, Hp, S, Wq)` with `Wp = W + 2·p_w = S·Wq` rounded up), so that
/// the values one kernel tap sees along an output row are contiguous and in range: im2col is
/// then branch-free copies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Staging {
    hp: usize,
    s: usize,
    wq: usize,
    /// Elements per `(n, c)` volume.
    pub(super) vol: usize,
}

impl Staging {
    pub(super) fn new(g: &Geom) -> Self {
        let [d, h, w] = g.input;
        let [pd, ph, pw] = g.padding;
        let s = g.stride[2];
        let (dp, hp, wq) = (d + 2 * pd, h + 2 * ph, (w + 2 * pw).div_ceil(s));
        Self {
            hp,
            s,
            wq,
            vol: dp * hp * s * wq,
        }
    }

    /// Offset of padded position `(d, h, w)` inside one `(n, c)` volume.
    fn at(&self, d: usize, h: usize, w: usize) -> usize {
        ((d * self.hp + h) * self.s + w % self.s) * self.wq + w / self.s
    }

    /// Offset, inside one `(n, c)` volume, of the value kernel tap `(kd, kh, kw)` sees for the
    /// output position `(0, 0, 0)`.
    pub(super) fn tap(&self, g: &Geom, kd: usize, kh: usize, kw: usize) -> usize {
        let [dd, dh, dw] = g.dilation;
        self.at(kd * dd, kh * dh, kw * dw)
    }

    /// Offset, inside one `(n, c)` volume, of the first value of output row `(od, oh, ow0..)`
    /// for tap `(0, 0, 0)`; consecutive `ow` are consecutive elements.
    pub(super) fn out_row(&self, g: &Geom, od: usize, oh: usize, ow0: usize) -> usize {
        ((od * g.stride[0] * self.hp + oh * g.stride[1]) * self.s) * self.wq + ow0
    }

    /// Offsets of every column-matrix row `(c, kd, kh, kw)` in the staged input.
    pub(super) fn row_offsets(&self, g: &Geom) -> Vec<usize> {
        let [kd_n, kh_n, kw_n] = g.kernel;
        let mut offs = Vec::with_capacity(g.kdim());
        for c in 0..g.c_in {
            for kd in 0..kd_n {
                for kh in 0..kh_n {
                    for kw in 0..kw_n {
                        offs.push(c * self.vol + self.tap(g, kd, kh, kw));
                    }
                }
            }
        }
        offs
    }

    /// Copies `x (N, C, D, H, W)` into the staged layout.
    pub(super) fn stage<T: Float>(&self, g: &Geom, x: &[T]) -> Vec<T> {
        let len = g.n * g.c_in * self.vol;
        let mut out: Vec<T> = Vec::with_capacity(len);
        let (w, pw) = (g.input[2], g.padding[2]);
        // Each task zeroes its own volume, then copies the rows in: a zeroed allocation is one
        // single-threaded `memset` of the whole buffer when the allocator reuses memory (most
        // calls), here the zeroing is split over the threads and leaves the volume in cache.
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(self.vol)
            .zip(x.par_chunks(g.in_vol()))
            .for_each(|(o, xv)| {
                o.fill(MaybeUninit::new(T::ZERO));
                for (r, src) in xv.chunks_exact(w).enumerate() {
                    let start = self.row_start(g, r);
                    if self.s == 1 {
                        for (o, &v) in o[start + pw..][..w].iter_mut().zip(src) {
                            o.write(v);
                        }
                    } else {
                        for (w0, at) in self.phases(g, start) {
                            let src = src[w0..].iter().step_by(self.s);
                            for (o, &v) in o[at..].iter_mut().zip(src) {
                                o.write(v);
                            }
                        }
                    }
                }
            });
        // SAFETY: the chunks cover the first `len` slots, and each was filled with zeros
        // before its rows were written.
        unsafe { out.set_len(len) };
        out
    }

    /// Crops the staged layout back to `(N, C, D, H, W)`.
    fn unstage<T: Float>(&self, g: &Geom, staged: &[T]) -> Vec<T> {
        let mut out = vec![T::ZERO; g.n * g.c_in * g.in_vol()];
        let (w, pw) = (g.input[2], g.padding[2]);
        out.par_chunks_mut(g.in_vol())
            .zip(staged.par_chunks(self.vol))
            .for_each(|(o, sv)| {
                for (r, dst_row) in o.chunks_exact_mut(w).enumerate() {
                    let start = self.row_start(g, r);
                    if self.s == 1 {
                        dst_row.copy_from_slice(&sv[start + pw..][..w]);
                    } else {
                        for (w0, st) in self.phases(g, start) {
                            for (o, v) in dst_row[w0..].iter_mut().step_by(self.s).zip(&sv[st..]) {
                                *o = *v;
                            }
                        }
                    }
                }
            });
        out
    }

    /// Staged offset of input row `r = id·H + ih`, column 0 (phase 0 when strided).
    fn row_start(&self, g: &Geom, r: usize) -> usize {
        let h = g.input[1];
        let [pd, ph, _] = g.padding;
        ((r / h + pd) * self.hp + r % h + ph) * self.s * self.wq
    }

    /// For a strided W axis: `(first input column of the phase, staged offset of it)` for every
    /// phase that holds at least one input column, given the staged row start.
    fn phases<'a>(
        &'a self,
        g: &'a Geom,
        row_start: usize,
    ) -> impl Iterator<Item = (usize, usize)> + 'a {
        let (w, pw, s) = (g.input[2], g.padding[2], self.s);
        (0..s).filter_map(move |phase| {
            let w0 = (phase + s - pw % s) % s;
            (w0 < w).then(|| (w0, row_start + phase * self.wq + (w0 + pw) / s))
        })
    }
}

/// A run of consecutive output positions along W inside one tile.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Offset of the run's first value (tap 0, channel 0) in the staged input.
    base: usize,
    /// The same offset inside its `(n, c)` volume.
    spatial: usize,
    /// Sample index.
    n: usize,
    len: usize,
    /// Column of the run's first position in the tile.
    t: usize,
}

/// A run of consecutive output positions of one sample inside one tile.
#[derive(Debug, Clone, Copy)]
struct Seg {
    n: usize,
    /// Flattened spatial index of the first position.
    s0: usize,
    len: usize,
    /// Column of the segment's first position in the tile.
    t: usize,
}

fn tile_runs(g: &Geom, st: &Staging, cols: Range<usize>, runs: &mut Vec<Run>) {
    let [od_n, oh_n, ow_n] = g.output;
    let sample = g.c_in * st.vol;
    runs.clear();
    let mut p = cols.start;
    while p < cols.end {
        let ow = p % ow_n;
        let r = p / ow_n;
        let oh = r % oh_n;
        let r = r / oh_n;
        let od = r % od_n;
        let n = r / od_n;
        let len = (ow_n - ow).min(cols.end - p);
        let spatial = st.out_row(g, od, oh, ow);
        runs.push(Run {
            base: n * sample + spatial,
            spatial,
            n,
            len,
            t: p - cols.start,
        });
        p += len;
    }
}

fn tile_segs(g: &Geom, cols: Range<usize>, segs: &mut Vec<Seg>) {
    let s_n = g.out_vol();
    segs.clear();
    let mut p = cols.start;
    while p < cols.end {
        let (n, s0) = (p / s_n, p % s_n);
        let len = (s_n - s0).min(cols.end - p);
        segs.push(Seg {
            n,
            s0,
            len,
            t: p - cols.start,
        });
        p += len;
    }
}

/// How the flattened output positions are cut into tiles and the tiles spread over threads.
#[derive(Debug, Clone, Copy)]
struct Plan {
    positions: usize,
    tile: usize,
    n_tiles: usize,
    /// Number of parallel groups of tiles (1 when the gemm itself runs in parallel).
    groups: usize,
    /// Parallelism handed to each gemm.
    par: Parallelism,
}

/// Largest tile (output positions per column buffer).
const TILE_MAX: usize = 512;
/// Smallest tile worth giving a thread of its own.
const TILE_MIN: usize = 64;
/// Cap on the elements of one column buffer (`K·T`): 1 MiB of f32, half of a core's L2, so
/// that `gemm` streams its operand from L2 (measured on layer2 of ResNet-18 at 4³, 512
/// positions: 2.0 → 1.8 ms against 16 MiB buffers).
const COL_MAX_ELEMS: usize = 1 << 18;

impl Plan {
    fn new(g: &Geom) -> Self {
        let threads = rayon::current_num_threads().max(1);
        let positions = g.positions();
        let cap = (COL_MAX_ELEMS / g.kdim().max(1)).clamp(TILE_MIN, TILE_MAX);
        if positions == 0 {
            return Self {
                positions,
                tile: 1,
                n_tiles: 0,
                groups: 1,
                par: Parallelism::None,
            };
        }
        if threads > 1 && positions < threads * TILE_MIN {
            // Too few columns to share: one tile, parallel gemm.
            return Self {
                positions,
                tile: positions,
                n_tiles: 1,
                groups: 1,
                par: Parallelism::Rayon(threads),
            };
        }
        let mut n_tiles = positions.div_ceil(cap);
        n_tiles = n_tiles.div_ceil(threads) * threads;
        let mut tile = positions.div_ceil(n_tiles);
        // Whole output rows per tile (uniform runs in im2col) when a row fits.
        let ow = g.output[2];
        if ow <= tile {
            tile = tile.div_ceil(ow) * ow;
        }
        let n_tiles = positions.div_ceil(tile);
        Self {
            positions,
            tile,
            n_tiles,
            groups: threads.min(n_tiles),
            par: Parallelism::None,
        }
    }

    fn cols(&self, tile: usize) -> Range<usize> {
        let start = tile * self.tile;
        start..(start + self.tile).min(self.positions)
    }

    fn group_tiles(&self, group: usize) -> Range<usize> {
        (group * self.n_tiles / self.groups)..((group + 1) * self.n_tiles / self.groups)
    }

    /// Runs `f(tiles of the group, gemm parallelism)` for every group, in parallel when there
    /// are several, and collects the results in group order.
    fn map_groups<R: Send>(&self, f: impl Fn(Range<usize>, Parallelism) -> R + Sync) -> Vec<R> {
        if self.groups <= 1 {
            vec![f(0..self.n_tiles, self.par)]
        } else {
            (0..self.groups)
                .into_par_iter()
                .map(|grp| f(self.group_tiles(grp), self.par))
                .collect()
        }
    }
}

/// A raw pointer that may cross threads; every user writes disjoint elements.
#[derive(Clone, Copy)]
pub(super) struct SendPtr<T>(pub(super) *mut T);

// SAFETY: the kernels only write through it at indices no other thread touches.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    pub(super) fn get(self) -> *mut T {
        self.0
    }
}

/// Rows of the destination per parallel `gemm` call are a multiple of this (the micro-kernels'
/// row block).
const ROW_BLOCK: usize = 16;

/// `dst (m, n) = [dst +] lhs (m, k) · rhs (k, n)` with a row-major destination of row stride
/// `dst_rs`, and the operands given by (column, row) strides.
///
/// With `Parallelism::Rayon(t)` the rows are split into `t` bands, one single-threaded `gemm`
/// each: this is only asked for on small problems (a few output positions, so `n` is small),
/// where `gemm`'s own split leaves a thread idle while the other streams the whole `lhs`.
///
/// # Safety
/// Every pointer must be valid for the elements its strides and sizes address, and `dst`
/// must not overlap the operands.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into<T: Float>(
    [m, n, k]: [usize; 3],
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const T,
    [lhs_cs, lhs_rs]: [usize; 2],
    rhs: *const T,
    [rhs_cs, rhs_rs]: [usize; 2],
    par: Parallelism,
) {
    if let Parallelism::Rayon(threads) = par
        && threads > 1
        && m >= 2 * ROW_BLOCK
    {
        let band = m.div_ceil(threads).next_multiple_of(ROW_BLOCK);
        let (dst, lhs, rhs) = (
            SendPtr(dst),
            SendPtr(lhs.cast_mut()),
            SendPtr(rhs.cast_mut()),
        );
        (0..m.div_ceil(band)).into_par_iter().for_each(|i| {
            let rows = i * band..((i + 1) * band).min(m);
            // SAFETY: each band addresses its own rows of `dst` and `lhs`, inside the
            // caller's ranges.
            unsafe {
                gemm_into(
                    [rows.len(), n, k],
                    dst.get().add(rows.start * dst_rs),
                    dst_rs,
                    accumulate,
                    lhs.get().add(rows.start * lhs_rs).cast_const(),
                    [lhs_cs, lhs_rs],
                    rhs.get().cast_const(),
                    [rhs_cs, rhs_rs],
                    Parallelism::None,
                )
            }
        });
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        );
    }
}

/// Fills the `(K, T)` column matrix of one tile from the staged input.
fn im2col<T: Float>(xs: &[T], row_offs: &[usize], runs: &[Run], col: &mut [T], tlen: usize) {
    // Tiles hold whole output rows when they can (see `Plan::new`): then every run has the
    // same length and a fixed-size copy avoids a `memcpy` call per run.
    let len = runs.first().map_or(0, |r| r.len);
    if runs.iter().all(|r| r.len == len) {
        match len {
            1 => return im2col_fixed::<T, 1>(xs, row_offs, runs, col, tlen),
            2 => return im2col_fixed::<T, 2>(xs, row_offs, runs, col, tlen),
            4 => return im2col_fixed::<T, 4>(xs, row_offs, runs, col, tlen),
            8 => return im2col_fixed::<T, 8>(xs, row_offs, runs, col, tlen),
            16 => return im2col_fixed::<T, 16>(xs, row_offs, runs, col, tlen),
            32 => return im2col_fixed::<T, 32>(xs, row_offs, runs, col, tlen),
            _ => {}
        }
    }
    for (row, &off) in col.chunks_exact_mut(tlen).zip(row_offs) {
        for r in runs {
            let src = &xs[r.base + off..][..r.len];
            row[r.t..r.t + r.len].copy_from_slice(src);
        }
    }
}

/// [`im2col`] when every run has length `N`.
fn im2col_fixed<T: Float, const N: usize>(
    xs: &[T],
    row_offs: &[usize],
    runs: &[Run],
    col: &mut [T],
    tlen: usize,
) {
    for (row, &off) in col.chunks_exact_mut(tlen).zip(row_offs) {
        for (dst, r) in row.chunks_exact_mut(N).zip(runs) {
            let src: &[T; N] = xs[r.base + off..][..N]
                .try_into()
                .unwrap_or_else(|_| unreachable!());
            dst.copy_from_slice(src);
        }
    }
}

/// Adds the rows of channel `c` of one tile's column-gradient matrix into `dx_c`, the staged
/// volumes of channel `c` for every sample (`dx_c[n]`).
fn col2im_channel<T: Float>(
    st: &Staging,
    c: usize,
    row_offs: &[usize],
    colg: &[T],
    tlen: usize,
    runs: &[Run],
    dx_c: &mut [&mut [T]],
) {
    let rows = colg.chunks_exact(tlen);
    for (row, &off) in rows.zip(row_offs) {
        let off = off - c * st.vol;
        for r in runs {
            let dst = &mut dx_c[r.n][r.spatial + off..][..r.len];
            for (d, s) in dst.iter_mut().zip(&row[r.t..r.t + r.len]) {
                *d += *s;
            }
        }
    }
}

/// Per-thread scratch buffers.
struct Scratch<T> {
    col: Vec<T>,
    buf: Vec<T>,
    runs: Vec<Run>,
    segs: Vec<Seg>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Self {
            col: Vec::new(),
            buf: Vec::new(),
            runs: Vec::new(),
            segs: Vec::new(),
        }
    }
}

fn resize<T: Float>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::ZERO);
    }
}

/// `x[:, :, ::sD, ::sH, ::sW]` for a subsampling geometry.
fn subsample<T: Float>(g: &Geom, x: &[T]) -> Vec<T> {
    let (ow, sw) = (g.output[2], g.stride[2]);
    let mut out = vec![T::ZERO; g.n * g.c_in * g.out_vol()];
    out.par_chunks_mut(g.out_vol())
        .zip(x.par_chunks(g.in_vol()))
        .for_each(|(o, xv)| {
            g.for_each_sub_row(|src, dst| {
                for (o, v) in o[dst..][..ow].iter_mut().zip(xv[src..].iter().step_by(sw)) {
                    *o = *v;
                }
            })
        });
    out
}

/// The adjoint of [`subsample`]: zeros except on the subsampled grid.
fn unsubsample<T: Float>(g: &Geom, sub: &[T]) -> Vec<T> {
    let (ow, sw) = (g.output[2], g.stride[2]);
    let mut out = vec![T::ZERO; g.n * g.c_in * g.in_vol()];
    out.par_chunks_mut(g.in_vol())
        .zip(sub.par_chunks(g.out_vol()))
        .for_each(|(o, sv)| {
            g.for_each_sub_row(|dst, src| {
                for (o, v) in o[dst..].iter_mut().step_by(sw).zip(&sv[src..][..ow]) {
                    *o = *v;
                }
            })
        });
    out
}

/// Forward pass: `x (N, C_in, D, H, W)`, `w (C_out, K)` → `(N, C_out, oD, oH, oW)`.
pub(super) fn forward<T: Float>(g: &Geom, x: &[T], w: &[T]) -> Vec<T> {
    if g.is_subsampling() {
        return forward(&g.subsampled(), &subsample(g, x), w);
    }
    let (c_in, c_out, s_n, kdim) = (g.c_in, g.c_out, g.out_vol(), g.kdim());
    let in_sample = c_in * g.in_vol();
    let plan = Plan::new(g);
    if g.is_pointwise() {
        let mut out = vec![T::ZERO; g.n * c_out * s_n];
        let out_ptr = SendPtr(out.as_mut_ptr());
        plan.map_groups(|tiles, par| {
            let mut segs = Vec::new();
            for tile in tiles {
                tile_segs(g, plan.cols(tile), &mut segs);
                for seg in &segs {
                    // SAFETY: out[n, :, s0..s0+len] belongs to this tile only; x is read within
                    // sample n.
                    unsafe {
                        gemm_into(
                            [c_out, seg.len, c_in],
                            out_ptr.get().add(seg.n * c_out * s_n + seg.s0),
                            s_n,
                            false,
                            w.as_ptr(),
                            [1, c_in],
                            x.as_ptr().add(seg.n * in_sample + seg.s0),
                            [1, s_n],
                            par,
                        );
                    }
                }
            }
        });
        return out;
    }
    let st = Staging::new(g);
    let xs = st.stage(g, x);
    if let Some(y) = T::direct_forward(g, &st, &xs, w) {
        return y;
    }
    // Allocated only now: the direct kernel returns its own output.
    let mut out = vec![T::ZERO; g.n * c_out * s_n];
    let out_ptr = SendPtr(out.as_mut_ptr());
    let row_offs = st.row_offsets(g);
    plan.map_groups(|tiles, par| {
        let mut sc = Scratch::<T>::default();
        for tile in tiles {
            let cols = plan.cols(tile);
            let tlen = cols.len();
            tile_segs(g, cols.clone(), &mut sc.segs);
            tile_runs(g, &st, cols, &mut sc.runs);
            resize(&mut sc.col, kdim * tlen);
            let col = &mut sc.col[..kdim * tlen];
            im2col(&xs, &row_offs, &sc.runs, col, tlen);
            if let [seg] = sc.segs[..] {
                // SAFETY: out[n, :, s0..s0+len] belongs to this tile only.
                unsafe {
                    gemm_into(
                        [c_out, tlen, kdim],
                        out_ptr.get().add(seg.n * c_out * s_n + seg.s0),
                        s_n,
                        false,
                        w.as_ptr(),
                        [1, kdim],
                        col.as_ptr(),
                        [1, tlen],
                        par,
                    );
                }
                continue;
            }
            resize(&mut sc.buf, c_out * tlen);
            let buf = &mut sc.buf[..c_out * tlen];
            // SAFETY: buf is (c_out, tlen), col (kdim, tlen), w (c_out, kdim).
            unsafe {
                gemm_into(
                    [c_out, tlen, kdim],
                    buf.as_mut_ptr(),
                    tlen,
                    false,
                    w.as_ptr(),
                    [1, kdim],
                    col.as_ptr(),
                    [1, tlen],
                    par,
                );
            }
            for seg in &sc.segs {
                for co in 0..c_out {
                    let src = &buf[co * tlen + seg.t..][..seg.len];
                    // SAFETY: out[n, co, s0..s0+len] belongs to this tile only.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.as_ptr(),
                            out_ptr.get().add((seg.n * c_out + co) * s_n + seg.s0),
                            seg.len,
                        );
                    }
                }
            }
        }
    });
    out
}

/// Copies the `(C_out, T)` slice of `dy` for one tile into `buf`, or returns a direct pointer
/// and row stride when the tile lies in one sample.
fn dy_tile<T: Float>(
    g: &Geom,
    dy: &[T],
    segs: &[Seg],
    tlen: usize,
    buf: &mut Vec<T>,
) -> (*const T, usize) {
    let (c_out, s_n) = (g.c_out, g.out_vol());
    if let [seg] = segs {
        return (dy[seg.n * c_out * s_n + seg.s0..].as_ptr(), s_n);
    }
    resize(buf, c_out * tlen);
    for seg in segs {
        for co in 0..c_out {
            let src = &dy[(seg.n * c_out + co) * s_n + seg.s0..][..seg.len];
            buf[co * tlen + seg.t..][..seg.len].copy_from_slice(src);
        }
    }
    (buf.as_ptr(), tlen)
}

/// Weight gradient: `dW (C_out, K) = Σ_tiles dY_tile (C_out, T) · col_tileᵀ`.
pub(super) fn grad_weight<T: Float>(g: &Geom, x: &[T], dy: &[T]) -> Vec<T> {
    if g.is_subsampling() {
        return grad_weight(&g.subsampled(), &subsample(g, x), dy);
    }
    let (c_in, c_out, s_n, kdim) = (g.c_in, g.c_out, g.out_vol(), g.kdim());
    let in_sample = c_in * g.in_vol();
    let plan = Plan::new(g);
    let st = Staging::new(g);
    let pointwise = g.is_pointwise();
    let xs = if pointwise {
        Vec::new()
    } else {
        st.stage(g, x)
    };
    if !pointwise && let Some(dw) = T::direct_grad_weight(g, &st, &xs, dy) {
        return dw;
    }
    let row_offs = if pointwise {
        Vec::new()
    } else {
        st.row_offsets(g)
    };
    let partials = plan.map_groups(|tiles, par| {
        let mut acc = vec![T::ZERO; c_out * kdim];
        let mut sc = Scratch::<T>::default();
        // The first gemm of a group overwrites the (zero) accumulator instead of reading it.
        let mut accumulate = false;
        for tile in tiles {
            let cols = plan.cols(tile);
            let tlen = cols.len();
            tile_segs(g, cols.clone(), &mut sc.segs);
            if pointwise {
                for seg in &sc.segs {
                    // SAFETY: dy[n, :, s0..] and x[n, :, s0..] are (·, len) blocks of row
                    // stride s_n inside sample n; acc is (c_out, c_in).
                    unsafe {
                        gemm_into(
                            [c_out, c_in, seg.len],
                            acc.as_mut_ptr(),
                            kdim,
                            accumulate,
                            dy.as_ptr().add(seg.n * c_out * s_n + seg.s0),
                            [1, s_n],
                            x.as_ptr().add(seg.n * in_sample + seg.s0),
                            [s_n, 1],
                            par,
                        );
                    }
                    accumulate = true;
                }
                continue;
            }
            tile_runs(g, &st, cols, &mut sc.runs);
            resize(&mut sc.col, kdim * tlen);
            let col = &mut sc.col[..kdim * tlen];
            im2col(&xs, &row_offs, &sc.runs, col, tlen);
            let (lhs, lhs_rs) = dy_tile(g, dy, &sc.segs, tlen, &mut sc.buf);
            // SAFETY: lhs is (c_out, tlen) with row stride lhs_rs, col is (kdim, tlen).
            unsafe {
                gemm_into(
                    [c_out, kdim, tlen],
                    acc.as_mut_ptr(),
                    kdim,
                    accumulate,
                    lhs,
                    [1, lhs_rs],
                    col.as_ptr(),
                    [tlen, 1],
                    par,
                );
            }
            accumulate = true;
        }
        acc
    });
    let mut partials = partials.into_iter();
    let mut total = partials
        .next()
        .unwrap_or_else(|| vec![T::ZERO; c_out * kdim]);
    for part in partials {
        for (t, p) in total.iter_mut().zip(&part) {
            *t += *p;
        }
    }
    total
}

/// Input gradient.
///
/// With stride 1 on every axis (and padding ≤ dilation·(k − 1)), `dX` is the forward
/// convolution of `dY` with the flipped, channel-transposed kernel and padding
/// `d·(k − 1) − p`, which runs at the forward pass's speed. Otherwise `dX = col2im(Wᵀ · dY)`,
/// race-free: the column gradients of a round of tiles (one per group) are computed in
/// parallel, then scattered in parallel over input channels.
pub(super) fn grad_input<T: Float>(g: &Geom, dy: &[T], w: &[T]) -> Vec<T> {
    if g.is_subsampling() {
        return unsubsample(g, &grad_input(&g.subsampled(), dy, w));
    }
    let (c_in, c_out, kdim) = (g.c_in, g.c_out, g.kdim());
    let kvol = g.kernel.iter().product::<usize>();
    let full_pad: [usize; 3] = std::array::from_fn(|a| g.dilation[a] * (g.kernel[a] - 1));
    // The transposed form copies the weights; with few output positions per output channel
    // (deep layers on tiny volumes) that copy costs more than the col2im scatter.
    if g.stride == [1; 3]
        && (0..3).all(|a| g.padding[a] <= full_pad[a])
        && g.positions() >= 2 * c_out
    {
        // wt[c, co, tap] = w[co, c, flipped tap]; taps reversed = the flattened tap order
        // reversed.
        let mut wt = vec![T::ZERO; w.len()];
        wt.par_chunks_mut(c_out * kvol)
            .enumerate()
            .for_each(|(c, dst)| {
                for (co, dst) in dst.chunks_exact_mut(kvol).enumerate() {
                    let src = &w[(co * c_in + c) * kvol..][..kvol];
                    for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                        *d = *s;
                    }
                }
            });
        let gt = Geom {
            n: g.n,
            c_in: c_out,
            c_out: c_in,
            input: g.output,
            kernel: g.kernel,
            output: g.input,
            stride: [1; 3],
            padding: std::array::from_fn(|a| full_pad[a] - g.padding[a]),
            dilation: g.dilation,
        };
        return forward(&gt, dy, &wt);
    }
    let plan = Plan::new(g);
    let st = Staging::new(g);
    let row_offs = st.row_offsets(g);
    let mut dxs = vec![T::ZERO; g.n * c_in * st.vol];
    let slots = plan.groups;
    let mut scratch: Vec<Scratch<T>> = (0..slots).map(|_| Scratch::default()).collect();
    let mut tlens = vec![0usize; slots];
    // The staged dx split by channel: dx_by_c[c][n] is the volume of sample n, channel c.
    let mut dx_by_c: Vec<Vec<&mut [T]>> = (0..c_in).map(|_| Vec::with_capacity(g.n)).collect();
    for (i, vol) in dxs.chunks_mut(st.vol).enumerate() {
        dx_by_c[i % c_in].push(vol);
    }
    let mut first = 0;
    while first < plan.n_tiles {
        let round = first..(first + slots).min(plan.n_tiles);
        // Phase 1: column gradients, one tile per slot.
        let gemm_tile = |(tile, (sc, tl)): (usize, (&mut Scratch<T>, &mut usize))| {
            let cols = plan.cols(tile);
            let tlen = cols.len();
            *tl = tlen;
            tile_segs(g, cols.clone(), &mut sc.segs);
            tile_runs(g, &st, cols, &mut sc.runs);
            resize(&mut sc.col, kdim * tlen);
            let (rhs, rhs_rs) = dy_tile(g, dy, &sc.segs, tlen, &mut sc.buf);
            // SAFETY: col is (kdim, tlen); wᵀ is (kdim, c_out) read from w (c_out, kdim);
            // rhs is (c_out, tlen) with row stride rhs_rs.
            unsafe {
                gemm_into(
                    [kdim, tlen, c_out],
                    sc.col.as_mut_ptr(),
                    tlen,
                    false,
                    w.as_ptr(),
                    [kdim, 1],
                    rhs,
                    [1, rhs_rs],
                    plan.par,
                );
            }
        };
        let work = round.clone().zip(scratch.iter_mut().zip(tlens.iter_mut()));
        if slots > 1 {
            work.collect::<Vec<_>>().into_par_iter().for_each(gemm_tile);
        } else {
            work.for_each(gemm_tile);
        }
        // Phase 2: scatter-add, parallel over input channels.
        let used = round.len();
        let scatter = |(c, dx_c): (usize, &mut Vec<&mut [T]>)| {
            let offs = &row_offs[c * kvol..(c + 1) * kvol];
            for (sc, &tlen) in scratch[..used].iter().zip(&tlens) {
                let colg = &sc.col[c * kvol * tlen..(c + 1) * kvol * tlen];
                col2im_channel(&st, c, offs, colg, tlen, &sc.runs, dx_c);
            }
        };
        if c_in > 1 && rayon::current_num_threads() > 1 {
            dx_by_c.par_iter_mut().enumerate().for_each(scatter);
        } else {
            dx_by_c.iter_mut().enumerate().for_each(scatter);
        }
        first = round.end;
    }
    drop(dx_by_c);
    st.unstage(g, &dxs)
}
