//! Parity with the reference (nidl 0.0.2) on every case of the golden files
//! `loss_cases.safetensors` and `kernel_metric.safetensors`.
//!
//! Tolerances (relative, see `golden::check_close`): 1e-10 for cases with f64 embeddings and
//! for `H^±½` and kernel matrices; 1e-5 for cases with f32 embeddings. Nothing is hard-coded:
//! cases, shapes, kernels, bandwidths, dtypes and tolerances are read from the files.
//!
//! Two documented exceptions, both read from the file rather than listed by id:
//! - A case whose reference weights carry rounding noise (the metadata field
//!   `max_dev_weights_raw_vs_direct_differences`, up to ~1.2e-7 when a label and its copy come
//!   out a tiny distance apart through the `‖a‖² + ‖b‖² − 2a·b` expansion) is compared at
//!   `max(rtol, 4 · that noise)`. We reproduce the expansion operation by operation (and match
//!   such cases to 1e-10 whenever `H^{-1/2}` is diagonal), but a full-matrix `H^{-1/2}` comes
//!   from an eigensolver whose last bits differ from LAPACK's, and the cancellation amplifies
//!   them to the size of the noise. See docs/PARITY.md.
//! - When the reference gradient is zero up to rounding (all embeddings identical), ours must
//!   be zero up to rounding as well (`≤ 1e-12 · 1/(τ·N·mean‖z‖)`), not match its noise.

use candle_core::{DType, Var};
use yaware_golden::{Golden, check_close, check_zero, to_f64s};
use yaware_losses::{Bandwidth, Kernel, KernelMetric, YAwareInfoNce, normalize_rows};

const RTOL_F64: f64 = 1e-10;
const RTOL_F32: f64 = 1e-5;

fn kernel_of(g: &Golden, prefix: &str) -> Kernel {
    Kernel::ALL[g.scalar(&format!("{prefix}.kernel_id")) as usize]
}

/// Checks one loss case; returns the worst relative error seen, or the first failure.
fn check_loss_case(g: &Golden, case: &serde_json::Value, fused: bool) -> Result<f64, String> {
    let id = case["id"].as_str().expect("case id");
    let p = |n: &str| format!("{id}.{n}");
    let z1 = Var::from_tensor(&g.tensor(&p("z1"))).unwrap();
    let z2 = Var::from_tensor(&g.tensor(&p("z2"))).unwrap();
    let base = if z1.dtype() == DType::F64 {
        RTOL_F64
    } else {
        RTOL_F32
    };
    let noise = case["max_dev_weights_raw_vs_direct_differences"]
        .as_f64()
        .unwrap_or(0.0);
    let rtol = base.max(4.0 * noise);
    let temperature = g.scalar(&p("temperature"));
    let kernel = kernel_of(g, id);
    let y = g.has(&p("y")).then(|| g.tensor(&p("y")));

    let loss_fn = if case["bandwidth_form"].as_str() == Some("kernel_metric") {
        let rule: Bandwidth = case["bandwidth"]
            .as_str()
            .expect("rule name")
            .parse()
            .unwrap();
        let mut metric = KernelMetric::new(kernel, rule).map_err(|e| format!("{id}: {e}"))?;
        metric
            .fit(&g.tensor(&p("km_fit_y")))
            .map_err(|e| format!("{id}: fit: {e}"))?;
        YAwareInfoNce::with_metric(metric, temperature)
    } else if g.has(&p("bandwidth")) {
        let bw = Bandwidth::from_tensor(&g.tensor(&p("bandwidth"))).unwrap();
        YAwareInfoNce::new(kernel, bw, temperature)
    } else {
        YAwareInfoNce::new(kernel, Bandwidth::default(), temperature)
    }
    .map_err(|e| format!("{id}: building the loss: {e}"))?
    .with_fused_kernel(fused);

    let loss = loss_fn
        .forward(&z1, &z2, y.as_ref())
        .map_err(|e| format!("{id}: forward: {e}"))?;
    let (_, want_dtype, _) = g.values(&p("loss"));
    if loss.dtype() != want_dtype {
        return Err(format!(
            "{id}: loss dtype {:?}, reference {want_dtype:?}",
            loss.dtype()
        ));
    }
    let mut worst = check_close(
        &format!("{id}.loss"),
        &to_f64s(&loss),
        &g.f64s(&p("loss")),
        rtol,
        0.0,
    )?;
    let grads = loss.backward().unwrap();
    let (n, _) = z1.dims2().unwrap();
    let mean_norm = to_f64s(&z1.sqr().unwrap().sum(1).unwrap().sqrt().unwrap())
        .iter()
        .sum::<f64>()
        / n as f64;
    let grad_unit = 1.0 / (temperature * n as f64 * mean_norm);
    for (var, name) in [(&z1, "grad_z1"), (&z2, "grad_z2")] {
        let grad = grads.get(var).ok_or(format!("{id}: no gradient"))?;
        if grad.dtype() != z1.dtype() {
            return Err(format!("{id}: {name} dtype {:?}", grad.dtype()));
        }
        let (got, want) = (to_f64s(grad), g.f64s(&p(name)));
        let w = match check_zero(&p(name), &got, &want, grad_unit, 1e-12) {
            Some(r) => r?,
            None => check_close(&p(name), &got, &want, rtol, 0.1)?,
        };
        worst = worst.max(w);
    }
    let n1 = normalize_rows(&z1).unwrap();
    let n2 = normalize_rows(&z2).unwrap();
    let sim12 = n1.matmul(&n2.t().unwrap()).unwrap();
    worst = worst.max(check_close(
        &p("sim12"),
        &to_f64s(&sim12),
        &g.f64s(&p("sim12")),
        rtol,
        0.1,
    )?);

    if let Some(y) = &y {
        let raw = loss_fn
            .raw_weights(y)
            .map_err(|e| format!("{id}: raw weights: {e}"))?;
        worst = worst.max(check_close(
            &p("weights_raw"),
            &to_f64s(&raw),
            &g.f64s(&p("weights_raw")),
            rtol,
            1e-3,
        )?);
        let norm = loss_fn
            .weights(y)
            .map_err(|e| format!("{id}: weights: {e}"))?;
        worst = worst.max(check_close(
            &p("weights_norm"),
            &to_f64s(&norm),
            &g.f64s(&p("weights_norm")),
            rtol,
            1e-3,
        )?);
        let metric = loss_fn
            .metric()
            .ok_or(format!("{id}: metric not fitted after forward"))?;
        for (got, name) in [
            (metric.sqr_bandwidth().unwrap(), "sqr_bandwidth"),
            (metric.inv_sqr_bandwidth().unwrap(), "inv_sqr_bandwidth"),
        ] {
            worst = worst.max(check_close(
                &p(name),
                &to_f64s(&got),
                &g.f64s(&p(name)),
                RTOL_F64,
                1e-3,
            )?);
        }
    }
    Ok(worst)
}

#[test]
fn every_loss_case_matches_the_reference() {
    let Some(g) = Golden::open("loss_cases.safetensors") else {
        return;
    };
    let cases = g.json("cases");
    let cases = cases.as_array().expect("`cases` is a list");
    assert!(!cases.is_empty(), "no case in loss_cases.safetensors");
    let mut failures = Vec::new();
    let mut worst_by_group = std::collections::BTreeMap::<String, f64>::new();
    for case in cases {
        let group = case["group"].as_str().unwrap_or("?").to_string();
        // The fused CPU kernel and the composition of candle ops (other devices) both match.
        for fused in [true, false] {
            match check_loss_case(&g, case, fused) {
                Ok(w) => {
                    let e = worst_by_group
                        .entry(format!("{group}/fused={fused}"))
                        .or_insert(0.0);
                    *e = e.max(w);
                }
                Err(msg) => failures.push(format!("[{group}, fused={fused}] {msg}")),
            }
        }
    }
    eprintln!("worst relative error per group: {worst_by_group:?}");
    assert!(
        failures.is_empty(),
        "{} of {} checks differ:\n{}",
        failures.len(),
        2 * cases.len(),
        failures.join("\n")
    );
}

fn check_metric_case(g: &Golden, case: &serde_json::Value) -> Result<f64, String> {
    let id = case["id"].as_str().expect("case id");
    let p = |n: &str| format!("{id}.{n}");
    let kernel = kernel_of(g, id);
    let bandwidth = if g.has(&p("bandwidth")) {
        Bandwidth::from_tensor(&g.tensor(&p("bandwidth"))).unwrap()
    } else {
        case["bandwidth_form"]
            .as_str()
            .expect("rule")
            .parse()
            .map_err(|e| format!("{id}: {e}"))?
    };
    let mut metric = KernelMetric::new(kernel, bandwidth).map_err(|e| format!("{id}: {e}"))?;
    let s = metric
        .fit_pairwise(&g.tensor(&p("X")))
        .map_err(|e| format!("{id}: {e}"))?;
    let mut worst = check_close(&p("S"), &to_f64s(&s), &g.f64s(&p("S")), RTOL_F64, 1e-3)?;
    for (got, name) in [
        (metric.sqr_bandwidth().unwrap(), "sqr_bandwidth"),
        (metric.inv_sqr_bandwidth().unwrap(), "inv_sqr_bandwidth"),
    ] {
        worst = worst.max(check_close(
            &p(name),
            &to_f64s(&got),
            &g.f64s(&p(name)),
            RTOL_F64,
            1e-3,
        )?);
    }
    if g.has(&p("X2")) {
        let s2 = metric
            .pairwise(&g.tensor(&p("X2")))
            .map_err(|e| format!("{id}: {e}"))?;
        worst = worst.max(check_close(
            &p("S2"),
            &to_f64s(&s2),
            &g.f64s(&p("S2")),
            RTOL_F64,
            1e-3,
        )?);
    }
    Ok(worst)
}

#[test]
fn every_kernel_metric_case_matches_the_reference() {
    let Some(g) = Golden::open("kernel_metric.safetensors") else {
        return;
    };
    let cases = g.json("cases");
    let cases = cases.as_array().expect("`cases` is a list");
    assert!(!cases.is_empty(), "no case in kernel_metric.safetensors");
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| check_metric_case(&g, c).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn kernel_profiles_match_the_reference() {
    let Some(g) = Golden::open("kernel_metric.safetensors") else {
        return;
    };
    let d = g.f64s("profile.d");
    let profiles: Vec<String> = g
        .names()
        .into_iter()
        .filter(|n| n.starts_with("profile.") && n != "profile.d")
        .collect();
    assert!(!profiles.is_empty(), "no kernel profile in the golden file");
    for name in profiles {
        let kernel: Kernel = name["profile.".len()..].parse().unwrap();
        let got: Vec<f64> = d.iter().map(|&x| kernel.eval(x)).collect();
        check_close(&name, &got, &g.f64s(&name), 1e-15, 0.0).unwrap();
    }
}
