//! `conv3d` on the layer shapes of a 3D ResNet-18 (stem k7 s2 p3 + max-pool s2, then layers
//! 1–4), forward and forward + backward, f32.
//!
//! Inputs: batch 8 at 32³ and batch 2 at 64³ (the same number of voxels per batch order of
//! magnitude as a y-Aware training step). Throughput is in FLOPs per iteration, so criterion's
//! "elem/s" reads as FLOP/s: forward `2·N·C_out·oD·oH·oW·C_in·kD·kH·kW`; forward + backward
//! counts 3× that (forward, weight gradient, input gradient), or 2× for the stem, which skips
//! the input gradient (`input_grad: false`) as in the networks. Forward + backward is
//! `conv3d(x, w).sum_all().backward()`, so it also pays candle's autograd bookkeeping: a zeroed
//! gradient buffer plus an add for the output and for each of `x` and `w` (on the 512-channel
//! layers the 28 MB weight gradient makes that bookkeeping cost more than the kernels).

use std::hint::black_box;

use candle_core::{Device, Tensor, Var};
use criterion::{BenchmarkId, Criterion, Throughput};
use yaware_backbones::ops::{Conv3dParams, conv3d};

use super::super::normal_vec;

/// One convolution of the network.
struct Layer {
    name: &'static str,
    c_in: usize,
    c_out: usize,
    /// Input side length as a divisor of the network input (2 → R/2).
    div: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    input_grad: bool,
}

const fn layer(
    name: &'static str,
    c_in: usize,
    c_out: usize,
    div: usize,
    (kernel, stride, padding): (usize, usize, usize),
) -> Layer {
    Layer {
        name,
        c_in,
        c_out,
        div,
        kernel,
        stride,
        padding,
        input_grad: true,
    }
}

const LAYERS: [Layer; 9] = [
    Layer {
        input_grad: false,
        ..layer("stem", 1, 64, 1, (7, 2, 3))
    },
    layer("layer1", 64, 64, 4, (3, 1, 1)),
    layer("layer2_down", 64, 128, 4, (3, 2, 1)),
    layer("layer2", 128, 128, 8, (3, 1, 1)),
    layer("downsample_1x1", 64, 128, 4, (1, 2, 0)),
    layer("layer3_down", 128, 256, 8, (3, 2, 1)),
    layer("layer3", 256, 256, 16, (3, 1, 1)),
    layer("layer4_down", 256, 512, 16, (3, 2, 1)),
    layer("layer4", 512, 512, 32, (3, 1, 1)),
];

/// Registers the conv3d benchmarks of the `backbones` group.
pub(super) fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("backbones");
    group.sample_size(10);
    let dev = Device::Cpu;
    for (res, batch) in [(32usize, 8usize), (64, 2)] {
        for (i, l) in LAYERS.iter().enumerate() {
            let side = res / l.div;
            let (k, s, p) = (l.kernel, l.stride, l.padding);
            let out = (side + 2 * p - k) / s + 1;
            let params = Conv3dParams::new(s, p).with_input_grad(l.input_grad);
            let seed = 10 * i as u64 + res as u64;
            let x = Tensor::from_vec(
                normal_vec(seed, batch * l.c_in * side.pow(3)),
                (batch, l.c_in, side, side, side),
                &dev,
            )
            .unwrap();
            let fan_in = (l.c_in * k.pow(3)) as f32;
            let w: Vec<f32> = normal_vec(seed + 1, l.c_out * l.c_in * k.pow(3))
                .into_iter()
                .map(|v| v * (2.0 / fan_in).sqrt())
                .collect();
            let w =
                Var::from_tensor(&Tensor::from_vec(w, (l.c_out, l.c_in, k, k, k), &dev).unwrap())
                    .unwrap();
            let x = if l.input_grad {
                Var::from_tensor(&x).unwrap().as_tensor().clone()
            } else {
                x
            };
            let flops = 2 * batch * l.c_out * out.pow(3) * l.c_in * k.pow(3);
            let id = format!(
                "r{res}_b{batch}_{}_{}to{}_k{k}s{s}_{side}cube",
                l.name, l.c_in, l.c_out
            );
            group.throughput(Throughput::Elements(flops as u64));
            group.bench_function(BenchmarkId::new("conv3d_fwd_f32", &id), |b| {
                b.iter(|| black_box(conv3d(&x, &w, &params).unwrap()))
            });
            let passes = if l.input_grad { 3 } else { 2 };
            group.throughput(Throughput::Elements((passes * flops) as u64));
            group.bench_function(BenchmarkId::new("conv3d_fwd_bwd_f32", &id), |b| {
                b.iter(|| {
                    let y = conv3d(&x, &w, &params).unwrap();
                    black_box(y.sum_all().unwrap().backward().unwrap())
                })
            });
        }
    }
    group.finish();
}
