//! Group `machine`: the f32 FMA peak of this machine, the ceiling the convolution and matmul
//! figures are compared with. Every rayon thread runs 16 independent chains of 16-lane (AVX-512)
//! or 8-lane (AVX2) fused multiply-adds on registers only, so nothing but the FMA units limits
//! it. Throughput counts 2 FLOPs per lane per FMA. Not run on CPUs without AVX2 + FMA.

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use rayon::prelude::*;

/// FMAs per chain per call.
const ITERS: usize = 1 << 20;
/// Independent chains (enough to cover the FMA latency on two ports).
const CHAINS: usize = 16;

/// Registers the group.
pub(crate) fn bench(c: &mut Criterion) {
    #[cfg(target_arch = "x86_64")]
    {
        let lanes = if std::is_x86_feature_detected!("avx512f") {
            16
        } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            8
        } else {
            return;
        };
        let threads = rayon::current_num_threads();
        let mut group = c.benchmark_group("machine");
        group.sample_size(10);
        let flops = (threads * ITERS * CHAINS * lanes * 2) as u64;
        group.throughput(Throughput::Elements(flops));
        let name = format!("fma_peak_f32_{}lanes_{threads}threads", lanes);
        group.bench_function(name, |b| {
            b.iter(|| {
                let sums: Vec<f32> = (0..threads)
                    .into_par_iter()
                    .map(|_| {
                        // SAFETY: the features were detected above.
                        unsafe {
                            if lanes == 16 {
                                chains_avx512(black_box(ITERS))
                            } else {
                                chains_avx2(black_box(ITERS))
                            }
                        }
                    })
                    .collect();
                black_box(sums)
            })
        });
        group.finish();
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = c;
}

/// `CHAINS` chains of `iters` dependent 16-lane FMAs.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chains_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut c = [_mm512_set1_ps(0.0); CHAINS];
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iters {
        for acc in &mut c {
            *acc = _mm512_fmadd_ps(a, *acc, b);
        }
    }
    c.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
}

/// `CHAINS` chains of `iters` dependent 8-lane FMAs.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut c = [_mm256_set1_ps(0.0); CHAINS];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iters {
        for acc in &mut c {
            *acc = _mm256_fmadd_ps(a, *acc, b);
        }
    }
    let mut out = [0.0f32; 8];
    c.iter()
        .map(|&v| {
            // SAFETY: `out` holds the 8 lanes.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
            out.iter().sum::<f32>()
        })
        .sum()
}
