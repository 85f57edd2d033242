//! One-pass resampling by index maps: every output voxel copies one input voxel of its channel
//! (or takes a fill value), output axis `i` reading input axis `source_axis` at an index that
//! depends on the output index along `i` alone. [`CropOrPad`](super::CropOrPad) (every pad mode)
//! and the 90° rotations of [`RandomRotation`](super::RandomRotation) composed with their centred
//! crop-or-pad are such maps, so each allocates its output once and writes every voxel once,
//! with no intermediate volume.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::Volume;

/// Where output axis `i` reads: input spatial axis `source_axis`, at `index[o]` for output
/// index `o` (`None`: the fill value).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AxisMap {
    pub(super) source_axis: usize,
    pub(super) index: Vec<Option<usize>>,
}

/// A stretch of an output row whose axis reads the input's rows (W): filled, copied forwards
/// from `src` or backwards from `src` down.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Run {
    Fill(usize),
    Copy { src: usize, len: usize },
    Reverse { src: usize, len: usize },
}

/// The runs of `index`: maximal stretches of fills, of consecutive increasing sources, or of
/// consecutive decreasing ones (what reflected margins give).
fn runs(index: &[Option<usize>]) -> Vec<Run> {
    let n = index.len();
    let mut out = Vec::new();
    let mut x = 0;
    while x < n {
        let start = x;
        let Some(s) = index[x] else {
            while x < n && index[x].is_none() {
                x += 1;
            }
            out.push(Run::Fill(x - start));
            continue;
        };
        x += 1;
        while x < n && index[x] == Some(s + (x - start)) {
            x += 1;
        }
        if x - start == 1 {
            while x < n && x - start <= s && index[x] == Some(s - (x - start)) {
                x += 1;
            }
            if x - start > 1 {
                out.push(Run::Reverse {
                    src: s,
                    len: x - start,
                });
                continue;
            }
        }
        out.push(Run::Copy {
            src: s,
            len: x - start,
        });
    }
    out
}

fn put(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

fn put_reversed(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src.iter().rev()) {
        d.write(s);
    }
}

fn fill_with(dst: &mut [MaybeUninit<f32>], value: f32) {
    for d in dst {
        d.write(value);
    }
}

/// Output rows (or planes) handled together when the output's rows read across the input's
/// rows, so that each input cache line read serves this many outputs.
const TILE: usize = 16;

/// Writes one output row from the input row `line` (which starts at input W index 0).
fn copy_runs(row: &mut [MaybeUninit<f32>], line: &[f32], runs: &[Run], fill: f32) {
    let mut x = 0;
    for run in runs {
        match *run {
            Run::Fill(len) => {
                fill_with(&mut row[x..x + len], fill);
                x += len;
            }
            Run::Copy { src, len } => {
                put(&mut row[x..x + len], &line[src..src + len]);
                x += len;
            }
            Run::Reverse { src, len } => {
                put_reversed(&mut row[x..x + len], &line[src + 1 - len..=src]);
                x += len;
            }
        }
    }
}

/// One output plane `(H, W)` whose W reads the input's W: row by row, runs copied.
fn plane_by_rows(
    src: &[f32],
    plane: &mut [MaybeUninit<f32>],
    z: Option<usize>,
    rows: &[Option<usize>],
    runs: &[Run],
    width: usize,
    fill: f32,
) {
    let Some(z) = z else {
        return fill_with(plane, fill);
    };
    for (row, y) in plane.chunks_exact_mut(width).zip(rows) {
        match y {
            None => fill_with(row, fill),
            Some(y) => copy_runs(row, &src[z + y..], runs, fill),
        }
    }
}

/// One output plane whose H reads the input's W: tiles of [`TILE`] rows, column by column, so
/// the reads of a column are consecutive input voxels.
fn plane_by_tiles(
    src: &[f32],
    plane: &mut [MaybeUninit<f32>],
    z: Option<usize>,
    rows: &[Option<usize>],
    cols: &[Option<usize>],
    fill: f32,
) {
    let Some(z) = z else {
        return fill_with(plane, fill);
    };
    let width = cols.len();
    for (tile, ys) in plane.chunks_mut(TILE * width).zip(rows.chunks(TILE)) {
        for (x, col) in cols.iter().enumerate() {
            for (r, y) in ys.iter().enumerate() {
                let v = match (col, y) {
                    (Some(c), Some(y)) => src[z + c + y],
                    _ => fill,
                };
                tile[r * width + x].write(v);
            }
        }
    }
}

/// Up to [`TILE`] output planes whose D reads the input's W, written together voxel by voxel.
fn planes_interleaved(
    src: &[f32],
    planes: &mut [MaybeUninit<f32>],
    zs: &[Option<usize>],
    rows: &[Option<usize>],
    cols: &[Option<usize>],
    fill: f32,
) {
    let size = rows.len() * cols.len();
    let mut k = 0;
    for y in rows {
        for c in cols {
            match (y, c) {
                (Some(y), Some(c)) => {
                    for (t, z) in zs.iter().enumerate() {
                        planes[t * size + k].write(z.map_or(fill, |z| src[z + y + c]));
                    }
                }
                _ => {
                    for t in 0..zs.len() {
                        planes[t * size + k].write(fill);
                    }
                }
            }
            k += 1;
        }
    }
}

thread_local! {
    /// The buffer of the last volume a gather consumed on this thread, reused for the next
    /// output of about its size. Fresh multi-megabyte buffers come from the system (glibc
    /// returns its heap top once two volumes' worth is free) and page-fault on first touch,
    /// which costs several times the copy itself; recycling keeps a chain of transforms (and a
    /// loader thread's successive samples) on warm memory. At most one buffer per thread.
    static SPARE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for `len` values: the thread's spare if it fits without wasting
/// more than its size again, else a fresh one.
fn take_buffer(len: usize) -> Vec<f32> {
    SPARE.with_borrow_mut(|spare| {
        if (len..=2 * len).contains(&spare.capacity()) {
            let mut buf = std::mem::take(spare);
            buf.clear();
            buf
        } else {
            Vec::with_capacity(len)
        }
    })
}

/// Keeps `buf` as the thread's spare (dropping the previous one).
fn recycle(buf: Vec<f32>) {
    if buf.capacity() > 0 {
        SPARE.set(buf);
    }
}

/// The `(C, out)` volume whose voxel `(c, o0, o1, o2)` is `v`'s voxel of channel `c` at
/// `maps[i].index[o_i]` along input axis `maps[i].source_axis` for each `i`, or `fill` where any
/// index is `None`. The source axes must be a permutation of `{0, 1, 2}` and every index in
/// range. Planes (or groups of planes) in parallel; the output is written once, into the
/// thread's recycled buffer when it fits, and `v`'s buffer is kept for the next call.
pub(super) fn gather(v: Volume, out: [usize; 3], maps: &[AxisMap; 3], fill: f32) -> Volume {
    let [c, d, h, w] = v.shape();
    let in_dims = [d, h, w];
    let in_strides = [h * w, w, 1];
    let mut seen = [false; 3];
    for (m, &n) in maps.iter().zip(&out) {
        assert_eq!(
            m.index.len(),
            n,
            "one index per output voxel along the axis"
        );
        assert!(
            m.index
                .iter()
                .all(|i| i.is_none_or(|i| i < in_dims[m.source_axis])),
            "indices within the input"
        );
        seen[m.source_axis] = true;
    }
    assert!(seen.iter().all(|&s| s), "the source axes are a permutation");
    // Offsets of each output index in its input axis, in voxels.
    let offsets: [Vec<Option<usize>>; 3] = [0, 1, 2].map(|i| {
        let stride = in_strides[maps[i].source_axis];
        maps[i]
            .index
            .iter()
            .map(|j| j.map(|j| j * stride))
            .collect()
    });
    let [od, oh, ow] = out;
    let (plane, n_in) = (oh * ow, d * h * w);
    let n = od * plane;
    let mut data = take_buffer(c * n);
    let rows_runs = (maps[2].source_axis == 2).then(|| runs(&maps[2].index));
    if n > 0 {
        let dst_all = &mut data.spare_capacity_mut()[..c * n];
        for (ch, dst) in dst_all.chunks_exact_mut(n).enumerate() {
            let src = &v.data()[ch * n_in..(ch + 1) * n_in];
            let [zs, ys, xs] = &offsets;
            if let Some(runs) = &rows_runs {
                dst.par_chunks_mut(plane)
                    .zip(zs)
                    .for_each(|(p, &z)| plane_by_rows(src, p, z, ys, runs, ow, fill));
            } else if maps[1].source_axis == 2 {
                dst.par_chunks_mut(plane)
                    .zip(zs)
                    .for_each(|(p, &z)| plane_by_tiles(src, p, z, ys, xs, fill));
            } else {
                dst.par_chunks_mut(TILE * plane)
                    .zip(zs.par_chunks(TILE))
                    .for_each(|(p, zs)| planes_interleaved(src, p, zs, ys, xs, fill));
            }
        }
    }
    // SAFETY: the capacity is `c·n`, and each kernel above wrote every element of the chunks
    // it was given, which tile `[0, c·n)` (the plane counts match `zs`, the row and column
    // counts `ys` and `xs`, by the assertions above). A panic there drops `data` unset.
    unsafe { data.set_len(c * n) };
    recycle(v.data);
    Volume::new([c, od, oh, ow], data).expect("the output has c·out voxels")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_fills_copies_and_reversals() {
        let idx = [
            None,
            None,
            Some(2),
            Some(1),
            Some(0),
            Some(1),
            Some(2),
            Some(3),
            Some(3),
            Some(7),
            None,
        ];
        assert_eq!(
            runs(&idx),
            [
                Run::Fill(2),
                Run::Reverse { src: 2, len: 3 },
                Run::Copy { src: 1, len: 3 },
                Run::Copy { src: 3, len: 1 },
                Run::Copy { src: 7, len: 1 },
                Run::Fill(1),
            ]
        );
        assert!(runs(&[]).is_empty());
        assert_eq!(runs(&[Some(0)]), [Run::Copy { src: 0, len: 1 }]);
    }

    /// The per-voxel definition of `gather`.
    fn naive(v: &Volume, out: [usize; 3], maps: &[AxisMap; 3], fill: f32) -> Vec<f32> {
        let [c, d, h, w] = v.shape();
        let mut data = Vec::new();
        for ch in 0..c {
            for o0 in 0..out[0] {
                for o1 in 0..out[1] {
                    for o2 in 0..out[2] {
                        let o = [o0, o1, o2];
                        let mut idx = [0; 3];
                        let mut inside = true;
                        for (i, m) in maps.iter().enumerate() {
                            match m.index[o[i]] {
                                Some(j) => idx[m.source_axis] = j,
                                None => inside = false,
                            }
                        }
                        data.push(if inside {
                            v.data()[((ch * d + idx[0]) * h + idx[1]) * w + idx[2]]
                        } else {
                            fill
                        });
                    }
                }
            }
        }
        data
    }

    #[test]
    fn every_axis_permutation_matches_the_per_voxel_definition() {
        let shape = [2, 5, 4, 3];
        let n: usize = shape.iter().product();
        let v = Volume::new(shape, (0..n).map(|i| i as f32).collect()).unwrap();
        let perms = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for perm in perms {
            // Output sizes: more than the source (fills at both ends, reversals) and more than
            // TILE along the first axis, so that tiles are partial.
            let out = [TILE + 3, 6, 7];
            let maps = [0, 1, 2].map(|i| {
                let n = shape[perm[i] + 1];
                AxisMap {
                    source_axis: perm[i],
                    index: (0..out[i])
                        .map(|o| {
                            let s = o as isize - 1;
                            // A mix: a fill, forward, backward, a repeat.
                            match s {
                                -1 => None,
                                s if (s as usize) < n => Some(s as usize),
                                s if (s as usize) < 2 * n => Some(2 * n - 1 - s as usize),
                                _ => Some(0),
                            }
                        })
                        .collect(),
                }
            });
            let got = gather(v.clone(), out, &maps, -5.0);
            assert_eq!(got.shape(), [2, out[0], out[1], out[2]]);
            assert_eq!(got.data(), naive(&v, out, &maps, -5.0), "{perm:?}");
        }
    }

    #[test]
    fn the_consumed_input_buffer_is_reused_and_fully_overwritten() {
        let shape = [1, 4, 5, 6];
        let first = Volume::new(shape, vec![7.0; 120]).unwrap();
        let first_buffer = first.data().as_ptr();
        let identity = [0, 1, 2].map(|i| AxisMap {
            source_axis: i,
            index: (0..shape[i + 1]).map(Some).collect(),
        });
        let out = gather(first, [4, 5, 6], &identity, 0.0);
        assert_eq!(out.data(), [7.0; 120]);
        // The next gather on this thread writes into `first`'s buffer: every voxel replaced.
        let second = Volume::new(shape, (0..120).map(|i| i as f32).collect()).unwrap();
        let mut maps = identity.clone();
        maps[2].index = vec![None, Some(5), Some(4), Some(0), Some(1), None];
        maps[0].index = vec![Some(3), None, Some(0), Some(1)];
        let expected = naive(&second, [4, 5, 6], &maps, -1.0);
        let got = gather(second, [4, 5, 6], &maps, -1.0);
        assert_eq!(got.data().as_ptr(), first_buffer, "the recycled buffer");
        assert_eq!(got.data(), expected);
        // A buffer more than twice the output's size is not used.
        let small = gather(
            got,
            [1, 1, 1],
            &[0, 1, 2].map(|i| AxisMap {
                source_axis: i,
                index: vec![Some(0)],
            }),
            0.0,
        );
        assert_ne!(small.data().as_ptr(), first_buffer);
        assert_eq!(small.data(), [expected[0]]);
    }
}
