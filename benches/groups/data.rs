//! Group `data`: each implemented augmentation on one 1 × 121 × 145 × 121 volume (the OpenBHB
//! VBM shape), throughput in voxels per second; and the two-view loader's throughput in samples
//! per second.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use yaware_data::augment::{
    CropOrPad, EraseValue, KeepShape, PadMode, RandomErasing, RandomFlip, RandomGaussianBlur,
    RandomGaussianNoise, RandomResizedCrop, RandomRotation, RobustRescaling, SampleRng, Transform,
    Volume, ZNormalization, paper_all_tf, paper_cutout,
};

use yaware_data::{InMemoryDataset, LoaderConfig, TwoViewLoader};

use super::normal_vec;

const SHAPE: [usize; 4] = [1, 121, 145, 121];

/// Registers the group.
pub(crate) fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("data");
    let n: usize = SHAPE.iter().product();
    let volume = Volume::new(SHAPE, normal_vec(11, n)).unwrap();
    let transforms: Vec<(&str, Box<dyn Transform>)> = vec![
        (
            "flip_3_axes",
            Box::new(RandomFlip::new(vec![0, 1, 2], 1.0).unwrap()),
        ),
        ("gaussian_noise", Box::new(RandomGaussianNoise::default())),
        (
            "erasing_mean",
            Box::new(RandomErasing::new((0.02, 0.33), (1.0, 3.0), 1, EraseValue::Mean).unwrap()),
        ),
        ("z_normalization", Box::new(ZNormalization::default())),
        (
            "crop_or_pad_128",
            Box::new(CropOrPad::new([128, 128, 128], 0.0).unwrap()),
        ),
        (
            "crop_or_pad_128_reflect",
            Box::new(CropOrPad::with_mode([128, 128, 128], PadMode::Reflect).unwrap()),
        ),
        (
            "gaussian_blur_sigma1",
            Box::new(RandomGaussianBlur::new(&[1.0, 1.0]).unwrap()),
        ),
        (
            "rotation_axes01",
            Box::new(RandomRotation::new(vec![(0, 1)], 1.0, KeepShape::CropOrPad).unwrap()),
        ),
        ("robust_rescaling", Box::new(RobustRescaling::default())),
        (
            "random_resized_crop",
            Box::new(RandomResizedCrop::new([121, 145, 121], (0.08, 1.0), (0.75, 1.33)).unwrap()),
        ),
        ("paper_all_tf", Box::new(paper_all_tf())),
        ("paper_cutout", Box::new(paper_cutout())),
    ];
    group.throughput(Throughput::Elements(n as u64));
    for (name, t) in transforms {
        let mut i = 0u64;
        group.bench_function(BenchmarkId::new(name, "1x121x145x121"), |b| {
            b.iter(|| {
                i += 1;
                black_box(
                    t.apply(volume.clone(), &mut SampleRng::new(0, 0, i, 0))
                        .unwrap(),
                )
            })
        });
    }
    group.bench_function(BenchmarkId::new("clone_only", "1x121x145x121"), |b| {
        b.iter(|| black_box(volume.clone()))
    });

    // Loader throughput: one epoch of 16 in-memory samples, two views each with the paper's
    // recipe, batches of 8, prefetch 2. Throughput in two-view samples per second.
    let samples = 16u64;
    let volumes: Vec<Volume> = (0..samples)
        .map(|i| Volume::new(SHAPE, normal_vec(100 + i, n)).unwrap())
        .collect();
    let targets = Some((0..samples).map(|i| vec![20.0 + i as f64]).collect());
    let dataset = InMemoryDataset::new(volumes, targets).unwrap();
    let config = LoaderConfig {
        batch_size: 8,
        ..Default::default()
    };
    let loader = TwoViewLoader::new(dataset, paper_all_tf(), config).unwrap();
    group.sample_size(10);
    group.throughput(Throughput::Elements(samples));
    let mut epoch = 0;
    group.bench_function(
        BenchmarkId::new("loader_paper_all_tf_epoch", "16x1x121x145x121_b8"),
        |b| {
            b.iter(|| {
                epoch += 1;
                for batch in loader.epoch(epoch) {
                    black_box(batch.unwrap());
                }
            })
        },
    );
    group.finish();
}
