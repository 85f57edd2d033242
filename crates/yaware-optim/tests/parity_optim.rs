//! Parity of SGD / Adam / AdamW with PyTorch on every case of `optim_cases.safetensors`:
//! parameters after each step and the final state, at 1e-12 relative (entries are compared
//! relative to `max(|x|, 1e-3·max|X|)`), for Adam/AdamW through both the fused CPU kernel and
//! the tensor-op path (which must agree bit for bit); and resume: saving after half the steps
//! and loading into fresh objects continues bit for bit like an uninterrupted run.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde_json::Value;
use yaware_golden::{Golden, check_close, to_f64s};
use yaware_optim::{Adam, AdamConfig, AdamW, AdamWConfig, Optimizer, ParamGroup, Sgd, SgdConfig};

const RTOL: f64 = 1e-12;

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("group field `{key}`: {v}"))
}

/// Builds the case's optimizer over `params` (name → var) from its metadata: one group per
/// entry of `param_groups`, each with its own hyper-parameters.
fn build(case: &Value, params: &HashMap<String, Var>, fused: bool) -> Box<dyn Optimizer> {
    let pgs = case["param_groups"].as_array().expect("param_groups");
    let group = |i: usize, pg: &Value| {
        let name = pg["name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("group{i}"));
        let vars = pg["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let p = p.as_str().unwrap().to_string();
                let v = params[&p].clone();
                (p, v)
            })
            .collect();
        ParamGroup::new(name, vars)
    };
    let betas = |pg: &Value| {
        let b = pg["betas"].as_array().unwrap();
        (b[0].as_f64().unwrap(), b[1].as_f64().unwrap())
    };
    let adam = |pg: &Value| AdamConfig {
        lr: f(pg, "lr"),
        betas: betas(pg),
        eps: f(pg, "eps"),
        weight_decay: f(pg, "weight_decay"),
        amsgrad: pg["amsgrad"].as_bool().unwrap(),
    };
    let groups = pgs.iter().enumerate();
    match case["optimizer"].as_str().unwrap() {
        "SGD" => Box::new(
            Sgd::with_group_configs(
                groups
                    .map(|(i, pg)| {
                        let c = SgdConfig {
                            lr: f(pg, "lr"),
                            momentum: f(pg, "momentum"),
                            dampening: f(pg, "dampening"),
                            nesterov: pg["nesterov"].as_bool().unwrap(),
                            weight_decay: f(pg, "weight_decay"),
                        };
                        (group(i, pg), c)
                    })
                    .collect(),
            )
            .unwrap(),
        ),
        "Adam" => {
            let mut opt =
                Adam::with_group_configs(groups.map(|(i, pg)| (group(i, pg), adam(pg))).collect())
                    .unwrap();
            opt.set_fused(fused);
            Box::new(opt)
        }
        "AdamW" => {
            let configs = groups
                .map(|(i, pg)| {
                    let a = adam(pg);
                    let c = AdamWConfig {
                        lr: a.lr,
                        betas: a.betas,
                        eps: a.eps,
                        weight_decay: a.weight_decay,
                        amsgrad: a.amsgrad,
                    };
                    (group(i, pg), c)
                })
                .collect();
            let mut opt = AdamW::with_group_configs(configs).unwrap();
            opt.set_fused(fused);
            Box::new(opt)
        }
        other => panic!("unknown optimizer {other}"),
    }
}

/// Parameter names of the file (`param_shapes` metadata).
fn param_names(g: &Golden) -> Vec<String> {
    let shapes = g.json("param_shapes");
    let mut names: Vec<String> = shapes
        .as_object()
        .expect("param_shapes")
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

fn fresh_params(g: &Golden, id: &str, names: &[String]) -> HashMap<String, Var> {
    names
        .iter()
        .map(|n| {
            (
                n.clone(),
                Var::from_tensor(&g.tensor(&format!("{id}.init.{n}"))).unwrap(),
            )
        })
        .collect()
}

fn grads_at(
    g: &Golden,
    id: &str,
    names: &[String],
    params: &HashMap<String, Var>,
    k: usize,
) -> GradStore {
    let mut store = GradStore::default();
    for n in names {
        let all = g.tensor(&format!("{id}.grads.{n}"));
        store.insert(params[n].as_tensor(), all.get(k).unwrap());
    }
    store
}

/// Runs one case; returns the final parameters.
fn check_case(
    g: &Golden,
    case: &Value,
    names: &[String],
    fused: bool,
) -> Result<Vec<Vec<f64>>, String> {
    let id = case["id"].as_str().unwrap();
    let n_steps = case["n_steps"].as_u64().unwrap() as usize;
    let params = fresh_params(g, id, names);
    let mut opt = build(case, &params, fused);
    for k in 0..n_steps {
        opt.step(&grads_at(g, id, names, &params, k))
            .map_err(|e| format!("{id}: {e}"))?;
        for n in names {
            let want = g.tensor(&format!("{id}.params.{n}")).get(k).unwrap();
            check_close(
                &format!("{id}.{n} after step {}", k + 1),
                &to_f64s(&params[n]),
                &to_f64s(&want),
                RTOL,
                1e-3,
            )?;
        }
    }
    // Final state: every `state.<p>.<s>` tensor of the file.
    let state = opt.state_tensors().map_err(|e| e.to_string())?;
    let prefix = format!("{id}.state.");
    for name in g.names().into_iter().filter(|n| n.starts_with(&prefix)) {
        let rest = &name[prefix.len()..]; // "<p>.<state>"
        let ours = state
            .iter()
            .find(|(k, _)| k.ends_with(&format!(".{rest}")))
            .map(|(_, t)| t)
            .ok_or(format!("{id}: no state `{rest}`"))?;
        check_close(
            &format!("{id}.state.{rest}"),
            &to_f64s(ours),
            &g.f64s(&name),
            RTOL,
            1e-3,
        )?;
    }
    // Nothing more than the file's state (plus the per-group lr).
    let extra: Vec<&String> = state
        .keys()
        .filter(|k| !k.ends_with(".lr"))
        .filter(|k| !g.has(&format!("{prefix}{}", k.split_once('.').unwrap().1)))
        .collect();
    if !extra.is_empty() {
        return Err(format!(
            "{id}: state the reference does not keep: {extra:?}"
        ));
    }
    Ok(names.iter().map(|n| to_f64s(&params[n])).collect())
}

#[test]
fn every_optimizer_case_matches_pytorch() {
    let Some(g) = Golden::open("optim_cases.safetensors") else {
        return;
    };
    let names = param_names(&g);
    let cases = g.json("cases");
    let cases = cases.as_array().expect("cases");
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        match (
            check_case(&g, case, &names, true),
            check_case(&g, case, &names, false),
        ) {
            (Ok(fused), Ok(plain)) if fused != plain => {
                failures.push(format!("{}: fused and tensor-op paths differ", case["id"]))
            }
            (Ok(_), Ok(_)) => {}
            (Err(e), _) | (_, Err(e)) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn resuming_from_saved_state_continues_bit_for_bit() {
    let Some(g) = Golden::open("optim_cases.safetensors") else {
        return;
    };
    let names = param_names(&g);
    let dir = std::env::temp_dir().join(format!("yaware-optim-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for case in g.json("cases").as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let n_steps = case["n_steps"].as_u64().unwrap() as usize;
        let half = n_steps / 2;
        // Uninterrupted.
        let params = fresh_params(&g, id, &names);
        let mut opt = build(case, &params, true);
        for k in 0..n_steps {
            opt.step(&grads_at(&g, id, &names, &params, k)).unwrap();
        }
        // Interrupted after `half` steps: save, rebuild everything, load, continue.
        let params2 = fresh_params(&g, id, &names);
        let mut opt2 = build(case, &params2, true);
        for k in 0..half {
            opt2.step(&grads_at(&g, id, &names, &params2, k)).unwrap();
        }
        let path = dir.join(format!("{id}.safetensors"));
        opt2.save_state(&path).unwrap();
        let saved: HashMap<String, Tensor> = params2
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
            .collect();
        let params3: HashMap<String, Var> = saved
            .iter()
            .map(|(n, t)| (n.clone(), Var::from_tensor(t).unwrap()))
            .collect();
        let mut opt3 = build(case, &params3, true);
        opt3.load_state(&path).unwrap();
        for k in half..n_steps {
            opt3.step(&grads_at(&g, id, &names, &params3, k)).unwrap();
        }
        for n in &names {
            assert_eq!(
                to_f64s(&params[n]),
                to_f64s(&params3[n]),
                "{id}.{n}: resumed run differs"
            );
        }
        assert_eq!(params[&names[0]].dtype(), DType::F64);
    }
    std::fs::remove_dir_all(&dir).ok();
}
