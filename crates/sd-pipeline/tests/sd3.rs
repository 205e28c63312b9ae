//! SD3's text conditioning against diffusers' `StableDiffusion3Pipeline.encode_prompt`
//! on a tiny SD3 pipeline (reference/harness_sd3.py, write_sd3_pipeline):
//! prompt and negative prompt, with T5 and without it (zeros), 16 T5 tokens.
//! f32 CPU, single-threaded like the reference; bit for bit on its machine.

use sd_pipeline::sd3::Sd3TextEncoders;
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use tch::{Device, Kind};

#[test]
fn sd3_conditioning_matches_diffusers_with_and_without_t5() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let fixtures = reference_dir().join("fixtures");
    let reference = read_tensors(fixtures.join("outputs/sd3_pipeline.safetensors")).unwrap();
    let t = |key: &str| take(&reference, key).unwrap();
    let prompt = "a red circle on a white background";
    for (name, with_t5) in [("t5", true), ("no_t5", false)] {
        let encoders = Sd3TextEncoders::from_folder(
            &fixtures.join("sd3/pipeline"),
            Device::Cpu,
            Kind::Float,
            with_t5,
        )
        .unwrap();
        for (text, part) in [(prompt, ""), ("blurry", "negative_")] {
            let c = encoders.encode(text, 16).unwrap();
            let suffix = if part.is_empty() {
                "embeds"
            } else {
                "negative"
            };
            assert_matches(
                &format!("{name} {text}"),
                &c.hidden,
                &t(&format!("cond.{name}.{suffix}")),
                1,
            );
            let pooled = c.pooled.unwrap();
            assert_matches(
                &format!("{name} {text} pooled"),
                &pooled,
                &t(&format!("cond.{name}.{part}pooled")),
                1,
            );
        }
    }
}

/// The SD3 parts composed as diffusers' `StableDiffusion3Pipeline` composes
/// them (noise from the CPU generator, flow-matching Euler with shift 3,
/// classifier-free guidance, the 16-channel VAE's shift and scale), with and
/// without T5: the final latents and the decoded image of diffusers' run.
/// A check of the parts before the pipeline itself lands (docs/sd3.md).
#[test]
fn the_sd3_parts_compose_into_diffusers_txt2img() {
    use sd_core::DiffusersModel;
    use sd_pipeline::{SamplerKind, SchedulerConfig};
    use tch::Tensor;

    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let fixtures = reference_dir().join("fixtures");
    let dir = fixtures.join("sd3/pipeline");
    let reference = read_tensors(fixtures.join("outputs/sd3_pipeline.safetensors")).unwrap();
    let transformer = sd_mmdit::SD3Transformer2DModel::from_folder(
        dir.join("transformer"),
        Device::Cpu,
        Kind::Float,
        None,
    )
    .unwrap();
    let vae = sd_vae::AutoencoderKL::from_folder(dir.join("vae"), Device::Cpu, Kind::Float, None)
        .unwrap();
    let config = SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json")).unwrap();
    for (name, with_t5) in [("t5", true), ("no_t5", false)] {
        let encoders =
            Sd3TextEncoders::from_folder(&dir, Device::Cpu, Kind::Float, with_t5).unwrap();
        let (pos, neg) = (
            encoders
                .encode("a red circle on a white background", 16)
                .unwrap(),
            encoders.encode("blurry", 16).unwrap(),
        );
        let context = Tensor::cat(&[&neg.hidden, &pos.hidden], 0);
        let pooled = Tensor::cat(&[neg.pooled.unwrap(), pos.pooled.unwrap()], 0);
        let mut scheduler = sd_scheduler::build(SamplerKind::FlowEuler, &config).unwrap();
        scheduler.set_timesteps(4).unwrap();
        let mut generator = sd_core::rng::CpuGenerator::new(0).unwrap();
        let mut latents = generator.randn_as(&[1, 16, 16, 16], Kind::Float).unwrap();
        for i in 0..scheduler.timesteps().len() {
            let t = scheduler.timesteps()[i] as f32;
            let input = Tensor::cat(&[&latents, &latents], 0);
            let v = transformer
                .forward(&input, &Tensor::from_slice(&[t, t]), &context, &pooled, &[])
                .unwrap();
            let (uncond, cond) = (v.get(0).unsqueeze(0), v.get(1).unsqueeze(0));
            let guided = &uncond + (&cond - &uncond) * 5.0;
            latents = scheduler
                .step(&guided, i, &latents, &mut generator)
                .unwrap();
        }
        let key = format!("txt2img.{name}");
        assert_matches(&key, &latents, &take(&reference, &key).unwrap(), 4);
        let decoded = vae.decode(&vae.unscale_latents(&latents)).unwrap();
        let image = sd_pipeline::images::tensor_to_images(&decoded).unwrap();
        let expected = take(&reference, &format!("{key}.image")).unwrap();
        sd_testkit::parity::assert_image_matches(
            &key,
            image[0].as_raw(),
            image[0].as_raw(),
            &expected,
            Kind::Float,
        );
    }
}

/// Until the SD3 pipeline lands, an SD3 folder is refused in one line that
/// says so (not as an unknown pipeline class).
#[test]
fn an_sd3_folder_is_refused_in_one_line_until_the_pipeline_lands() {
    let dir = reference_dir().join("fixtures/sd3/pipeline");
    let error = sd_pipeline::StableDiffusion::builder()
        .model_dir(&dir)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Stable Diffusion 3/3.5 cannot run here yet")
            && error.contains("docs/sd3.md"),
        "{error}"
    );
    assert_eq!(error.lines().count(), 1);
}
