//! CPU kernels of `conv3d`: tiled im2col + `gemm` for the forward pass and the weight
//! gradient, `Wᵀ·dY` + col2im for the input gradient.
//!
//! The output positions `(n, od, oh, ow)` are flattened into one axis of length
//! `P = N·oD·oH·oW` and cut into tiles of a few hundred columns. A tile's column buffer is the
//! `(K, T)` matrix (`K = C_in·kD·kH·kW` rows, `T` tile columns, row-major) of the input values
//! each output position sees; the forward pass is then `(C_out, K) · (K, T)`. Tiles are spread
//! over the rayon threads in contiguous groups, each with its own buffers and a
//! single-threaded `gemm`; when the whole problem is one tile (tiny spatial sizes) the `gemm`
//! itself runs in parallel.

use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

/// The element types the kernels run on.
pub(super) trait Float: Copy + Send + Sync + 'static + std::ops::AddAssign {
    const ZERO: Self;
    const ONE: Self;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
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
    fn in_vol(&self) -> usize {
        self.input.iter().product()
    }

    fn out_vol(&self) -> usize {
        self.output.iter().product()
    }

    /// Rows of the column matrix: `C_in·kD·kH·kW`.
    fn kdim(&self) -> usize {
        self.c_in * self.kernel.iter().product::<usize>()
    }

    fn positions(&self) -> usize {
        self.n * self.out_vol()
    }

    /// A 1×1×1 kernel with stride 1 and no padding: the column matrix is the input itself.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1; 3] && self.stride == [1; 3] && self.padding == [0; 3]
    }

    /// For each axis and kernel index `j`, the output indices `o` whose input index
    /// `o·s + j·d − p` falls inside the volume, as a half-open range.
    fn valid_ranges(&self) -> [Vec<(usize, usize)>; 3] {
        std::array::from_fn(|a| {
            let (s, p, d) = (self.stride[a], self.padding[a], self.dilation[a]);
            let (len_in, len_out) = (self.input[a], self.output[a]);
            (0..self.kernel[a])
                .map(|j| {
                    let off = j * d;
                    // o·s + off ≥ p
                    let lo = if off >= p { 0 } else { (p - off).div_ceil(s) };
                    // o·s + off − p ≤ len_in − 1
                    let hi = if len_in + p > off {
                        ((len_in + p - off - 1) / s + 1).min(len_out)
                    } else {
                        0
                    };
                    if lo < hi { (lo, hi) } else { (0, 0) }
                })
                .collect()
        })
    }
}

/// A run of consecutive output positions along W inside one tile.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Offset of `x[n, 0, 0, 0, 0]`.
    sample: usize,
    /// Sample index.
    n: usize,
    od: usize,
    oh: usize,
    ow0: usize,
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

fn tile_runs(g: &Geom, cols: Range<usize>, runs: &mut Vec<Run>) {
    let [od_n, oh_n, ow_n] = g.output;
    let sample_len = g.c_in * g.in_vol();
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
        runs.push(Run {
            sample: n * sample_len,
            n,
            od,
            oh,
            ow0: ow,
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
/// Cap on the elements of one column buffer (`K·T`), to bound memory for very deep layers.
const COL_MAX_ELEMS: usize = 1 << 22;

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
        let tile = positions.div_ceil(n_tiles);
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
struct SendPtr<T>(*mut T);

// SAFETY: the kernels only write through it at indices no other thread touches.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// `dst (m, n) = [dst +] lhs (m, k) · rhs (k, n)` with a row-major destination of row stride
/// `dst_rs`, and the operands given by (column, row) strides.
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

/// Fills the `(K, T)` column matrix of one tile (`T = col.len() / K`).
fn im2col<T: Float>(
    g: &Geom,
    ranges: &[Vec<(usize, usize)>; 3],
    x: &[T],
    runs: &[Run],
    col: &mut [T],
) {
    let [_, in_h, in_w] = g.input;
    let [s_d, s_h, s_w] = g.stride;
    let [p_d, p_h, p_w] = g.padding;
    let [d_d, d_h, d_w] = g.dilation;
    let in_vol = g.in_vol();
    let tlen = col.len() / g.kdim();
    let mut rows = col.chunks_exact_mut(tlen);
    for c in 0..g.c_in {
        let chan = c * in_vol;
        for (kd, &(d_lo, d_hi)) in ranges[0].iter().enumerate() {
            for (kh, &(h_lo, h_hi)) in ranges[1].iter().enumerate() {
                for (kw, &(w_lo, w_hi)) in ranges[2].iter().enumerate() {
                    let Some(row) = rows.next() else { return };
                    for run in runs {
                        let dst = &mut row[run.t..run.t + run.len];
                        let a = w_lo.max(run.ow0);
                        let b = w_hi.min(run.ow0 + run.len);
                        if run.od < d_lo
                            || run.od >= d_hi
                            || run.oh < h_lo
                            || run.oh >= h_hi
                            || a >= b
                        {
                            dst.fill(T::ZERO);
                            continue;
                        }
                        let id = run.od * s_d + kd * d_d - p_d;
                        let ih = run.oh * s_h + kh * d_h - p_h;
                        let iw = a * s_w + kw * d_w - p_w;
                        let (pre, rest) = dst.split_at_mut(a - run.ow0);
                        let (mid, post) = rest.split_at_mut(b - a);
                        pre.fill(T::ZERO);
                        post.fill(T::ZERO);
                        let start = run.sample + chan + (id * in_h + ih) * in_w + iw;
                        if s_w == 1 {
                            mid.copy_from_slice(&x[start..start + mid.len()]);
                        } else {
                            let src = &x[start..start + (mid.len() - 1) * s_w + 1];
                            for (d, s) in mid.iter_mut().zip(src.iter().step_by(s_w)) {
                                *d = *s;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds the rows of channel `c` of one tile's column-gradient matrix into `dx_c`, the
/// `(D, H, W)` volumes of channel `c` for every sample (`dx_c[n]`).
fn col2im_channel<T: Float>(
    g: &Geom,
    ranges: &[Vec<(usize, usize)>; 3],
    c: usize,
    colg: &[T],
    tlen: usize,
    runs: &[Run],
    dx_c: &mut [&mut [T]],
) {
    let kvol: usize = g.kernel.iter().product();
    let [_, in_h, in_w] = g.input;
    let [s_d, s_h, s_w] = g.stride;
    let [p_d, p_h, p_w] = g.padding;
    let [d_d, d_h, d_w] = g.dilation;
    let chan_rows = &colg[c * kvol * tlen..(c + 1) * kvol * tlen];
    let mut rows = chan_rows.chunks_exact(tlen);
    for (kd, &(d_lo, d_hi)) in ranges[0].iter().enumerate() {
        for (kh, &(h_lo, h_hi)) in ranges[1].iter().enumerate() {
            for (kw, &(w_lo, w_hi)) in ranges[2].iter().enumerate() {
                let Some(row) = rows.next() else { return };
                for run in runs {
                    let a = w_lo.max(run.ow0);
                    let b = w_hi.min(run.ow0 + run.len);
                    if run.od < d_lo || run.od >= d_hi || run.oh < h_lo || run.oh >= h_hi || a >= b
                    {
                        continue;
                    }
                    let src = &row[run.t + a - run.ow0..run.t + b - run.ow0];
                    let id = run.od * s_d + kd * d_d - p_d;
                    let ih = run.oh * s_h + kh * d_h - p_h;
                    let iw = a * s_w + kw * d_w - p_w;
                    let start = (id * in_h + ih) * in_w + iw;
                    let vol = &mut *dx_c[run.n];
                    if s_w == 1 {
                        for (d, s) in vol[start..start + src.len()].iter_mut().zip(src) {
                            *d += *s;
                        }
                    } else {
                        let dst = &mut vol[start..start + (src.len() - 1) * s_w + 1];
                        for (d, s) in dst.iter_mut().step_by(s_w).zip(src) {
                            *d += *s;
                        }
                    }
                }
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

/// Forward pass: `x (N, C_in, D, H, W)`, `w (C_out, K)` → `(N, C_out, oD, oH, oW)`.
pub(super) fn forward<T: Float>(g: &Geom, x: &[T], w: &[T]) -> Vec<T> {
    let (c_in, c_out, s_n, kdim) = (g.c_in, g.c_out, g.out_vol(), g.kdim());
    let in_sample = c_in * g.in_vol();
    let mut out = vec![T::ZERO; g.n * c_out * s_n];
    let plan = Plan::new(g);
    let ranges = g.valid_ranges();
    let out_ptr = SendPtr(out.as_mut_ptr());
    plan.map_groups(|tiles, par| {
        let mut sc = Scratch::<T>::default();
        for tile in tiles {
            let cols = plan.cols(tile);
            let tlen = cols.len();
            tile_segs(g, cols.clone(), &mut sc.segs);
            if g.is_pointwise() {
                for seg in &sc.segs {
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
                continue;
            }
            tile_runs(g, cols, &mut sc.runs);
            resize(&mut sc.col, kdim * tlen);
            let col = &mut sc.col[..kdim * tlen];
            im2col(g, &ranges, x, &sc.runs, col);
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
            } else {
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
                        let src = &buf[co * tlen + seg.t..co * tlen + seg.t + seg.len];
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
    let (c_in, c_out, s_n, kdim) = (g.c_in, g.c_out, g.out_vol(), g.kdim());
    let in_sample = c_in * g.in_vol();
    let plan = Plan::new(g);
    let ranges = g.valid_ranges();
    let partials = plan.map_groups(|tiles, par| {
        let mut acc = vec![T::ZERO; c_out * kdim];
        let mut sc = Scratch::<T>::default();
        for tile in tiles {
            let cols = plan.cols(tile);
            let tlen = cols.len();
            tile_segs(g, cols.clone(), &mut sc.segs);
            if g.is_pointwise() {
                for seg in &sc.segs {
                    // SAFETY: dy[n, :, s0..] and x[n, :, s0..] are (·, len) blocks of row
                    // stride s_n inside sample n; acc is (c_out, c_in).
                    unsafe {
                        gemm_into(
                            [c_out, c_in, seg.len],
                            acc.as_mut_ptr(),
                            kdim,
                            true,
                            dy.as_ptr().add(seg.n * c_out * s_n + seg.s0),
                            [1, s_n],
                            x.as_ptr().add(seg.n * in_sample + seg.s0),
                            [s_n, 1],
                            par,
                        );
                    }
                }
                continue;
            }
            tile_runs(g, cols, &mut sc.runs);
            resize(&mut sc.col, kdim * tlen);
            let col = &mut sc.col[..kdim * tlen];
            im2col(g, &ranges, x, &sc.runs, col);
            let (lhs, lhs_rs) = dy_tile(g, dy, &sc.segs, tlen, &mut sc.buf);
            // SAFETY: lhs is (c_out, tlen) with row stride lhs_rs, col is (kdim, tlen).
            unsafe {
                gemm_into(
                    [c_out, kdim, tlen],
                    acc.as_mut_ptr(),
                    kdim,
                    true,
                    lhs,
                    [1, lhs_rs],
                    col.as_ptr(),
                    [tlen, 1],
                    par,
                );
            }
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

/// Input gradient: `dX = col2im(Wᵀ · dY)`, race-free: the column gradients of a round of tiles
/// (one per group) are computed in parallel, then scattered in parallel over input channels.
pub(super) fn grad_input<T: Float>(g: &Geom, dy: &[T], w: &[T]) -> Vec<T> {
    let (c_in, c_out, s_n, kdim) = (g.c_in, g.c_out, g.out_vol(), g.kdim());
    let in_vol = g.in_vol();
    let in_sample = c_in * in_vol;
    let mut dx = vec![T::ZERO; g.n * in_sample];
    let plan = Plan::new(g);
    if g.is_pointwise() {
        let dx_ptr = SendPtr(dx.as_mut_ptr());
        plan.map_groups(|tiles, par| {
            let mut segs = Vec::new();
            for tile in tiles {
                tile_segs(g, plan.cols(tile), &mut segs);
                for seg in &segs {
                    // SAFETY: dx[n, :, s0..s0+len] belongs to this tile only (pointwise
                    // conv: one input position per output position).
                    unsafe {
                        gemm_into(
                            [c_in, seg.len, c_out],
                            dx_ptr.get().add(seg.n * in_sample + seg.s0),
                            s_n,
                            false,
                            w.as_ptr(),
                            [c_in, 1],
                            dy.as_ptr().add(seg.n * c_out * s_n + seg.s0),
                            [1, s_n],
                            par,
                        );
                    }
                }
            }
        });
        return dx;
    }
    let ranges = g.valid_ranges();
    let slots = plan.groups;
    let mut scratch: Vec<Scratch<T>> = (0..slots).map(|_| Scratch::default()).collect();
    let mut tlens = vec![0usize; slots];
    // dx split by channel: dx_by_c[c][n] is the (D, H, W) volume of sample n, channel c.
    let mut dx_by_c: Vec<Vec<&mut [T]>> = (0..c_in).map(|_| Vec::with_capacity(g.n)).collect();
    for (i, vol) in dx.chunks_mut(in_vol).enumerate() {
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
            tile_runs(g, cols, &mut sc.runs);
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
            for (sc, &tlen) in scratch[..used].iter().zip(&tlens) {
                col2im_channel(g, &ranges, c, &sc.col[..kdim * tlen], tlen, &sc.runs, dx_c);
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
    dx
}
