//! Direct (implicit-GEMM) f32 convolution for x86-64 CPUs with AVX2 and FMA (and AVX-512F).
//!
//! The im2col path (`kernels.rs`) writes every input value `k³` times into a column buffer and
//! reads it back in `gemm`: for the wide, shallow layers of a 3D ResNet that copy moves as many
//! bytes as the matmul itself. This kernel reads the staged input directly instead.
//!
//! Micro-kernel: 16 output channels (two 8-lane registers) × 6 output positions, 12
//! accumulators; on CPUs with AVX-512F, 32 output channels (two blocks of 16, one 16-lane
//! register each) × 6 positions, the same 12 accumulators at twice the width (the blocks'
//! packed layout is shared, so a lone last block runs on the 16-channel kernel). For every row `k = (c, kd, kh, kw)` of the (virtual) column matrix it loads
//! the 16 packed weights of `k` and broadcasts the 6 input values the positions see, each from
//! its own address `base(position) + offset(k)` in the staged input. Every position carries its
//! own base, so any stride, dilation, padding and output width is handled the same way (the
//! staged input splits W into stride phases, see `kernels::Staging`). The whole reduction over
//! `k` stays in registers; outputs are written once.
//!
//! Work is split over rayon in chunks of output positions; inside a chunk the loop runs over
//! blocks of 16 output channels (the packed weights of a block, `16·K` floats, stay in L2),
//! then over groups of 6 positions.
//!
//! The forward pass skips products with padding: positions near a border read padding through
//! some kernel taps, so they are visited grouped by the box of taps that read input
//! ([`TapPlan`]), and each group's reduction runs over its box only. On the 8³ layers of
//! ResNet-18 (32³ inputs) that is 22 % fewer products; on the 4³ layers, 39 %.

use rayon::prelude::*;

use super::kernels::{Geom, SendPtr, Staging};

/// Output channels per micro-kernel (two AVX registers).
const MR: usize = 16;
/// Output positions per micro-kernel.
const NR: usize = 6;
/// Output positions per parallel task.
const CHUNK: usize = NR * 16;
/// Fewest chunks of output positions for the direct forward pass: below that im2col + `gemm`
/// measured faster (at 512 positions, layer2 of ResNet-18 on 32³ inputs, the direct kernel
/// wins by skipping the padding products: 2.56 against 2.83 ms on the Zen 3 machine).
const MIN_FORWARD_CHUNKS: usize = 5;
/// Rows of the column matrix per slice of the forward's reduction (8 KiB of packed weights per
/// block of 16 channels; 128 measured a little faster than 256 on the 8³ layer).
const KC: usize = 128;

/// 16 packed weights of one column-matrix row, on one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Panel([f32; MR]);

/// Whether this CPU runs the kernel (checked once).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU also runs the 32-channel AVX-512 micro-kernel (checked once): two blocks
/// of 16 output channels per call, 16-lane registers.
fn wide_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static WIDE: OnceLock<bool> = OnceLock::new();
        *WIDE.get_or_init(|| available() && std::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the direct kernel may run: true unless the environment variable
/// `YAWARE_CONV3D_IM2COL` is set to `1` (read once; a diagnostic switch to compare both paths).
pub(super) fn enabled() -> bool {
    use std::sync::OnceLock;
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("YAWARE_CONV3D_IM2COL").map_or(true, |v| v != "1"))
}

/// Whether the direct kernel is the better choice for this geometry.
///
/// It needs enough output positions to fill its 6-wide groups and chunks, and row offsets
/// that fit in `u32`. Deep layers on tiny volumes (a few positions, thousands of weight rows)
/// stay on im2col + `gemm`, whose packing amortises better there.
pub(super) fn suits(g: &Geom, st: &Staging) -> bool {
    available()
        && g.positions() >= 2 * CHUNK
        && g.c_out >= 8
        && g.c_in
            .checked_mul(st.vol)
            .is_some_and(|v| v < u32::MAX as usize)
}

/// Whether the forward pass should run on the direct kernel: [`suits`] and at least
/// `MIN_FORWARD_CHUNKS` chunks of output positions.
pub(super) fn preferred_forward(g: &Geom, st: &Staging) -> bool {
    suits(g, st) && g.positions() >= MIN_FORWARD_CHUNKS * CHUNK
}

/// Panics unless the CPU runs the requested micro-kernels (AVX2 + FMA, and AVX-512F when
/// `wide`): the kernels' `unsafe` blocks rely on it.
fn assert_isa(wide: bool) {
    assert!(
        available(),
        "direct conv3d kernel called without AVX2 + FMA"
    );
    assert!(
        !wide || wide_available(),
        "AVX-512 kernel requested without AVX-512F"
    );
}

/// Forward pass on the staged input `xs` (see [`Staging`]) with weights `w (C_out, K)`;
/// returns `(N, C_out, oD, oH, oW)`. The caller checks [`suits`] first.
pub(super) fn forward(g: &Geom, st: &Staging, xs: &[f32], w: &[f32]) -> Vec<f32> {
    forward_with(g, st, xs, w, wide_available())
}

/// [`forward`] with the micro-kernel chosen by the caller: pairs of channel blocks on the
/// AVX-512 kernel when `wide`, else one block at a time on the AVX2 kernel.
///
/// Products with padding are skipped: positions are visited in [`TapPlan`] order, so each
/// group of 6 positions mostly shares one box of live taps, and the micro-kernel runs only
/// over the taps of the group's box (the union of its positions' boxes: a position that
/// reads padding through one of them reads the staged zeros).
fn forward_with(g: &Geom, st: &Staging, xs: &[f32], w: &[f32], wide: bool) -> Vec<f32> {
    assert_isa(wide);
    let (c_out, s_n, kdim) = (g.c_out, g.out_vol(), g.kdim());
    let taps = g.kernel.iter().product::<usize>();
    let blocks = c_out.div_ceil(MR);
    // panels[b·K + k] = w[b·16 .. b·16 + 16, k], zero beyond C_out.
    let mut panels = vec![Panel([0.0; MR]); blocks * kdim];
    panels
        .par_chunks_mut(kdim)
        .enumerate()
        .for_each(|(b, dst)| {
            for i in 0..MR.min(c_out - b * MR) {
                let row = &w[(b * MR + i) * kdim..][..kdim];
                for (p, &v) in dst.iter_mut().zip(row) {
                    p.0[i] = v;
                }
            }
        });
    let plan = TapPlan::new(g);
    let positions = g.positions();
    // Input channels per slice of the reduction: their packed weights (≤ KC rows, 64 bytes
    // each per block) stay in L1 while every group of the chunk uses them.
    let chans_per_slice = (KC / taps).max(1);
    // Not zeroed first: every element is written exactly once below.
    let out_len = g.n * c_out * s_n;
    let mut out: Vec<f32> = Vec::with_capacity(out_len);
    let out_ptr = SendPtr(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    (0..positions.div_ceil(CHUNK))
        .into_par_iter()
        .for_each(|chunk| {
            let first = chunk * CHUNK;
            let len = CHUNK.min(positions - first);
            let order = &plan.order[first..first + len];
            // Staged offset of tap 0, channel 0 for every position of the chunk, padded to a
            // multiple of NR with the last one (computed, never stored).
            let mut bases = [0usize; CHUNK];
            for (i, b) in bases.iter_mut().enumerate() {
                *b = position_base(g, st, order[i.min(len - 1)]);
            }
            let groups = len.div_ceil(NR);
            // The reduction steps `(panel row, staged offset)` of every group: `lists` from
            // `spans[grp].0`, `spans[grp].1` steps per input channel, channel after channel
            // (one list per distinct box, shared by consecutive groups with that box).
            let mut lists: Vec<(u32, u32)> = Vec::new();
            let mut spans = [(0usize, 0usize); CHUNK / NR];
            let mut last: Option<(TapBox, (usize, usize))> = None;
            for (grp, span) in spans.iter_mut().enumerate().take(groups) {
                let group = &order[grp * NR..(grp * NR + NR).min(len)];
                let tap_box = plan.union_box(g, group);
                *span = match last {
                    Some((prev, span)) if prev == tap_box => span,
                    _ => {
                        let start = lists.len();
                        plan_steps(g, st, &tap_box, &mut lists);
                        (start, (lists.len() - start) / g.c_in)
                    }
                };
                last = Some((tap_box, *span));
            }
            // Accumulators of one block of 16 channels (or two, [pair]) for every group.
            let mut tiles = [[[[0.0f32; MR]; NR]; CHUNK / NR]; 2];
            let mut rows_buf = [[0.0f32; CHUNK]; MR];
            let mut b = 0;
            while b < blocks {
                let pair = wide && b + 1 < blocks;
                let nb = if pair { 2 } else { 1 };
                for block_tiles in &mut tiles[..nb] {
                    for tile in &mut block_tiles[..groups] {
                        *tile = [[0.0; MR]; NR];
                    }
                }
                let panel_a = &panels[b * kdim..(b + 1) * kdim];
                for c0 in (0..g.c_in).step_by(chans_per_slice) {
                    let chans = c0..(c0 + chans_per_slice).min(g.c_in);
                    let (tiles_a, tiles_b) = tiles.split_at_mut(1);
                    for (grp, bases) in bases.chunks_exact(NR).take(groups).enumerate() {
                        let bases: &[usize; NR] =
                            bases.try_into().unwrap_or_else(|_| unreachable!());
                        let (start, per_chan) = spans[grp];
                        let rows = Listed(
                            &lists[start + chans.start * per_chan..start + chans.end * per_chan],
                        );
                        if pair {
                            let panel_b = &panels[(b + 1) * kdim..(b + 2) * kdim];
                            // SAFETY: AVX-512F checked by `wide_available`; every row is a
                            // row of the panels (c < C_in, tap < taps) and every base + offset
                            // addresses a value inside `xs` (staged layout).
                            unsafe {
                                micro_32x6(
                                    [panel_a, panel_b],
                                    &rows,
                                    xs,
                                    bases,
                                    [&mut tiles_a[0][grp], &mut tiles_b[0][grp]],
                                )
                            };
                        } else {
                            // SAFETY: AVX2 + FMA checked by `available`; rows and offsets
                            // as above.
                            unsafe { micro_16x6(panel_a, &rows, xs, bases, &mut tiles_a[0][grp]) };
                        }
                    }
                }
                for (ib, block_tiles) in tiles[..nb].iter().enumerate() {
                    let bb = b + ib;
                    let rows = MR.min(c_out - bb * MR);
                    // Transpose the tiles to rows of output channels, then write each row as
                    // runs of consecutive positions: scattered stores at the sample stride
                    // would alias in L1.
                    for (grp, tile) in block_tiles[..groups].iter().enumerate() {
                        for (j, col) in tile.iter().enumerate() {
                            for (i, &v) in col.iter().enumerate() {
                                rows_buf[i][grp * NR + j] = v;
                            }
                        }
                    }
                    let mut t = 0;
                    while t < len {
                        let p = order[t];
                        let (n, s) = (p / s_n, p % s_n);
                        let mut run = 1;
                        while t + run < len && order[t + run] == p + run && s + run < s_n {
                            run += 1;
                        }
                        for (i, row) in rows_buf.iter().enumerate().take(rows) {
                            // SAFETY: out[n, bb·16 + i, s..s + run] is written by this task
                            // only (every position belongs to one chunk).
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    row[t..].as_ptr(),
                                    out_ptr.get().add((n * c_out + bb * MR + i) * s_n + s),
                                    run,
                                )
                            };
                        }
                        t += run;
                    }
                }
                b += nb;
            }
        });
    // SAFETY: the chunks partition `plan.order`, a permutation of all positions (tested), and
    // each chunk wrote the rows of all C_out channels (every block, `rows` channels of the
    // last) for each of its positions: all `out_len` elements are initialised.
    unsafe { out.set_len(out_len) };
    out
}

/// Live taps per axis (`[lo, hi)` for D, H, W): a box of kernel taps.
type TapBox = [(usize, usize); 3];

/// Which kernel taps read input rather than padding, per output position, and an order of
/// the positions that keeps positions with the same taps together.
struct TapPlan {
    /// Every output position (flattened over `N, oD, oH, oW`) once: class by class (a class
    /// is a run of coordinates with the same live taps on every axis; along W only for short
    /// rows), then sample, then raster order inside the class.
    order: Vec<usize>,
    /// Live taps `[lo, hi)` of every output coordinate, per axis.
    live: [Vec<(usize, usize)>; 3],
}

impl TapPlan {
    fn new(g: &Geom) -> Self {
        let live: [Vec<(usize, usize)>; 3] = std::array::from_fn(|a| {
            (0..g.output[a])
                .map(|o| {
                    live_taps(
                        o,
                        g.input[a],
                        g.kernel[a],
                        g.stride[a],
                        g.padding[a],
                        g.dilation[a],
                    )
                })
                .collect()
        });
        // Runs of coordinates with the same live taps, per axis. Along W only for short rows
        // (fewer than two groups of positions): there most positions sit near an edge and a
        // group spans rows anyway; on long rows, keeping each row whole (groups of 6
        // neighbours, few cache lines per step) measured faster than gathering edge columns.
        let split_w = g.output[2] < 2 * NR;
        let classes: [Vec<std::ops::Range<usize>>; 3] = std::array::from_fn(|a| {
            if a == 2 && !split_w {
                return std::iter::once(0..g.output[2]).collect();
            }
            let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
            for (o, taps) in live[a].iter().enumerate() {
                match runs.last_mut() {
                    Some(r) if live[a][r.start] == *taps => r.end = o + 1,
                    _ => runs.push(o..o + 1),
                }
            }
            runs
        });
        let [od_n, oh_n, ow_n] = g.output;
        let mut order = Vec::with_capacity(g.positions());
        for cd in &classes[0] {
            for ch in &classes[1] {
                for cw in &classes[2] {
                    for n in 0..g.n {
                        for od in cd.clone() {
                            for oh in ch.clone() {
                                let row = ((n * od_n + od) * oh_n + oh) * ow_n;
                                order.extend(cw.clone().map(|ow| row + ow));
                            }
                        }
                    }
                }
            }
        }
        debug_assert_eq!(order.len(), g.positions());
        Self { order, live }
    }

    /// The smallest box holding the live taps of every position of `group` (positions whose
    /// taps all read padding add nothing).
    fn union_box(&self, g: &Geom, group: &[usize]) -> TapBox {
        let [od_n, oh_n, ow_n] = g.output;
        let mut tap_box = [(usize::MAX, 0); 3];
        for &p in group {
            let (ow, r) = (p % ow_n, p / ow_n);
            let (oh, od) = (r % oh_n, (r / oh_n) % od_n);
            let own = [self.live[0][od], self.live[1][oh], self.live[2][ow]];
            if own.iter().any(|&(lo, hi)| lo >= hi) {
                continue;
            }
            for (u, (lo, hi)) in tap_box.iter_mut().zip(own) {
                *u = (u.0.min(lo), u.1.max(hi));
            }
        }
        if tap_box[0].0 == usize::MAX {
            [(0, 0); 3]
        } else {
            tap_box
        }
    }
}

/// Taps `lo..hi` of one axis through which output coordinate `o` reads input rather than
/// padding (`lo == hi` when it reads none): the input coordinate grows with the tap, so the
/// live taps are one run.
fn live_taps(o: usize, input: usize, k: usize, s: usize, p: usize, dil: usize) -> (usize, usize) {
    let reads_input = |t: usize| (o * s + t * dil).checked_sub(p).is_some_and(|i| i < input);
    match (0..k).find(|&t| reads_input(t)) {
        None => (0, 0),
        Some(lo) => {
            let hi = (lo..k).take_while(|&t| reads_input(t)).last().unwrap_or(lo) + 1;
            (lo, hi)
        }
    }
}

/// Appends the reduction steps of the taps of `tap_box`: `(column-matrix row, staged offset)`
/// for every input channel and, inside a channel, every tap of the box in row order. One flat
/// list keeps the micro-kernel's loop long (a loop per channel of a few taps measured slower:
/// its exits are mispredicted).
fn plan_steps(g: &Geom, st: &Staging, tap_box: &TapBox, list: &mut Vec<(u32, u32)>) {
    let [_, kh_n, kw_n] = g.kernel;
    let taps = g.kernel.iter().product::<usize>();
    let [(d0, d1), (h0, h1), (w0, w1)] = *tap_box;
    let start = list.len();
    for kd in d0..d1 {
        for kh in h0..h1 {
            for kw in w0..w1 {
                let tap = (kd * kh_n + kh) * kw_n + kw;
                // Both fit: `suits` checked C_in · vol < u32::MAX.
                list.push((tap as u32, st.tap(g, kd, kh, kw) as u32));
            }
        }
    }
    let per_chan = list.len() - start;
    for c in 1..g.c_in {
        for i in start..start + per_chan {
            let (tap, off) = list[i];
            list.push(((c * taps) as u32 + tap, (c * st.vol) as u32 + off));
        }
    }
}

/// Positions per round of the weight gradient: the packed `dY` of one channel block for a
/// round (`PCHUNK · 64` bytes) stays in L2 while every weight row uses it.
const PCHUNK: usize = 2048;

/// Staged offset of tap 0, channel 0 for output position `p` (flattened over `N, oD, oH, oW`).
fn position_base(g: &Geom, st: &Staging, p: usize) -> usize {
    let s_n = g.out_vol();
    let [_, oh_n, ow_n] = g.output;
    let (n, s) = (p / s_n, p % s_n);
    let (ow, r) = (s % ow_n, s / ow_n);
    n * g.c_in * st.vol + st.out_row(g, r / oh_n, r % oh_n, ow)
}

/// Weight gradient `dW (C_out, K) = Σ_p dY[:, p] · col[:, p]ᵀ` on the staged input `xs`, the
/// same micro-kernel with the roles swapped: the packed operand is `dY` (16 output channels per
/// position), the 6 broadcast streams are 6 rows `k` of the virtual column matrix, and the
/// reduction runs over output positions. The caller checks [`suits`] first.
pub(super) fn grad_weight(g: &Geom, st: &Staging, xs: &[f32], dy: &[f32]) -> Vec<f32> {
    grad_weight_with(g, st, xs, dy, wide_available())
}

/// [`grad_weight`] with the micro-kernel chosen by the caller (see [`forward_with`]).
fn grad_weight_with(g: &Geom, st: &Staging, xs: &[f32], dy: &[f32], wide: bool) -> Vec<f32> {
    assert_isa(wide);
    let (c_out, s_n, kdim) = (g.c_out, g.out_vol(), g.kdim());
    let blocks = c_out.div_ceil(MR);
    let positions = g.positions();
    let offs = st.row_offsets(g);
    let groups = kdim.div_ceil(NR);
    let mut dw = vec![0.0f32; c_out * kdim];
    let dw_ptr = SendPtr(dw.as_mut_ptr());
    let mut panels = vec![Panel([0.0; MR]); blocks * PCHUNK];
    let mut bases = vec![0usize; PCHUNK];
    let mut first = 0;
    while first < positions {
        let len = PCHUNK.min(positions - first);
        bases[..len]
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = position_base(g, st, first + i));
        // panels[b·PCHUNK + t] = dy[n, b·16 .. b·16 + 16, s] for position first + t.
        panels
            .par_chunks_mut(PCHUNK)
            .enumerate()
            .for_each(|(b, dst)| {
                let rows = MR.min(c_out - b * MR);
                for (t0, dst) in dst[..len].chunks_mut(64).enumerate() {
                    for i in 0..rows {
                        for (t, p) in dst.iter_mut().enumerate() {
                            let pos = first + t0 * 64 + t;
                            let (n, s) = (pos / s_n, pos % s_n);
                            p.0[i] = dy[(n * c_out + b * MR + i) * s_n + s];
                        }
                    }
                }
            });
        let (panels, bases) = (&panels, &bases[..len]);
        // Tasks: (one block, or a pair of blocks on the wide kernel) × a group of 6 rows.
        let units = if wide { blocks.div_ceil(2) } else { blocks };
        (0..units * groups).into_par_iter().for_each(|task| {
            let (unit, grp) = (task / groups, task % groups);
            let b = if wide { 2 * unit } else { unit };
            let pair = wide && b + 1 < blocks;
            let k0 = grp * NR;
            let ks: [usize; NR] = std::array::from_fn(|j| (k0 + j).min(kdim - 1));
            let rows_k: [usize; NR] = ks.map(|k| offs[k]);
            let mut tiles = [[[0.0f32; MR]; NR]; 2];
            let panel_a = &panels[b * PCHUNK..b * PCHUNK + len];
            let (tile_a, tile_b) = tiles.split_at_mut(1);
            if pair {
                let panel_b = &panels[(b + 1) * PCHUNK..(b + 1) * PCHUNK + len];
                // SAFETY: AVX-512F checked by `wide_available`; offs[k] + bases[t] addresses
                // the value row k of the column matrix holds for position t, inside `xs`.
                unsafe {
                    micro_32x6(
                        [panel_a, panel_b],
                        &Contiguous(bases),
                        xs,
                        &rows_k,
                        [&mut tile_a[0], &mut tile_b[0]],
                    )
                };
            } else {
                // SAFETY: AVX2 + FMA checked by `available`; as above.
                unsafe { micro_16x6(panel_a, &Contiguous(bases), xs, &rows_k, &mut tile_a[0]) };
            }
            for (ib, tile) in tiles[..if pair { 2 } else { 1 }].iter().enumerate() {
                let bb = b + ib;
                for (j, col) in tile.iter().enumerate().take(kdim - k0.min(kdim)) {
                    for (i, &v) in col.iter().enumerate().take(MR.min(c_out - bb * MR)) {
                        // SAFETY: dW[bb·16 + i, k0 + j] belongs to this task only within a
                        // round; rounds run one after the other.
                        unsafe { *dw_ptr.get().add((bb * MR + i) * kdim + k0 + j) += v };
                    }
                }
            }
        });
        first += len;
    }
    dw
}

/// The reduction steps of one micro-kernel call: for each step, the packed panel row and the
/// staged offset (added to every base) it uses.
trait Rows {
    /// Calls `f(panel row, offset)` for every step, in order.
    fn each(&self, f: impl FnMut(usize, usize));
}

/// Step `k` uses panel row `k` and offset `offs[k]` (the weight gradient: one step per
/// output position).
struct Contiguous<'a>(&'a [usize]);

impl Rows for Contiguous<'_> {
    #[inline(always)]
    fn each(&self, mut f: impl FnMut(usize, usize)) {
        for (k, &o) in self.0.iter().enumerate() {
            f(k, o);
        }
    }
}

/// Step `i` uses panel row `steps[i].0` and offset `steps[i].1` (the forward pass: the
/// steps of a box of live taps, see `plan_steps`).
struct Listed<'a>(&'a [(u32, u32)]);

impl Rows for Listed<'_> {
    #[inline(always)]
    fn each(&self, mut f: impl FnMut(usize, usize)) {
        for &(k, o) in self.0 {
            f(k as usize, o as usize);
        }
    }
}

/// `tile[j][i] += Σ_(k, o) panel[k][i] · xs[bases[j] + o]` over the steps `(k, o)` of `rows`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; every step's `k` must be below `panel.len()` and
/// `bases[j] + o` in bounds of `xs` for every `j`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_16x6<R: Rows>(
    panel: &[Panel],
    rows: &R,
    xs: &[f32],
    bases: &[usize; NR],
    tile: &mut [[f32; MR]; NR],
) {
    use std::arch::x86_64::*;
    let x = xs.as_ptr();
    let pp = panel.as_ptr();
    // SAFETY: forwarded from the caller; `Panel` is 64-byte aligned (aligned loads).
    unsafe {
        let [x0, x1, x2, x3, x4, x5] = bases.map(|b| x.add(b));
        let mut c = [_mm256_setzero_ps(); 2 * NR];
        for (j, col) in tile.iter().enumerate() {
            c[2 * j] = _mm256_loadu_ps(col.as_ptr());
            c[2 * j + 1] = _mm256_loadu_ps(col.as_ptr().add(8));
        }
        rows.each(|k, o| {
            debug_assert!(k < panel.len());
            let p = (*pp.add(k)).0.as_ptr();
            let a0 = _mm256_load_ps(p);
            let a1 = _mm256_load_ps(p.add(8));
            let b = _mm256_broadcast_ss(&*x0.add(o));
            c[0] = _mm256_fmadd_ps(a0, b, c[0]);
            c[1] = _mm256_fmadd_ps(a1, b, c[1]);
            let b = _mm256_broadcast_ss(&*x1.add(o));
            c[2] = _mm256_fmadd_ps(a0, b, c[2]);
            c[3] = _mm256_fmadd_ps(a1, b, c[3]);
            let b = _mm256_broadcast_ss(&*x2.add(o));
            c[4] = _mm256_fmadd_ps(a0, b, c[4]);
            c[5] = _mm256_fmadd_ps(a1, b, c[5]);
            let b = _mm256_broadcast_ss(&*x3.add(o));
            c[6] = _mm256_fmadd_ps(a0, b, c[6]);
            c[7] = _mm256_fmadd_ps(a1, b, c[7]);
            let b = _mm256_broadcast_ss(&*x4.add(o));
            c[8] = _mm256_fmadd_ps(a0, b, c[8]);
            c[9] = _mm256_fmadd_ps(a1, b, c[9]);
            let b = _mm256_broadcast_ss(&*x5.add(o));
            c[10] = _mm256_fmadd_ps(a0, b, c[10]);
            c[11] = _mm256_fmadd_ps(a1, b, c[11]);
        });
        for (j, col) in tile.iter_mut().enumerate() {
            _mm256_storeu_ps(col.as_mut_ptr(), c[2 * j]);
            _mm256_storeu_ps(col.as_mut_ptr().add(8), c[2 * j + 1]);
        }
    }
}

/// `tiles[h][j][i] += Σ_(k, o) panels[h][k][i] · xs[bases[j] + o]` for two blocks `h` of 16
/// channels: 12 accumulators of 16 lanes, 2 weight loads and 6 broadcasts per step.
///
/// # Safety
/// The CPU must support AVX-512F; every step's `k` must be below the length of both panels
/// and `bases[j] + o` in bounds of `xs` for every `j`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_32x6<R: Rows>(
    panels: [&[Panel]; 2],
    rows: &R,
    xs: &[f32],
    bases: &[usize; NR],
    tiles: [&mut [[f32; MR]; NR]; 2],
) {
    use std::arch::x86_64::*;
    let [pa, pb] = panels;
    let x = xs.as_ptr();
    let (ppa, ppb) = (pa.as_ptr(), pb.as_ptr());
    // SAFETY: forwarded from the caller; `Panel` is 64-byte aligned (aligned loads).
    unsafe {
        let [x0, x1, x2, x3, x4, x5] = bases.map(|b| x.add(b));
        let [ta, tb] = tiles;
        let mut c = [_mm512_setzero_ps(); 2 * NR];
        for j in 0..NR {
            c[2 * j] = _mm512_loadu_ps(ta[j].as_ptr());
            c[2 * j + 1] = _mm512_loadu_ps(tb[j].as_ptr());
        }
        rows.each(|k, o| {
            debug_assert!(k < pa.len() && k < pb.len());
            let a0 = _mm512_load_ps((*ppa.add(k)).0.as_ptr());
            let a1 = _mm512_load_ps((*ppb.add(k)).0.as_ptr());
            let b = _mm512_set1_ps(*x0.add(o));
            c[0] = _mm512_fmadd_ps(a0, b, c[0]);
            c[1] = _mm512_fmadd_ps(a1, b, c[1]);
            let b = _mm512_set1_ps(*x1.add(o));
            c[2] = _mm512_fmadd_ps(a0, b, c[2]);
            c[3] = _mm512_fmadd_ps(a1, b, c[3]);
            let b = _mm512_set1_ps(*x2.add(o));
            c[4] = _mm512_fmadd_ps(a0, b, c[4]);
            c[5] = _mm512_fmadd_ps(a1, b, c[5]);
            let b = _mm512_set1_ps(*x3.add(o));
            c[6] = _mm512_fmadd_ps(a0, b, c[6]);
            c[7] = _mm512_fmadd_ps(a1, b, c[7]);
            let b = _mm512_set1_ps(*x4.add(o));
            c[8] = _mm512_fmadd_ps(a0, b, c[8]);
            c[9] = _mm512_fmadd_ps(a1, b, c[9]);
            let b = _mm512_set1_ps(*x5.add(o));
            c[10] = _mm512_fmadd_ps(a0, b, c[10]);
            c[11] = _mm512_fmadd_ps(a1, b, c[11]);
        });
        for j in 0..NR {
            _mm512_storeu_ps(ta[j].as_mut_ptr(), c[2 * j]);
            _mm512_storeu_ps(tb[j].as_mut_ptr(), c[2 * j + 1]);
        }
    }
}

/// Never called: [`wide_available`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro_32x6<R: Rows>(
    _panels: [&[Panel]; 2],
    _rows: &R,
    _xs: &[f32],
    _bases: &[usize; NR],
    _tiles: [&mut [[f32; MR]; NR]; 2],
) {
    unreachable!("the direct conv3d kernel needs x86-64")
}

/// Never called: [`available`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro_16x6<R: Rows>(
    _panel: &[Panel],
    _rows: &R,
    _xs: &[f32],
    _bases: &[usize; NR],
    _tile: &mut [[f32; MR]; NR],
) {
    unreachable!("the direct conv3d kernel needs x86-64")
}

#[cfg(test)]
mod tests {
    use super::super::kernels::{Geom, Staging};
    use super::*;

    /// A small deterministic generator for test data.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// The geometry of a convolution, its output size computed as PyTorch does.
    fn geom(
        n: usize,
        [c_in, c_out]: [usize; 2],
        input: [usize; 3],
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
        dilation: [usize; 3],
    ) -> Geom {
        let output: [usize; 3] = std::array::from_fn(|a| {
            (input[a] + 2 * padding[a] - dilation[a] * (kernel[a] - 1) - 1) / stride[a] + 1
        });
        Geom {
            n,
            c_in,
            c_out,
            input,
            kernel,
            output,
            stride,
            padding,
            dilation,
        }
    }

    /// The direct forward and weight-gradient kernels against a naive direct convolution in
    /// f64, on geometries with odd sizes, channel counts that are not multiples of 16 (or of 6
    /// weight rows), strides, padding and dilation.
    #[test]
    fn direct_matches_naive_loops() {
        if !available() {
            return;
        }
        #[rustfmt::skip]
        let cases = [
            // (n, c_in, c_out, input, kernel, stride, padding, dilation)
            (2, 3, 20, [7, 9, 11], [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1]),
            (2, 2, 16, [13, 12, 15], [3, 2, 3], [2, 2, 2], [1, 0, 1], [1, 1, 1]),
            (3, 1, 8, [11, 10, 9], [7, 7, 7], [2, 2, 2], [3, 3, 3], [1, 1, 1]),
            (3, 4, 33, [8, 7, 9], [3, 3, 3], [1, 2, 3], [2, 1, 0], [2, 1, 1]),
            // Padding wider than the kernel's reach: the border positions read only padding
            // (empty tap boxes, zero outputs), short rows split by W class.
            (2, 3, 17, [3, 4, 3], [3, 2, 3], [1, 1, 1], [3, 2, 3], [1, 1, 1]),
        ];
        for (n, c_in, c_out, input, kernel, stride, padding, dilation) in cases {
            let g = geom(n, [c_in, c_out], input, kernel, stride, padding, dilation);
            let st = Staging::new(&g);
            assert!(suits(&g, &st), "case {g:?} too small for the direct kernel");
            let x = values(n * c_in * g.in_vol(), 1);
            let w = values(c_out * g.kdim(), 2);
            let xs = st.stage(&g, &x);
            for wide in [false, true] {
                if wide && !wide_available() {
                    eprintln!("no AVX-512F: the 32-channel kernel is not tested on this CPU");
                    continue;
                }
                check_case(&g, &x, &w, &xs, &st, wide);
            }
        }
    }

    /// `live_taps` against a tap-by-tap check of which input coordinate each tap reads.
    #[test]
    fn live_taps_are_the_taps_that_read_input() {
        for input in 1..7 {
            for k in 1..6 {
                for s in 1..4 {
                    for dil in 1..3 {
                        for p in 0..5 {
                            let reach = dil * (k - 1) + 1;
                            if input + 2 * p < reach {
                                continue;
                            }
                            for o in 0..=(input + 2 * p - reach) / s {
                                let (lo, hi) = live_taps(o, input, k, s, p, dil);
                                for t in 0..k {
                                    let i = (o * s + t * dil) as isize - p as isize;
                                    let reads = (0..input as isize).contains(&i);
                                    assert_eq!(
                                        reads,
                                        (lo..hi).contains(&t),
                                        "o {o} input {input} k {k} s {s} p {p} dil {dil}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The plan visits every output position once, and the box of every group of 6 (as the
    /// forward pass forms them) holds the live taps of each of its positions.
    #[test]
    fn tap_plan_is_a_permutation_and_group_boxes_cover_live_taps() {
        let geoms = [
            // layer1 and layer2 of ResNet-18 on 32³ inputs (short rows: W classes), the stem
            // (long rows), and an odd strided, dilated case.
            ([8, 8, 8], [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1]),
            ([4, 4, 4], [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1]),
            ([32, 32, 32], [7, 7, 7], [2, 2, 2], [3, 3, 3], [1, 1, 1]),
            ([9, 5, 14], [3, 2, 3], [2, 1, 3], [2, 1, 1], [2, 1, 1]),
        ];
        for (input, kernel, stride, padding, dilation) in geoms {
            let g = geom(3, [1, 16], input, kernel, stride, padding, dilation);
            let output = g.output;
            let plan = TapPlan::new(&g);
            let mut seen = vec![false; g.positions()];
            for &p in &plan.order {
                assert!(!std::mem::replace(&mut seen[p], true), "{g:?}: {p} twice");
            }
            assert!(seen.iter().all(|&s| s), "{g:?}: a position is missing");
            let [od_n, oh_n, ow_n] = output;
            for group in plan.order.chunks(NR) {
                let tap_box = plan.union_box(&g, group);
                for &p in group {
                    let coords = [(p / (ow_n * oh_n)) % od_n, (p / ow_n) % oh_n, p % ow_n];
                    for a in 0..3 {
                        let (lo, hi) = live_taps(
                            coords[a],
                            input[a],
                            kernel[a],
                            stride[a],
                            padding[a],
                            dilation[a],
                        );
                        assert!(
                            lo >= hi || (tap_box[a].0 <= lo && hi <= tap_box[a].1),
                            "{g:?}: position {p} axis {a} live {lo}..{hi} outside {tap_box:?}"
                        );
                    }
                }
            }
        }
    }

    /// One geometry through one micro-kernel (`wide`: AVX-512), against naive f64 loops.
    fn check_case(g: &Geom, x: &[f32], w: &[f32], xs: &[f32], st: &Staging, wide: bool) {
        let &Geom {
            n,
            c_in,
            c_out,
            input,
            kernel,
            output,
            stride,
            padding,
            dilation,
        } = g;
        {
            let y = forward_with(g, st, xs, w, wide);
            let dy = values(y.len(), 3);
            let dw = grad_weight_with(g, st, xs, &dy, wide);
            let mut dw_naive = vec![0.0f64; w.len()];
            let [d, h, wd] = input;
            let [kd, kh, kw] = kernel;
            let [od, oh, ow] = output;
            let mut worst = 0.0f64;
            for b in 0..n {
                for co in 0..c_out {
                    for (z, yy, xx) in (0..od)
                        .flat_map(|z| (0..oh).flat_map(move |y| (0..ow).map(move |x| (z, y, x))))
                    {
                        let mut acc = 0.0f64;
                        for c in 0..c_in {
                            for (a, bb, e) in (0..kd).flat_map(|a| {
                                (0..kh).flat_map(move |b| (0..kw).map(move |e| (a, b, e)))
                            }) {
                                let iz = (z * stride[0] + a * dilation[0]) as isize
                                    - padding[0] as isize;
                                let iy = (yy * stride[1] + bb * dilation[1]) as isize
                                    - padding[1] as isize;
                                let ix = (xx * stride[2] + e * dilation[2]) as isize
                                    - padding[2] as isize;
                                if iz < 0
                                    || iy < 0
                                    || ix < 0
                                    || iz >= d as isize
                                    || iy >= h as isize
                                    || ix >= wd as isize
                                {
                                    continue;
                                }
                                let xi = (((b * c_in + c) * d + iz as usize) * h + iy as usize)
                                    * wd
                                    + ix as usize;
                                let wi = (((co * c_in + c) * kd + a) * kh + bb) * kw + e;
                                acc += f64::from(x[xi]) * f64::from(w[wi]);
                                let yi = (((b * c_out + co) * od + z) * oh + yy) * ow + xx;
                                dw_naive[wi] += f64::from(x[xi]) * f64::from(dy[yi]);
                            }
                        }
                        let yi = (((b * c_out + co) * od + z) * oh + yy) * ow + xx;
                        worst = worst.max((f64::from(y[yi]) - acc).abs());
                    }
                }
            }
            // f32 sums of at most 4·49 products of values in [-0.5, 0.5].
            assert!(
                worst < 1e-5,
                "case {g:?} (wide {wide}): forward worst error {worst}"
            );
            // dW sums up to N·|out| ≤ 3·6³ products.
            let worst_dw = dw
                .iter()
                .zip(&dw_naive)
                .map(|(&a, &b)| (f64::from(a) - b).abs())
                .fold(0.0, f64::max);
            assert!(
                worst_dw < 1e-4,
                "case {g:?} (wide {wide}): dW worst error {worst_dw}"
            );
        }
    }
}
