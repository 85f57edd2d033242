//! Group `train_step`: one full y-Aware training step of the estimator: both views through the
//! encoder and the head (two passes, as the reference), the y-Aware loss with one label per
//! sample, backward, and an Adam step over every parameter.
//!
//! Model: `Mlp(64 → 256 → 256)` encoder (ReLU between the layers), y-Aware head 256 → 512 → 128,
//! batch 256, f32, Adam (the API page's defaults, lr 1e-4).
//!
//! Second model: ResNet-18-3D encoder (in 1, n_embedding 512), head 512 → 512 → 128, batch 8 of
//! `1×32³` volumes, f32, Adam, with the same parts. Ten samples, ~20 s of measurement per
//! function.
//!
//! PyTorch runs the same steps in `benches/compare/torch_bench.py` (figures in
//! docs/PERFORMANCE.md).
//!
//! Threads: with candle's defaults the spinning element-wise pool competes with gemm's rayon
//! threads; on few or busy cores `CANDLE_NUM_THREADS=1` halves the MLP step or better (see
//! yaware-estimator's crate docs, "CPU threads", for the measurements).

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput};
use yaware_backbones::{BackboneConfig, MlpConfig, ResNetConfig};
use yaware_data::TwoViewBatch;
use yaware_estimator::{HeadKwargs, YAwareConfig, YAwareContrastiveLearning};

use super::normal_vec;

const BATCH: usize = 256;
const IN: usize = 64;

/// Volumes of the ResNet step: batch, side.
const VOL_BATCH: usize = 8;
const SIDE: usize = 32;

/// A model and a labelled batch `x + noise` for each view; `shape` is one sample's shape.
fn setup(
    encoder: BackboneConfig,
    width: usize,
    shape: &[usize],
    batch: usize,
) -> (YAwareContrastiveLearning, TwoViewBatch) {
    let dev = Device::Cpu;
    let config = YAwareConfig {
        encoder: Some(encoder),
        projection_head_kwargs: Some(HeadKwargs {
            input_dim: Some(width),
            hidden_dim: Some(512),
            output_dim: Some(128),
        }),
        random_state: Some(0),
        enable_progress_bar: false,
        ..Default::default()
    };
    let mut model = YAwareContrastiveLearning::new(config).unwrap();
    model.configure_optimizers(1).unwrap();
    let mut dims = vec![batch];
    dims.extend_from_slice(shape);
    let len: usize = dims.iter().product();
    let t = |seed| Tensor::from_vec(normal_vec(seed, len), dims.as_slice(), &dev).unwrap();
    let x = t(1);
    let age = Tensor::from_vec(normal_vec(4, batch), batch, &dev)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let batch = TwoViewBatch::new((&x + t(2)).unwrap(), (&x + t(3)).unwrap(), Some(age)).unwrap();
    (model, batch)
}

/// Registers the group.
pub(crate) fn bench(c: &mut Criterion) {
    mlp(c);
    loss_paths(c);
    resnet18(c);
}

/// The step's loss alone (N = 256 per view, D = 128, one label, the estimator's default
/// Gaussian kernel with bandwidth 1, τ 0.1), forward + backward, through the fused CPU kernel
/// (the estimator's path) and through composed candle ops.
fn loss_paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    group.sample_size(20);
    let dev = Device::Cpu;
    let d = 128;
    let var = |seed| {
        candle_core::Var::from_tensor(
            &Tensor::from_vec(normal_vec(seed, BATCH * d), (BATCH, d), &dev).unwrap(),
        )
        .unwrap()
    };
    let (z1, z2) = (var(11), var(12));
    let y = Tensor::from_vec(normal_vec(13, BATCH), BATCH, &dev).unwrap();
    for fused in [true, false] {
        let loss = yaware_losses::YAwareInfoNce::new(
            yaware_losses::Kernel::Gaussian,
            yaware_losses::Bandwidth::Scalar(1.0),
            0.1,
        )
        .unwrap()
        .with_fused_kernel(fused);
        let name = if fused { "loss_fused" } else { "loss_composed" };
        group.bench_function(BenchmarkId::new(name, BATCH), |b| {
            b.iter(|| {
                let l = loss.forward(&z1, &z2, Some(black_box(&y))).unwrap();
                black_box(l.backward().unwrap())
            })
        });
    }
    group.finish();
}

fn mlp(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    group.sample_size(20);
    let encoder = BackboneConfig::Mlp(MlpConfig::new(IN, vec![256, 256]));
    let (mut model, batch) = setup(encoder, 256, &[IN], BATCH);
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

fn resnet18(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(20));
    group.warm_up_time(std::time::Duration::from_secs(2));
    // Built on first use: ResNet-18 takes seconds to initialise, and criterion only runs the
    // closures of the selected functions.
    let mut state: Option<(YAwareContrastiveLearning, TwoViewBatch)> = None;
    let init = |state: &mut Option<(YAwareContrastiveLearning, TwoViewBatch)>| {
        if state.is_none() {
            let encoder = BackboneConfig::ResNet(ResNetConfig::resnet18());
            let (mut model, batch) = setup(encoder, 512, &[1, SIDE, SIDE, SIDE], VOL_BATCH);
            // Optimizer moments allocated outside the timing.
            let out = model.training_step(&batch, 0).unwrap();
            let grads = out.loss.backward().unwrap();
            model.optimizer_step(&grads).unwrap();
            *state = Some((model, batch));
        }
    };
    group.throughput(Throughput::Elements(VOL_BATCH as u64));
    let id = format!("b{VOL_BATCH}_1x{SIDE}^3");
    group.bench_function(
        BenchmarkId::new("resnet18_head512_128_adam_f32", &id),
        |b| {
            init(&mut state);
            let (model, batch) = state.as_mut().unwrap();
            b.iter(|| {
                let out = model.training_step(black_box(batch), 0).unwrap();
                let grads = out.loss.backward().unwrap();
                model.optimizer_step(&grads).unwrap();
            })
        },
    );
    group.bench_function(
        BenchmarkId::new("resnet18_part_forward_and_loss", &id),
        |b| {
            init(&mut state);
            let (model, batch) = state.as_ref().unwrap();
            b.iter(|| model.training_step(black_box(batch), 0).unwrap())
        },
    );
    group.bench_function(BenchmarkId::new("resnet18_part_backward", &id), |b| {
        init(&mut state);
        let (model, batch) = state.as_ref().unwrap();
        let out = model.training_step(batch, 0).unwrap();
        b.iter(|| out.loss.backward().unwrap())
    });
    group.bench_function(BenchmarkId::new("resnet18_part_adam", &id), |b| {
        init(&mut state);
        let (model, batch) = state.as_mut().unwrap();
        let grads = model
            .training_step(batch, 0)
            .unwrap()
            .loss
            .backward()
            .unwrap();
        b.iter(|| model.optimizer_step(black_box(&grads)).unwrap())
    });
    group.finish();
}
