//! Group `losses`: y-Aware InfoNCE forward + backward and the weight matrix alone.
//!
//! Shapes follow the issue: N ∈ {64, 256, 1024} samples per view, D = 128, one label feature,
//! f32 embeddings, Gaussian kernel, τ = 0.1. Throughput is in samples (N) per second. PyTorch
//! runs the reference formula in `benches/compare/torch_bench.py loss` (figures in
//! docs/PERFORMANCE.md).

use std::hint::black_box;

use candle_core::{Device, Tensor, Var};
use criterion::{BenchmarkId, Criterion, Throughput};
use yaware_losses::{Bandwidth, InfoNce, Kernel, YAwareInfoNce};

use super::normal_vec;

const D: usize = 128;

fn inputs(n: usize) -> (Var, Var, Tensor) {
    let dev = Device::Cpu;
    let z1 = Tensor::from_vec(normal_vec(1, n * D), (n, D), &dev).unwrap();
    let z2 = Tensor::from_vec(normal_vec(2, n * D), (n, D), &dev).unwrap();
    // Ages between 20 and 80.
    let y: Vec<f32> = normal_vec(3, n)
        .iter()
        .map(|v| 50.0 + 10.0 * v.clamp(-3.0, 3.0))
        .collect();
    let y = Tensor::from_vec(y, n, &dev).unwrap();
    (
        Var::from_tensor(&z1).unwrap(),
        Var::from_tensor(&z2).unwrap(),
        y,
    )
}

/// Registers the group.
pub(crate) fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("losses");
    let loss = YAwareInfoNce::new(Kernel::Gaussian, Bandwidth::Scalar(25.0), 0.1).unwrap();
    for n in [64usize, 256, 1024] {
        let (z1, z2, y) = inputs(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new("yaware_fwd_bwd_f32", format!("n{n}_d{D}")),
            &n,
            |b, _| {
                b.iter(|| {
                    let l = loss.forward(&z1, &z2, Some(&y)).unwrap();
                    black_box(l.backward().unwrap())
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("yaware_weights", format!("n{n}_f1")),
            &n,
            |b, _| b.iter(|| black_box(loss.weights(&y).unwrap())),
        );
    }
    let (z1, z2, _) = inputs(256);
    let infonce = InfoNce::new(0.1).unwrap();
    group.throughput(Throughput::Elements(256));
    group.bench_function(
        BenchmarkId::new("infonce_fwd_bwd_f32", format!("n256_d{D}")),
        |b| b.iter(|| black_box(infonce.forward(&z1, &z2).unwrap().backward().unwrap())),
    );
    group.finish();
}
