//! Whole networks: ResNet-18-3D (in 1, n_embedding 512) on a batch of 8 volumes of 32³, f32,
//! eval-mode forward and train-mode forward + backward. Throughput is in volumes per second.
//! The PyTorch reference takes about 74 ms for the eval forward on this project's 2-core
//! machine.

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use criterion::{BenchmarkId, Criterion, Throughput};
use yaware_backbones::{Backbone, ResNet, ResNetConfig};

use super::super::normal_vec;

const BATCH: usize = 8;
const SIDE: usize = 32;

/// Registers the whole-network benchmarks.
pub(super) fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("backbones");
    group.sample_size(10);
    let varmap = VarMap::new();
    let net = ResNet::new(ResNetConfig::resnet18(), &varmap, 0, DType::F32, &dev).unwrap();
    let shape = (BATCH, 1, SIDE, SIDE, SIDE);
    let x = Tensor::from_vec(normal_vec(11, BATCH * SIDE * SIDE * SIDE), shape, &dev).unwrap();
    let id = format!("b{BATCH}_1x{SIDE}^3_emb512");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_with_input(BenchmarkId::new("resnet18_eval_fwd", &id), &x, |b, x| {
        b.iter(|| black_box(net.forward_t(x, false).unwrap()))
    });
    group.bench_with_input(
        BenchmarkId::new("resnet18_train_fwd_bwd", &id),
        &x,
        |b, x| {
            b.iter(|| {
                let y = net.forward_t(x, true).unwrap();
                black_box(y.sqr().unwrap().mean_all().unwrap().backward().unwrap())
            })
        },
    );
    group.finish();
}
