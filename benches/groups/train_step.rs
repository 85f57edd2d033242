//! Group `train_step`: one full y-Aware training step of the estimator: both views through the
//! encoder and the head (two passes, as the reference), the y-Aware loss with one label per
//! sample, backward, and an Adam step over every parameter.
//!
//! Model: `Mlp(64 → 256 → 256)` encoder (ReLU between the layers), y-Aware head 256 → 512 → 128,
//! batch 256, f32, Adam (the API page's defaults, lr 1e-4). PyTorch runs the same step in
//! ≈ 27 ms on the reference machine.

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput};
use yaware_backbones::{BackboneConfig, MlpConfig};
use yaware_data::TwoViewBatch;
use yaware_estimator::{HeadKwargs, YAwareConfig, YAwareContrastiveLearning};

use super::normal_vec;

const BATCH: usize = 256;
const IN: usize = 64;

/// Registers the group.
pub(crate) fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    group.sample_size(20);
    let dev = Device::Cpu;
    let config = YAwareConfig {
        encoder: Some(BackboneConfig::Mlp(MlpConfig::new(IN, vec![256, 256]))),
        projection_head_kwargs: Some(HeadKwargs {
            input_dim: Some(256),
            hidden_dim: Some(512),
            output_dim: Some(128),
        }),
        random_state: Some(0),
        enable_progress_bar: false,
        ..Default::default()
    };
    let mut model = YAwareContrastiveLearning::new(config).unwrap();
    model.configure_optimizers(1).unwrap();
    let x = Tensor::from_vec(normal_vec(1, BATCH * IN), (BATCH, IN), &dev).unwrap();
    let n1 = Tensor::from_vec(normal_vec(2, BATCH * IN), (BATCH, IN), &dev).unwrap();
    let n2 = Tensor::from_vec(normal_vec(3, BATCH * IN), (BATCH, IN), &dev).unwrap();
    let age = Tensor::from_vec(normal_vec(4, BATCH), BATCH, &dev)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let batch = TwoViewBatch::new((&x + n1).unwrap(), (&x + n2).unwrap(), Some(age)).unwrap();
    let mut step = || {
        let out = model.training_step(black_box(&batch), 0).unwrap();
        let grads = out.loss.backward().unwrap();
        model.optimizer_step(&grads).unwrap();
    };
    step(); // optimizer moments allocated outside the timing
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(
        BenchmarkId::new("mlp64_256_256_head512_128_adam_f32", BATCH),
        |b| b.iter(&mut step),
    );
    // The parts of the step: forward (both views and the loss), backward, Adam.
    group.bench_function(BenchmarkId::new("part_forward_and_loss", BATCH), |b| {
        b.iter(|| model.training_step(black_box(&batch), 0).unwrap())
    });
    let out = model.training_step(&batch, 0).unwrap();
    group.bench_function(BenchmarkId::new("part_backward", BATCH), |b| {
        b.iter(|| out.loss.backward().unwrap())
    });
    let grads = out.loss.backward().unwrap();
    group.bench_function(BenchmarkId::new("part_adam", BATCH), |b| {
        b.iter(|| model.optimizer_step(black_box(&grads)).unwrap())
    });
    group.finish();
}
