//! Group `optim`: one AdamW step over 33,225,664 f32 parameters (the size of ResNet-18-3D with
//! a 128-d embedding), against the machine's memory bandwidth.
//!
//! Throughput counts the bytes a one-pass update must move: read θ, g, m, v and write θ, m, v
//! (7 × 4 bytes per parameter). `memcpy` copies a buffer of the same size (read + write, 8 bytes
//! per f32) and gives the machine's bandwidth ceiling for comparison.

use std::hint::black_box;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use criterion::{BenchmarkId, Criterion, Throughput};
use rayon::prelude::*;
use yaware_optim::{AdamW, AdamWConfig, Optimizer, ParamGroup};

use super::normal_vec;

/// Parameters of `resnet18(in_channels=1, n_embedding=128)` (the reference's count).
const N_PARAMS: usize = 33_225_664;

/// Registers the group.
pub(crate) fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("optim");
    group.sample_size(10);
    let dev = Device::Cpu;
    let theta =
        Var::from_tensor(&Tensor::from_vec(normal_vec(7, N_PARAMS), N_PARAMS, &dev).unwrap())
            .unwrap();
    let grad = Tensor::from_vec(normal_vec(8, N_PARAMS), N_PARAMS, &dev).unwrap();
    let mut grads = GradStore::default();
    grads.insert(theta.as_tensor(), grad);
    for fused in [true, false] {
        let mut opt = AdamW::new(
            vec![ParamGroup::from_vars("default", vec![theta.clone()])],
            AdamWConfig {
                lr: 1e-4,
                ..Default::default()
            },
        )
        .unwrap();
        opt.set_fused(fused);
        opt.step(&grads).unwrap(); // moments allocated outside the timing
        let name = if fused {
            "adamw_step_fused_f32"
        } else {
            "adamw_step_tensor_ops_f32"
        };
        group.throughput(Throughput::BytesDecimal((7 * 4 * N_PARAMS) as u64));
        group.bench_function(BenchmarkId::new(name, "33.2M"), |b| {
            b.iter(|| opt.step(black_box(&grads)).unwrap())
        });
    }
    let src = vec![1.0f32; N_PARAMS];
    let mut dst = vec![0.0f32; N_PARAMS];
    group.throughput(Throughput::BytesDecimal((2 * 4 * N_PARAMS) as u64));
    group.bench_function(BenchmarkId::new("memcpy_f32", "33.2M"), |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    // The same copy on every core, in the chunks the fused kernel uses: the bandwidth ceiling
    // of a parallel one-pass loop.
    group.bench_function(BenchmarkId::new("memcpy_parallel_f32", "33.2M"), |b| {
        b.iter(|| {
            dst.par_chunks_mut(1 << 15)
                .zip(black_box(&src).par_chunks(1 << 15))
                .for_each(|(d, s)| d.copy_from_slice(s));
            black_box(&dst);
        })
    });
    group.finish();
}
