//! Fitting `YAwareContrastiveLearning` on synthetic tabular "ROI" features whose structure
//! follows age, as the reference's OpenBHB tabular example: two augmented views per subject
//! (random feature masking and noise), an MLP encoder, early stopping and checkpoints in a run
//! directory, then a ridge probe of age on the learned features.
//!
//! `cargo run -p yaware-examples --example yaware_fit`

#![allow(clippy::print_stdout)] // an example prints its results

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use yaware_backbones::{BackboneConfig, MlpConfig};
use yaware_data::TwoViewBatch;
use yaware_estimator::probing::{ModelProbing, Probe, feature_rows, target_values};
use yaware_estimator::{
    BandwidthSpec, EarlyStopping, HeadKwargs, LearningRateMonitor, Metric, MetricsCallback, Mode,
    ModelCheckpoint, YAwareConfig, YAwareContrastiveLearning,
};

const FEATURES: usize = 32;

/// A small deterministic generator (xorshift), uniform in [0, 1).
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// `n` subjects: ages in [20, 80) and features that are smooth functions of age plus noise.
fn subjects(n: usize, rng: &mut Rng) -> (Vec<Vec<f64>>, Vec<f64>) {
    let ages: Vec<f64> = (0..n).map(|_| 20.0 + 60.0 * rng.uniform()).collect();
    let x = ages
        .iter()
        .map(|a| {
            (0..FEATURES)
                .map(|k| ((k as f64 + 1.0) * a / 50.0).sin() + 0.3 * rng.normal())
                .collect()
        })
        .collect();
    (x, ages)
}

/// One augmented view: keep each feature with probability 0.8, then add N(0, 0.1²) noise.
fn view(x: &[Vec<f64>], rng: &mut Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() * FEATURES);
    for v in x.iter().flatten() {
        let kept = if rng.uniform() < 0.8 { *v } else { 0.0 };
        out.push((kept + 0.1 * rng.normal()) as f32);
    }
    out
}

/// Two-view batches of `batch` subjects with their ages (a fixed set of views per call).
fn two_view_batches(
    x: &[Vec<f64>],
    ages: &[f64],
    batch: usize,
    rng: &mut Rng,
) -> Result<Vec<TwoViewBatch>> {
    let dev = Device::Cpu;
    x.chunks(batch)
        .zip(ages.chunks(batch))
        .map(|(xs, ys)| {
            let n = xs.len();
            let v1 = Tensor::from_vec(view(xs, rng), (n, FEATURES), &dev)?;
            let v2 = Tensor::from_vec(view(xs, rng), (n, FEATURES), &dev)?;
            let y = Tensor::from_vec(ys.iter().map(|a| *a as f32).collect::<Vec<_>>(), n, &dev)?;
            Ok(TwoViewBatch::new(v1, v2, Some(y))?)
        })
        .collect()
}

fn features(x: &[Vec<f64>]) -> Result<Vec<Tensor>> {
    let flat: Vec<f32> = x.iter().flatten().map(|v| *v as f32).collect();
    let t = Tensor::from_vec(flat, (x.len(), FEATURES), &Device::Cpu)?;
    Ok((0..x.len().div_ceil(64))
        .map(|k| t.narrow(0, 64 * k, 64.min(x.len() - 64 * k)))
        .collect::<candle_core::Result<_>>()?)
}

fn main() -> Result<()> {
    let mut rng = Rng(0x5EED);
    let (x_train, age_train) = subjects(512, &mut rng);
    let (x_test, age_test) = subjects(256, &mut rng);
    let train = two_view_batches(&x_train, &age_train, 64, &mut rng)?;
    let val = two_view_batches(&x_test, &age_test, 64, &mut rng)?;

    let run_dir = std::env::temp_dir().join("yaware_fit_example");
    let config = YAwareConfig {
        encoder: Some(BackboneConfig::Mlp(MlpConfig::new(FEATURES, vec![64, 32]))),
        projection_head_kwargs: Some(HeadKwargs {
            input_dim: Some(32),
            hidden_dim: Some(32),
            output_dim: Some(32),
        }),
        bandwidth: BandwidthSpec::Scalar(25.0), // σ = 5 years
        learning_rate: 1e-3,
        max_epochs: Some(30),
        random_state: Some(42),
        default_root_dir: Some(run_dir.clone()),
        ..Default::default()
    };
    let mut model = YAwareContrastiveLearning::builder(config)
        .callback(Box::new(EarlyStopping::new(
            "loss/val",
            Mode::Min,
            5,
            1e-4,
        )?))
        .callback(Box::new(ModelCheckpoint::new(
            run_dir.join("checkpoints"),
            "loss/val",
            Mode::Min,
            2,
        )))
        .callback(Box::new(LearningRateMonitor))
        .callback(Box::new(MetricsCallback::new(
            vec![
                Metric::Alignment,
                Metric::Uniformity,
                Metric::ContrastiveAccuracy(1),
            ],
            None,
            true,
        )?))
        .build()?;

    // The features of a randomly initialised encoder, as a baseline for the probe.
    let probe = |model: &YAwareContrastiveLearning| -> Result<f64> {
        let ftr = feature_rows(&model.transform_step(&Tensor::cat(&features(&x_train)?, 0)?, 0)?)?;
        let fte = feature_rows(&model.transform_step(&Tensor::cat(&features(&x_test)?, 0)?, 0)?)?;
        let mut p = ModelProbing::new(Probe::Ridge { alpha: 1.0 })?;
        p.fit(&ftr, &age_train)?;
        let age =
            target_values(&Tensor::new(age_test.as_slice(), &Device::Cpu)?.to_dtype(DType::F64)?)?;
        Ok(p.score(&fte, &age)?["mae"])
    };

    let baseline = probe(&model)?;
    model.fit(&train, Some(&val))?;
    let state = model.trainer_state();
    println!(
        "trained {} epochs, {} steps; run directory {}",
        state.epoch,
        state.global_step,
        run_dir.display()
    );
    for (epoch, loss) in &model.history().val_loss {
        let align = state
            .records
            .iter()
            .find(|r| r.epoch == *epoch && r.name == "alignment/val")
            .map_or(f64::NAN, |r| r.value);
        println!("epoch {epoch:2}: loss/val {loss:.4}  alignment/val {align:.4}");
    }
    println!(
        "age MAE of a ridge probe: {baseline:.2} years on the initial features, {:.2} after training",
        probe(&model)?
    );
    let z = model.transform(features(&x_test)?)?;
    println!("transform: {:?}", z.dims());
    Ok(())
}
