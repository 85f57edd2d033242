//! Whole networks: ResNet-18-3D (in 1, n_embedding 512) on a batch of 8 volumes of 32³, f32,
//! eval-mode forward and train-mode forward + backward, and the eval forward of the network
//! truncated after the stem and after each layer (per-stage split). Throughput is in volumes
//! per second.
//! PyTorch's figures on the same machine come from `benches/compare/torch_bench.py` (see
//! docs/PERFORMANCE.md).

use std::hint::black_box;

use std::cell::OnceCell;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use criterion::{BenchmarkId, Criterion, Throughput};
use yaware_backbones::{Backbone, ResNet, ResNetConfig, ResNetTruncated};

use super::super::normal_vec;

const BATCH: usize = 8;
const SIDE: usize = 32;

/// Registers the whole-network benchmarks.
pub(super) fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("backbones");
    group.sample_size(10);
    // Built on first use: ResNet-18 takes seconds to initialise, and criterion only runs the
    // closures of the selected benchmarks.
    let state: OnceCell<(ResNet, Tensor)> = OnceCell::new();
    let init = || {
        state.get_or_init(|| {
            let varmap = VarMap::new();
            let net = ResNet::new(ResNetConfig::resnet18(), &varmap, 0, DType::F32, &dev).unwrap();
            let shape = (BATCH, 1, SIDE, SIDE, SIDE);
            let n = BATCH * SIDE * SIDE * SIDE;
            let x = Tensor::from_vec(normal_vec(11, n), shape, &dev).unwrap();
            (net, x)
        })
    };
    let id = format!("b{BATCH}_1x{SIDE}^3_emb512");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::new("resnet18_eval_fwd", &id), |b| {
        let (net, x) = init();
        b.iter(|| black_box(net.forward_t(x, false).unwrap()))
    });
    group.bench_function(BenchmarkId::new("resnet18_train_fwd_bwd", &id), |b| {
        let (net, x) = init();
        b.iter(|| {
            let y = net.forward_t(x, true).unwrap();
            black_box(y.sqr().unwrap().mean_all().unwrap().backward().unwrap())
        })
    });
    // The eval forward cut after the stem (depth 0) and after each layer: the differences
    // between consecutive depths split the whole forward by stage (`torch_bench.py
    // resnet_stages` times PyTorch's stages the same way).
    let x = OnceCell::new();
    for depth in 0..=4 {
        let trunc: OnceCell<ResNetTruncated> = OnceCell::new();
        group.bench_function(
            BenchmarkId::new(
                "resnet18_trunc_eval_fwd",
                format!("depth{depth}_b{BATCH}_1x{SIDE}^3"),
            ),
            |b| {
                let x = x.get_or_init(|| {
                    let n = BATCH * SIDE * SIDE * SIDE;
                    let shape = (BATCH, 1, SIDE, SIDE, SIDE);
                    Tensor::from_vec(normal_vec(11, n), shape, &dev).unwrap()
                });
                let net = trunc.get_or_init(|| {
                    let varmap = VarMap::new();
                    let config = ResNetConfig::resnet18();
                    ResNetTruncated::new(config, depth, &varmap, 0, DType::F32, &dev).unwrap()
                });
                b.iter(|| black_box(net.forward_t(x, false).unwrap()))
            },
        );
    }
    group.finish();
}
