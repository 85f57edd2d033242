//! Kernel taps that only ever meet padding.
//!
//! On volumes not much larger than the kernel (the last layers of a 3D ResNet on small inputs:
//! a 3³ kernel with padding 1 on a 1³ volume) some taps read nothing but the zero padding for
//! every output position: on a 1³ volume 26 of the 27 taps. Those taps contribute nothing to
//! the output, get a zero weight gradient and pass nothing back to the input. The op then runs
//! on a narrowed geometry instead: the kernel cut to the box of live taps, the padding reduced
//! by the taps cut in front, and the weight packed to that box. The result is the same sum
//! without the zero terms, and far less of the (large, deep-layer) weight read.

use rayon::prelude::*;

use super::kernels::{Float, Geom};

/// Narrow only when the full kernel has at least this many times the kept taps.
const MIN_CUT: usize = 4;

/// A convolution restricted to its live taps.
#[derive(Debug, Clone, Copy)]
pub(super) struct Narrowed {
    /// The geometry with the narrowed kernel and reduced padding (same input and output).
    pub(super) geom: Geom,
    /// First live tap per axis.
    lo: [usize; 3],
    /// The full kernel.
    kernel: [usize; 3],
}

impl Narrowed {
    /// The narrowed convolution, when some taps never meet the input and the narrowed kernel
    /// keeps the output grid (`None` otherwise: every tap is live, or cutting the kernel
    /// would need a negative padding, which only dilated kernels on tiny volumes can ask for).
    pub(super) fn new(g: &Geom) -> Option<Self> {
        let mut lo = [0; 3];
        let mut hi = [0; 3];
        for a in 0..3 {
            // Tap k of axis a meets the input at output o when 0 <= o·s + k·d − p < I.
            let live = |k: usize| {
                (0..g.output[a]).any(|o| {
                    let i = (o * g.stride[a] + k * g.dilation[a]) as isize - g.padding[a] as isize;
                    i >= 0 && i < g.input[a] as isize
                })
            };
            let mut taps = (0..g.kernel[a]).filter(|&k| live(k));
            let first = taps.next()?;
            lo[a] = first;
            hi[a] = taps.next_back().unwrap_or(first) + 1;
        }
        // Packing the kept taps reads most of the weight's cache lines anyway: it pays only
        // when few taps are kept (measured: 1 of 27 on a 1³ volume is 1.5× faster, 8 of 27
        // slower).
        let full: usize = g.kernel.iter().product();
        let kept: usize = (0..3).map(|a| hi[a] - lo[a]).product();
        if kept * MIN_CUT > full {
            return None;
        }
        let mut geom = *g;
        for a in 0..3 {
            let cut = lo[a] * g.dilation[a];
            if cut > g.padding[a] {
                return None;
            }
            geom.kernel[a] = hi[a] - lo[a];
            geom.padding[a] = g.padding[a] - cut;
            // The kept taps must see the same input values for every output position: the
            // narrowed output grid equals the original one.
            let span = g.dilation[a] * (geom.kernel[a] - 1) + 1;
            let padded = g.input[a] + 2 * geom.padding[a];
            if span > padded || (padded - span) / g.stride[a] + 1 != g.output[a] {
                return None;
            }
        }
        Some(Self {
            geom,
            lo,
            kernel: g.kernel,
        })
    }

    /// The number of taps of the full kernel, and the full-kernel index of every kept tap in
    /// the narrowed kernel's order.
    fn kept_taps(&self) -> (usize, Vec<usize>) {
        let [_, kh, kw] = self.kernel;
        let [nd, nh, nw] = self.geom.kernel;
        let mut map = Vec::with_capacity(nd * nh * nw);
        for d in 0..nd {
            for h in 0..nh {
                for w in 0..nw {
                    map.push(((d + self.lo[0]) * kh + h + self.lo[1]) * kw + w + self.lo[2]);
                }
            }
        }
        (self.kernel.iter().product(), map)
    }

    /// The kept taps of a full weight `(C_out, C_in, k…)`, as a weight of the narrowed kernel.
    pub(super) fn pack<T: Float>(&self, w: &[T]) -> Vec<T> {
        let (full, map) = self.kept_taps();
        let kept = map.len();
        let mut out = vec![T::ZERO; w.len() / full * kept];
        out.par_chunks_mut(kept * 64)
            .zip(w.par_chunks(full * 64))
            .for_each(|(dst, src)| {
                for (d, s) in dst.chunks_exact_mut(kept).zip(src.chunks_exact(full)) {
                    for (d, &f) in d.iter_mut().zip(&map) {
                        *d = s[f];
                    }
                }
            });
        out
    }

    /// A narrowed weight gradient spread back over the full kernel, zero at the dead taps.
    pub(super) fn unpack<T: Float>(&self, dw: &[T]) -> Vec<T> {
        let (full, map) = self.kept_taps();
        let kept = map.len();
        let mut out = vec![T::ZERO; dw.len() / kept * full];
        out.par_chunks_mut(full * 64)
            .zip(dw.par_chunks(kept * 64))
            .for_each(|(dst, src)| {
                for (d, s) in dst.chunks_exact_mut(full).zip(src.chunks_exact(kept)) {
                    for (&f, &v) in map.iter().zip(s) {
                        d[f] = v;
                    }
                }
            });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(input: [usize; 3], k: usize, stride: usize, padding: usize, dilation: usize) -> Geom {
        let output =
            std::array::from_fn(|a| (input[a] + 2 * padding - dilation * (k - 1) - 1) / stride + 1);
        Geom {
            n: 2,
            c_in: 3,
            c_out: 4,
            input,
            kernel: [k; 3],
            output,
            stride: [stride; 3],
            padding: [padding; 3],
            dilation: [dilation; 3],
        }
    }

    #[test]
    fn keeps_only_the_taps_that_meet_the_volume() {
        // k3 p1 on 1³: the middle tap, no padding left.
        let nr = Narrowed::new(&geom([1; 3], 3, 1, 1, 1)).unwrap();
        assert_eq!(nr.geom.kernel, [1; 3]);
        assert_eq!(nr.geom.padding, [0; 3]);
        assert_eq!(nr.geom.output, [1; 3]);
        // k3 s2 p1 on 1³: same.
        let nr = Narrowed::new(&geom([1; 3], 3, 2, 1, 1)).unwrap();
        assert_eq!(nr.geom.kernel, [1; 3]);
        // k3 p2 with dilation 2 on 1³: tap k reads i = 2k − 2, only k = 1 lands on the volume.
        let nr = Narrowed::new(&geom([1; 3], 3, 1, 2, 2)).unwrap();
        assert_eq!(nr.geom.kernel, [1; 3]);
        assert_eq!(nr.geom.padding, [0; 3]);
    }

    #[test]
    fn keeps_the_full_kernel_when_cutting_does_not_pay_or_cannot() {
        // Every tap live.
        assert!(Narrowed::new(&geom([2; 3], 3, 1, 1, 1)).is_none());
        assert!(Narrowed::new(&geom([5; 3], 3, 2, 1, 1)).is_none());
        // 8 of 27 taps live (2³ → 1³ with stride 2): not worth the packing.
        assert!(Narrowed::new(&geom([2; 3], 3, 2, 1, 1)).is_none());
        // Only the middle tap meets the volume, but cutting the first tap would need padding
        // 1 − 2 < 0.
        assert!(Narrowed::new(&geom([3; 3], 3, 1, 1, 2)).is_none());
    }

    #[test]
    fn pack_and_unpack_move_the_kept_taps() {
        let g = Geom {
            kernel: [3, 3, 3],
            ..geom([1; 3], 3, 1, 1, 1)
        };
        let nr = Narrowed::new(&g).unwrap();
        let w: Vec<f64> = (0..g.c_out * g.kdim()).map(|i| i as f64).collect();
        let packed = nr.pack(&w);
        assert_eq!(packed.len(), g.c_out * g.c_in);
        for (i, &v) in packed.iter().enumerate() {
            assert_eq!(v, (i * 27 + 13) as f64);
        }
        let full = nr.unpack(&packed);
        for (i, &v) in full.iter().enumerate() {
            let want = if i % 27 == 13 { i as f64 } else { 0.0 };
            assert_eq!(v, want);
        }
    }
}
