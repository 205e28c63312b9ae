//! Every sampler against diffusers, case by case (reference/harness_schedulers.py):
//! timesteps, sigmas, init_noise_sigma, the model input and the sample after
//! every step of a whole run with the stand-in model eps(x) = FIXED + 0.1 x,
//! and add_noise. Stochastic samplers draw from a CPU generator seeded 8,
//! as diffusers' run did.

use std::collections::HashMap;

use sd_core::parity::{check_close, read_tensors, reference_dir, Tolerance};
use sd_core::rng::CpuGenerator;
use sd_scheduler::{build, Ddim, SamplerKind, Scheduler, SchedulerConfig};
use serde_json::Value;
use tch::{Kind, Tensor};

/// f32 arithmetic in the same order as diffusers: a few ulps, compounded
/// over up to 50 steps of samples of magnitude up to ~15.
const TOL: Tolerance = Tolerance {
    atol: 2e-5,
    rtol: 2e-5,
};

struct Reference {
    tensors: HashMap<String, Tensor>,
    cases: Vec<Value>,
}

fn reference() -> Reference {
    let dir = reference_dir().join("fixtures/outputs");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("schedulers.json")).unwrap())
            .unwrap();
    Reference {
        tensors: read_tensors(dir.join("schedulers.safetensors")).unwrap(),
        cases: meta["cases"].as_array().unwrap().clone(),
    }
}

fn scheduler_for(case: &Value) -> sd_scheduler::Result<Box<dyn Scheduler>> {
    let config = SchedulerConfig::from_json_str(&case["config"].to_string())?;
    let kind: SamplerKind = case["sampler"].as_str().unwrap().parse()?;
    match case["step_kwargs"].get("eta").and_then(Value::as_f64) {
        Some(eta) => Ok(Box::new(Ddim::new(&config)?.with_eta(eta)?)),
        None => build(kind, &config),
    }
}

/// Runs one case; returns a description of the first mismatch.
fn run_case(reference: &Reference, case: &Value) -> Result<(), String> {
    let key = case["key"].as_str().unwrap();
    let t = |name: &str| {
        reference
            .tensors
            .get(&format!("{key}.{name}"))
            .map(Tensor::shallow_clone)
    };
    let steps = case["steps"].as_u64().unwrap() as usize;
    let mut scheduler = scheduler_for(case).map_err(|e| format!("build: {e}"))?;
    scheduler
        .set_timesteps(steps)
        .map_err(|e| format!("set_timesteps: {e}"))?;

    // 1. the schedule
    let timesteps = Tensor::from_slice(scheduler.timesteps());
    check_close(
        "timesteps",
        &timesteps,
        &t("timesteps").unwrap(),
        Tolerance::abs(1e-3),
    )
    .map_err(|e| e.to_string())?;
    if let (Some(expected), Some(sigmas)) = (t("sigmas"), scheduler.sigmas()) {
        check_close(
            "sigmas",
            &Tensor::from_slice(sigmas),
            &expected,
            Tolerance {
                atol: 1e-6,
                rtol: 1e-6,
            },
        )
        .map_err(|e| e.to_string())?;
    }
    let init = t("init_noise_sigma").unwrap().double_value(&[]);
    if (scheduler.init_noise_sigma() - init).abs() > 1e-6 * init.max(1.0) {
        return Err(format!(
            "init_noise_sigma {} vs {init}",
            scheduler.init_noise_sigma()
        ));
    }

    // 2. the whole run (half-precision cases draw and run in their dtype, and
    //    must agree bit for bit: the bound is below one ulp from |x| = 1)
    let kind = sd_core::device::parse_kind(case["dtype"].as_str().unwrap_or("f32")).unwrap();
    let tol = match kind {
        Kind::Half => Tolerance::abs(4e-4),
        Kind::BFloat16 => Tolerance::abs(3e-3),
        _ => TOL,
    };
    let check = |what: &str, actual: &Tensor, expected: &Tensor| {
        let f32 = |t: &Tensor| t.to_kind(Kind::Float);
        check_close(what, &f32(actual), &f32(expected), tol).map_err(|e| e.to_string())
    };
    let shape = [1i64, 4, 4, 4];
    let mut generator = CpuGenerator::new(7).unwrap();
    let mut sample = generator.randn_as(&shape, kind).unwrap() * scheduler.init_noise_sigma();
    let fixed = generator.randn_as(&shape, kind).unwrap();
    let trace = t("trace").unwrap();
    let inputs = t("model_inputs").unwrap();
    check("start", &sample, &trace.get(0))?;
    let mut noise = CpuGenerator::new(8).unwrap();
    for i in 0..scheduler.timesteps().len() {
        let x = scheduler
            .scale_model_input(&sample, i)
            .map_err(|e| e.to_string())?;
        check(&format!("model input {i}"), &x, &inputs.get(i as i64))?;
        let output = &fixed + &x * 0.1;
        sample = scheduler
            .step(&output, i, &sample, &mut noise)
            .map_err(|e| e.to_string())?;
        check(
            &format!("sample after step {i}"),
            &sample,
            &trace.get(i as i64 + 1),
        )?;
    }

    // 3. the forward process at step index 2
    if let Some(expected) = t("add_noise.noisy") {
        let noisy = scheduler
            .add_noise(
                &t("add_noise.original").unwrap(),
                &t("add_noise.noise").unwrap(),
                2,
            )
            .map_err(|e| e.to_string())?;
        check("add_noise", &noisy, &expected)?;
    }
    Ok(())
}

#[test]
fn every_sampler_matches_diffusers_traces() {
    let reference = reference();
    let mut failures = Vec::new();
    let (mut compared, mut rejected) = (0, 0);
    for case in &reference.cases {
        let key = case["key"].as_str().unwrap();
        match case.get("error").and_then(Value::as_str) {
            // diffusers refuses these; so must we (at build, schedule or first step).
            Some(error) if error.contains("prediction_type") => {
                let outcome = scheduler_for(case)
                    .and_then(|mut s| s.set_timesteps(case["steps"].as_u64().unwrap() as usize));
                if outcome.is_ok() {
                    failures.push(format!(
                        "{key}: diffusers raised '{error}', this accepted it"
                    ));
                }
                rejected += 1;
            }
            // An IndexError inside diffusers itself (Karras sigmas on the cosine
            // schedule): there is no reference to compare with.
            Some(_) => {}
            None => {
                compared += 1;
                if let Err(message) = run_case(&reference, case) {
                    failures.push(format!("{key}: {message}"));
                }
            }
        }
    }
    println!("{compared} cases compared, {rejected} rejections checked");
    assert!(compared >= 250, "only {compared} cases compared");
    assert!(
        failures.is_empty(),
        "{} of {compared} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_cli_name_round_trips() {
    for kind in SamplerKind::ALL {
        assert_eq!(kind.name().parse::<SamplerKind>().unwrap(), kind);
    }
    let err = "dpm3".parse::<SamplerKind>().unwrap_err().to_string();
    assert!(err.contains("'dpm3'") && err.contains("euler-a"), "{err}");
}
