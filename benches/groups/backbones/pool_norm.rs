//! Group `backbones`: 3D max pooling and `BatchNorm3d` on a 4×64×32³ f32 map (a ResNet-18
//! stem output at 64³ input), forward and forward + backward, with candle-nn's `BatchNorm`
//! for comparison. Backward passes are seeded by `y.backward()` (a ones gradient), so every
//! fwd + bwd figure also includes candle's own gradient bookkeeping (seed allocation and the
//! accumulation of `dx` into the gradient store).

use std::hint::black_box;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{BatchNormConfig, ModuleT, VarBuilder, VarMap};
use criterion::{BenchmarkId, Criterion, Throughput};
use yaware_backbones::ops::{BatchNorm3d, max_pool3d};

use super::super::normal_vec;

const SHAPE: (usize, usize, usize, usize, usize) = (4, 64, 32, 32, 32);
const ID: &str = "n4_c64_32cube";

fn input() -> Var {
    let (n, c, d, h, w) = SHAPE;
    let x = Tensor::from_vec(normal_vec(11, n * c * d * h * w), SHAPE, &Device::Cpu).unwrap();
    // A non-trivial per-channel mean and scale, like a conv output.
    let x = (x * 1.5).unwrap().affine(1.0, 0.25).unwrap();
    Var::from_tensor(&x).unwrap()
}

/// Registers the pooling and batch-norm benchmarks.
pub(super) fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("backbones");
    group.sample_size(10);
    let x = input();
    group.throughput(Throughput::Elements(x.elem_count() as u64));
    let pool = |x: &Tensor| max_pool3d(x, [3; 3], [2; 3], [1; 3]).unwrap();
    group.bench_function(BenchmarkId::new("max_pool3d_k3s2p1_fwd_f32", ID), |b| {
        b.iter(|| black_box(pool(&x)))
    });
    group.bench_function(BenchmarkId::new("max_pool3d_k3s2p1_fwd_bwd_f32", ID), |b| {
        b.iter(|| black_box(pool(&x).backward().unwrap()))
    });

    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let bn = BatchNorm3d::new(SHAPE.1, vb.pp("bn")).unwrap();
    let reference =
        candle_nn::batch_norm(SHAPE.1, BatchNormConfig::default(), vb.pp("ref")).unwrap();
    group.bench_function(BenchmarkId::new("batch_norm3d_train_fwd_f32", ID), |b| {
        b.iter(|| black_box(bn.forward_t(&x, true).unwrap()))
    });
    group.bench_function(
        BenchmarkId::new("batch_norm3d_train_fwd_bwd_f32", ID),
        |b| b.iter(|| black_box(bn.forward_t(&x, true).unwrap().backward().unwrap())),
    );
    group.bench_function(
        BenchmarkId::new("batch_norm3d_relu_train_fwd_f32", ID),
        |b| b.iter(|| black_box(bn.forward_relu_t(&x, true).unwrap())),
    );
    group.bench_function(
        BenchmarkId::new("batch_norm3d_relu_train_fwd_bwd_f32", ID),
        |b| b.iter(|| black_box(bn.forward_relu_t(&x, true).unwrap().backward().unwrap())),
    );
    group.bench_function(
        BenchmarkId::new("candle_nn_batch_norm_train_fwd_f32", ID),
        |b| b.iter(|| black_box(reference.forward_t(&x, true).unwrap())),
    );
    group.bench_function(
        BenchmarkId::new("candle_nn_batch_norm_train_fwd_bwd_f32", ID),
        |b| b.iter(|| black_box(reference.forward_t(&x, true).unwrap().backward().unwrap())),
    );
    group.finish();
}
