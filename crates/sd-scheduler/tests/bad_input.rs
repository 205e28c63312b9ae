//! Bad requests fail with a clear error, never a panic.

use sd_core::rng::CpuGenerator;
use sd_scheduler::{
    build, img2img_start_index, Ddpm, SamplerKind, Scheduler, SchedulerConfig, SchedulerError,
};
use tch::{Device, Kind, Tensor};

fn sd() -> SchedulerConfig {
    SchedulerConfig::stable_diffusion()
}

#[test]
fn zero_steps_and_too_many_steps_fail_for_every_sampler() {
    for kind in SamplerKind::ALL {
        let mut s = build(kind, &sd()).unwrap();
        let err = s.set_timesteps(0).unwrap_err().to_string();
        assert!(err.contains("0 inference steps"), "{kind}: {err}");
        let err = s.set_timesteps(1001).unwrap_err().to_string();
        assert!(err.contains("1001"), "{kind}: {err}");
    }
}

#[test]
fn step_before_set_timesteps_is_an_error() {
    let sample = Tensor::zeros([1, 4, 2, 2], (Kind::Float, Device::Cpu));
    let mut noise = CpuGenerator::new(0).unwrap();
    for kind in SamplerKind::ALL {
        let mut s = build(kind, &sd()).unwrap();
        let err = s.step(&sample, 0, &sample, &mut noise).unwrap_err();
        assert!(
            matches!(err, SchedulerError::StepOutOfRange { .. }),
            "{kind}: {err}"
        );
        s.set_timesteps(4).unwrap();
        let past = s.timesteps().len();
        assert!(s.scale_model_input(&sample, past).is_err(), "{kind}");
    }
}

#[test]
fn strength_outside_zero_one_fails() {
    let mut s = build(SamplerKind::Euler, &sd()).unwrap();
    s.set_timesteps(10).unwrap();
    for strength in [0.0, -0.5, 1.5, f64::NAN] {
        let err = img2img_start_index(s.as_ref(), 10, strength)
            .unwrap_err()
            .to_string();
        assert!(err.contains("strength"), "{strength}: {err}");
    }
    assert_eq!(img2img_start_index(s.as_ref(), 10, 1.0).unwrap(), 0);
    assert_eq!(img2img_start_index(s.as_ref(), 10, 0.75).unwrap(), 3);
    // Too little strength to run a single step.
    assert!(img2img_start_index(s.as_ref(), 10, 0.05).is_err());
    // Two-evaluation samplers start at twice the step.
    let mut heun = build(SamplerKind::Heun, &sd()).unwrap();
    heun.set_timesteps(10).unwrap();
    assert_eq!(img2img_start_index(heun.as_ref(), 10, 0.5).unwrap(), 10);
}

#[test]
fn custom_timesteps_must_descend() {
    let mut ddpm = Ddpm::new(&sd()).unwrap();
    let err = ddpm
        .set_custom_timesteps(&[999.0, 500.0, 600.0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("descending") && err.contains("500"), "{err}");
    assert!(ddpm.set_custom_timesteps(&[1000.0, 10.0]).is_err());
    assert!(ddpm.set_custom_timesteps(&[]).is_err());
    ddpm.set_custom_timesteps(&[999.0, 500.0, 0.0]).unwrap();
    assert_eq!(ddpm.timesteps(), &[999.0, 500.0, 0.0]);
    // Samplers without custom timesteps say so.
    let mut euler_a = build(SamplerKind::EulerAncestral, &sd()).unwrap();
    let err = euler_a
        .set_custom_timesteps(&[999.0, 1.0])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("euler-a") && err.contains("not supported"),
        "{err}"
    );
}

#[test]
fn unsupported_prediction_types_and_options_name_the_field() {
    let sample_prediction =
        SchedulerConfig::from_json_str(r#"{"prediction_type": "sample"}"#).unwrap();
    for kind in [
        SamplerKind::EulerAncestral,
        SamplerKind::Dpm2,
        SamplerKind::Dpm2Ancestral,
        SamplerKind::Pndm,
    ] {
        let err = build(kind, &sample_prediction)
            .err()
            .expect("rejected")
            .to_string();
        assert!(err.contains("'prediction_type'"), "{kind}: {err}");
    }
    let prk = SchedulerConfig::from_json_str(r#"{"skip_prk_steps": false}"#).unwrap();
    let err = build(SamplerKind::Pndm, &prk)
        .err()
        .expect("rejected")
        .to_string();
    assert!(err.contains("'skip_prk_steps'"), "{err}");
    let order3 = SchedulerConfig::from_json_str(r#"{"solver_order": 3}"#).unwrap();
    assert!(build(SamplerKind::DpmPlusPlus2M, &order3).is_err());
    let thresholding = SchedulerConfig::from_json_str(r#"{"thresholding": true}"#).unwrap();
    assert!(build(SamplerKind::Ddim, &thresholding).is_err());
}

#[test]
fn lcm_steps_beyond_its_distillation_schedule_fail() {
    let mut lcm = build(SamplerKind::Lcm, &sd()).unwrap();
    let err = lcm.set_timesteps(51).unwrap_err().to_string();
    assert!(err.contains("original_inference_steps"), "{err}");
}

#[test]
fn real_config_files_load_by_class_name() {
    let dir = sd_testkit::parity::reference_dir().join("fixtures");
    for (model, kind) in [
        ("tiny-sd1", SamplerKind::Pndm),
        ("tiny-sd2", SamplerKind::Ddim),
        ("tiny-sdxl", SamplerKind::Euler),
    ] {
        let config =
            SchedulerConfig::from_file(dir.join(model).join("scheduler/scheduler_config.json"))
                .unwrap();
        let class = config.class_name.clone().unwrap();
        assert_eq!(SamplerKind::from_class_name(&class), Some(kind), "{model}");
        build(kind, &config).unwrap().set_timesteps(20).unwrap();
    }
    let missing = SchedulerConfig::from_file(dir.join("nowhere.json"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nowhere.json"), "{missing}");
}

/// Flow matching: options diffusers lacks, or that exclude each other, and
/// dynamic shifting without the image size are errors naming the field.
#[test]
fn flow_matching_options_it_cannot_run_are_refused_by_name() {
    let flow = |json: &str| SchedulerConfig::from_json_str(json).unwrap();
    let cases = [
        (
            SamplerKind::FlowEuler,
            r#"{"shift": 3.0, "use_beta_sigmas": true}"#,
            "use_beta_sigmas",
        ),
        (
            SamplerKind::FlowEuler,
            r#"{"use_karras_sigmas": true, "use_exponential_sigmas": true}"#,
            "use_exponential_sigmas",
        ),
        (SamplerKind::FlowEuler, r#"{"shift": -1.0}"#, "shift"),
        (
            SamplerKind::FlowEuler,
            r#"{"shift_terminal": 1.5}"#,
            "shift_terminal",
        ),
        (
            SamplerKind::FlowHeun,
            r#"{"use_dynamic_shifting": true}"#,
            "use_dynamic_shifting",
        ),
    ];
    for (kind, json, field) in cases {
        let Err(err) = build(kind, &flow(json)) else {
            panic!("{kind} {json}: accepted");
        };
        assert!(
            matches!(&err, SchedulerError::Config { field: f, .. } if f == field),
            "{kind} {json}: {err}"
        );
    }
    let mut dynamic = build(
        SamplerKind::FlowEuler,
        &flow(r#"{"use_dynamic_shifting": true}"#),
    )
    .unwrap();
    let err = dynamic.set_timesteps(10).unwrap_err().to_string();
    assert!(err.contains("mu"), "{err}");
    dynamic.set_image_seq_len(1024);
    dynamic.set_timesteps(10).unwrap();
    let mut euler = build(SamplerKind::FlowEuler, &flow("{}")).unwrap();
    assert!(euler
        .set_timesteps(0)
        .unwrap_err()
        .to_string()
        .contains("0 inference steps"));
}
