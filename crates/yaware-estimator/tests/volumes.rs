//! The estimator on volumes: a tiny DenseNet-3D fed by a `TwoViewLoader` over an
//! `InMemoryDataset` of `1×16³` volumes with the paper's augmentation preset, `fit`, `transform`,
//! and a checkpoint round trip that carries the batch-norm running statistics and
//! `num_batches_tracked` under the reference's `state_dict` names.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use yaware_backbones::{BackboneConfig, DenseNetConfig};
use yaware_data::augment::{Volume, paper_all_tf};
use yaware_data::{InMemoryDataset, LoaderConfig, TwoViewLoader};
use yaware_estimator::{HeadKwargs, YAwareConfig, YAwareContrastiveLearning};

const N: usize = 8;
const SIDE: usize = 16;
const BATCH: usize = 4;
const EPOCHS: u64 = 2;
const EMBEDDING: usize = 6;

/// Deterministic uniform numbers in [0, 1).
fn uniform(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

fn volumes() -> Vec<Volume> {
    (0..N as u64)
        .map(|i| {
            let data = uniform(100 + i, SIDE * SIDE * SIDE)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            Volume::new([1, SIDE, SIDE, SIDE], data).unwrap()
        })
        .collect()
}

/// A DenseNet small enough for a dev build: growth 2, two blocks of one layer, 4 stem channels.
fn config(dir: Option<PathBuf>) -> YAwareConfig {
    let dense = DenseNetConfig {
        growth_rate: 2,
        block_config: vec![1, 1],
        num_init_features: 4,
        bn_size: 2,
        in_channels: 1,
        n_embedding: EMBEDDING,
        memory_efficient: false,
    };
    YAwareConfig {
        encoder: Some(BackboneConfig::DenseNet(dense)),
        projection_head_kwargs: Some(HeadKwargs {
            input_dim: Some(EMBEDDING),
            hidden_dim: Some(8),
            output_dim: Some(4),
        }),
        max_epochs: Some(EPOCHS),
        random_state: Some(0),
        learning_rate: 1e-2,
        enable_progress_bar: false,
        default_root_dir: dir,
        ..Default::default()
    }
}

fn loader() -> TwoViewLoader<InMemoryDataset, yaware_data::augment::Compose> {
    let ages: Vec<Vec<f64>> = (0..N).map(|i| vec![20.0 + 5.0 * i as f64]).collect();
    let dataset = InMemoryDataset::new(volumes(), Some(ages)).unwrap();
    TwoViewLoader::new(
        dataset,
        paper_all_tf(),
        LoaderConfig {
            batch_size: BATCH,
            seed: 7,
            ..Default::default()
        },
    )
    .unwrap()
}

fn inputs() -> Tensor {
    let v: Vec<Tensor> = volumes()
        .iter()
        .map(|v| v.to_tensor(&Device::Cpu).unwrap())
        .collect();
    Tensor::stack(&v, 0).unwrap()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("yaware-vol-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn as_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

#[test]
fn fit_transform_and_checkpoint_round_trip_on_volumes() {
    let dir = tmpdir("fit");
    let train = loader();
    let mut model = YAwareContrastiveLearning::new(config(Some(dir.clone()))).unwrap();
    let before: HashMap<String, Vec<f64>> = model
        .state_dict()
        .into_iter()
        .map(|(n, v)| (n, as_f64(v.as_tensor())))
        .collect();
    model.fit(&train, None).unwrap();

    // Every step logged a finite loss; the trainer ran every batch of every epoch.
    let steps = EPOCHS * train.len() as u64;
    assert_eq!(model.trainer_state().global_step, steps);
    let loss = model.trainer_state().metric("loss/train").unwrap();
    assert!(loss.is_finite(), "loss {loss}");

    // transform → (N, n_embedding), finite.
    let x = inputs();
    let feats = model
        .transform([x.narrow(0, 0, 5).unwrap(), x.narrow(0, 5, N - 5).unwrap()])
        .unwrap();
    assert_eq!(feats.dims(), &[N, EMBEDDING]);
    assert!(as_f64(&feats).iter().all(|v| v.is_finite()));

    // Batch norm buffers under the reference names, updated by training: every train-mode
    // forward (two views per step) counts one batch, as PyTorch's `num_batches_tracked`.
    let sd: HashMap<String, Tensor> = model
        .state_dict()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let counters: Vec<&String> = sd
        .keys()
        .filter(|k| k.ends_with(".num_batches_tracked"))
        .collect();
    assert!(
        sd.contains_key("encoder.features.norm0.num_batches_tracked"),
        "{counters:?}"
    );
    for k in &counters {
        let t = &sd[*k];
        assert_eq!(t.dtype(), DType::I64, "{k}");
        assert_eq!(t.to_scalar::<i64>().unwrap(), 2 * steps as i64, "{k}");
        let stem = k.trim_end_matches("num_batches_tracked");
        for buf in ["running_mean", "running_var"] {
            let name = format!("{stem}{buf}");
            assert_ne!(as_f64(&sd[&name]), before[&name], "{name} never updated");
        }
    }

    // The last checkpoint holds the same names and values; a fresh model (another seed) loads
    // it and embeds exactly as the trained one.
    let ckpt = dir.join("checkpoints").join("last.safetensors");
    let saved = candle_core::safetensors::load(&ckpt, &Device::Cpu).unwrap();
    for (k, t) in &sd {
        let s = saved.get(k).unwrap_or_else(|| panic!("`{k}` not saved"));
        assert_eq!(s.dtype(), t.dtype(), "{k}");
        assert_eq!(as_f64(s), as_f64(t), "{k}");
    }
    let mut fresh = YAwareContrastiveLearning::new(YAwareConfig {
        random_state: Some(1),
        ..config(None)
    })
    .unwrap();
    assert_ne!(
        as_f64(fresh.state_dict()[0].1.as_tensor()),
        as_f64(&sd[&fresh.state_dict()[0].0])
    );
    fresh.load_weights(&ckpt).unwrap();
    for (k, v) in fresh.state_dict() {
        assert_eq!(v.dtype(), sd[&k].dtype(), "{k}");
        assert_eq!(as_f64(v.as_tensor()), as_f64(&sd[&k]), "{k}");
    }
    let again = fresh
        .transform([x.narrow(0, 0, 5).unwrap(), x.narrow(0, 5, N - 5).unwrap()])
        .unwrap();
    assert_eq!(as_f64(&again), as_f64(&feats));
    let _ = std::fs::remove_dir_all(&dir);
}
