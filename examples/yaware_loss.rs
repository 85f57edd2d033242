//! The y-Aware loss on sample data: how the kernel and bandwidth on age change the loss, and
//! its gradient with respect to the embeddings.
//!
//! `cargo run -p yaware-examples --example yaware_loss`

#![allow(clippy::print_stdout)] // an example prints its results

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use yaware_losses::{Bandwidth, InfoNce, Kernel, KernelMetric, YAwareInfoNce};

fn main() -> Result<()> {
    let dev = Device::Cpu;
    // Eight subjects: ages, and two views' embeddings where subjects of similar age are close.
    let ages = [21.0f64, 24.0, 35.0, 38.0, 52.0, 55.0, 68.0, 71.0];
    let n = ages.len();
    let d = 16;
    let embed = |age: f64, view: f64| -> Vec<f64> {
        (0..d)
            .map(|k| ((k as f64 + 1.0) * age / 40.0 + 0.3 * view * (k as f64).cos()).sin())
            .collect()
    };
    let z1: Vec<f64> = ages.iter().flat_map(|&a| embed(a, 0.0)).collect();
    let z2: Vec<f64> = ages.iter().flat_map(|&a| embed(a, 1.0)).collect();
    let z1 =
        Var::from_tensor(&Tensor::from_vec(z1, (n, d), &dev)?.to_dtype(candle_core::DType::F32)?)?;
    let z2 =
        Var::from_tensor(&Tensor::from_vec(z2, (n, d), &dev)?.to_dtype(candle_core::DType::F32)?)?;
    let y = Tensor::new(&ages, &dev)?;

    println!("y-Aware InfoNCE on {n} subjects (embedding dim {d}, τ = 0.1)");
    println!("ages: {ages:?}\n");
    let plain = InfoNce::new(0.1)?.forward(&z1, &z2)?.to_scalar::<f32>()?;
    println!("{:<62} {plain:>10.6}", "InfoNCE (no labels)");
    for kernel in Kernel::ALL {
        for sigma in [1.0f64, 5.0, 20.0] {
            // bandwidth = σ² for a single label feature
            let loss = YAwareInfoNce::new(kernel, Bandwidth::Scalar(sigma * sigma), 0.1)?;
            let value = loss.forward(&z1, &z2, Some(&y))?.to_scalar::<f64>()?;
            println!(
                "{:<62} {value:>10.6}",
                format!("{loss}  [σ = {sigma} years]")
            );
        }
    }

    let mut metric = KernelMetric::new(Kernel::Gaussian, Bandwidth::Silverman)?;
    metric.fit(&y)?;
    let sigma = metric.sqr_bandwidth()?.to_vec2::<f64>()?[0][0];
    let loss = YAwareInfoNce::with_metric(metric, 0.1)?;
    let value = loss.forward(&z1, &z2, Some(&y))?;
    println!(
        "\nSilverman's rule picks σ = {sigma:.3} years: loss {:.6}",
        value.to_scalar::<f64>()?
    );
    let grads = value.backward()?;
    let g = grads.get(&z1).expect("z1 takes part in the loss");
    let norm = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    println!("‖∂loss/∂z1‖ = {norm:.6}");
    Ok(())
}
