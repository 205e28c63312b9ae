//! FLUX.1 txt2img against diffusers' `FluxPipeline` (reference/harness_flux.py):
//! tiny [dev]-like (distilled guidance 3.5) and [schnell]-like pipelines, two
//! images from one generator at 48x32, 3 flow-matching Euler steps with
//! FLUX's own sigmas and resolution shift, 16 T5 tokens, in f32 and bf16.
//! The final latents are compared packed, as diffusers keeps them.

use std::path::PathBuf;

use sd_pipeline::{Request, Seed, StableDiffusion};
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use tch::Kind;

fn fixtures() -> PathBuf {
    reference_dir().join("fixtures")
}

fn request() -> Request {
    let mut r = Request::new("a red circle on a white background");
    (r.steps, r.guidance_scale, r.max_sequence_length) = (3, 3.5, Some(16));
    (r.width, r.height, r.num_images) = (Some(48), Some(32), 2);
    r.seed = Seed::Batch(0);
    r
}

/// The tiny [dev] and [schnell] pipelines in f32 and bf16, each with the
/// prefix of its reference keys ("dev.f32", ...).
fn pipelines() -> Vec<(String, StableDiffusion)> {
    let mut out = Vec::new();
    for name in ["dev", "schnell"] {
        for (dtype, kind) in [("f32", Kind::Float), ("bf16", Kind::BFloat16)] {
            let pipeline = StableDiffusion::builder()
                .model_dir(fixtures().join(format!("flux/pipeline-{name}")))
                .dtype(kind)
                .build()
                .unwrap();
            out.push((format!("{name}.{dtype}"), pipeline));
        }
    }
    out
}

/// The run's final latents, packed as diffusers keeps them, against the
/// reference `key` (one error-model evaluation per step).
fn assert_run(pipeline: &StableDiffusion, request: &Request, key: &str) {
    let reference = read_tensors(fixtures().join("outputs/flux_pipeline.safetensors")).unwrap();
    let latents = pipeline.generate(request).unwrap().latents;
    let packed = sd_flux::packing::pack(&latents);
    let want = take(&reference, key).unwrap();
    assert_matches(key, &packed, &want, request.steps);
}

#[test]
fn dev_and_schnell_txt2img_match_diffusers() {
    tch::set_num_threads(1);
    for (key, pipeline) in pipelines() {
        assert_run(&pipeline, &request(), &key);
    }
}

/// FluxImg2ImgPipeline: init-32.png at strength 0.6, 4 steps (the first
/// skipped: diffusers' SD3-style rounding), seed 5; FluxInpaintPipeline
/// with mask-32.png at 1.0 (seed 6) and 0.75 (seed 7).
#[test]
fn dev_and_schnell_img2img_and_inpainting_match_diffusers() {
    tch::set_num_threads(1);
    let images = fixtures().join("images");
    let init = image::open(images.join("init-32.png")).unwrap().to_rgb8();
    let mask = image::open(images.join("mask-32.png")).unwrap().to_luma8();
    for (key, pipeline) in pipelines() {
        let cases = [
            ("img2img", request().image_to_image(init.clone(), 0.6), 5),
            (
                "inpaint100",
                request().inpaint(init.clone(), mask.clone(), 1.0),
                6,
            ),
            (
                "inpaint75",
                request().inpaint(init.clone(), mask.clone(), 0.75),
                7,
            ),
        ];
        for (case, mut r, seed) in cases {
            (r.steps, r.width, r.height, r.num_images) = (4, Some(32), Some(32), 1);
            r.seed = Seed::Batch(seed);
            assert_run(&pipeline, &r, &format!("{key}.{case}"));
        }
    }
}

/// True CFG (diffusers' `true_cfg_scale` 4 with the negative prompt
/// "blurry"): the negative's own pass, bit for bit.
#[test]
fn true_cfg_matches_diffusers() {
    tch::set_num_threads(1);
    for (key, pipeline) in pipelines() {
        let mut r = request();
        (r.num_images, r.seed, r.true_cfg_scale) = (1, Seed::Batch(3), 4.0);
        r.negative_prompt = Some("blurry".into());
        assert_run(&pipeline, &r, &format!("{key}.true_cfg"));
    }
}

/// What FLUX does not take yet is refused in one line naming the field.
#[test]
fn flux_refusals_name_the_field() {
    let pipeline = StableDiffusion::builder()
        .model_dir(fixtures().join("flux/pipeline-schnell"))
        .build()
        .unwrap();
    let mut rescaled = request();
    rescaled.guidance_rescale = 0.7;
    let error = pipeline.generate(&rescaled).unwrap_err().to_string();
    assert!(error.contains("guidance_rescale"), "{error}");
    let mut long = request();
    long.max_sequence_length = Some(513);
    let error = pipeline.generate(&long).unwrap_err().to_string();
    assert!(error.contains("max_sequence_length"), "{error}");
}

/// Black Forest Labs' single file of the [dev] pipeline's transformer
/// (`flux1-dev.safetensors`' layout) beside the folder for the rest: the
/// folder's run, bit for bit.
#[test]
fn a_bfl_transformer_file_runs_beside_its_folder() {
    tch::set_num_threads(1);
    let folder = fixtures().join("flux/pipeline-dev");
    let from_folder = StableDiffusion::builder()
        .model_dir(&folder)
        .build()
        .unwrap();
    let single = StableDiffusion::builder()
        .single_file(fixtures().join("flux/single-file/tiny-flux-dev.safetensors"))
        .config_dir(&folder)
        .build()
        .unwrap();
    let (a, b) = (
        from_folder.generate(&request()).unwrap().latents,
        single.generate(&request()).unwrap().latents,
    );
    // (the same values; split q/k/v are views of the fused rows, so the
    // weights start elsewhere in memory: docs/development.md)
    sd_testkit::parity::assert_matches_reordered("BFL file", &b, &a, 3);
    let alone = StableDiffusion::builder()
        .single_file(fixtures().join("flux/single-file/tiny-flux-dev.safetensors"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(alone.contains("holds a FLUX transformer alone"), "{alone}");
}

/// FLUX as ComfyUI users keep it: BFL's transformer file, `ae.safetensors`
/// (the VAE in LDM names: reference/harness_flux.py), `clip_l.safetensors`
/// and a T5 file, beside a folder of configs and tokenizers only: the
/// folder's run.
#[test]
fn bfl_ae_clip_and_t5_files_run_beside_a_folder_of_configs() {
    tch::set_num_threads(1);
    let folder = fixtures().join("flux/pipeline-dev");
    let configs = sd_testkit::scratch_dir("flux-configs-only");
    sd_testkit::scratch::copy_dir(&folder, &configs);
    for part in ["transformer", "vae"] {
        std::fs::remove_file(
            configs
                .join(part)
                .join("diffusion_pytorch_model.safetensors"),
        )
        .unwrap();
    }
    for part in ["text_encoder", "text_encoder_2"] {
        std::fs::remove_file(configs.join(part).join("model.safetensors")).unwrap();
    }
    let single = fixtures().join("flux/single-file");
    let files = sd_pipeline::EncoderFiles::new()
        .clip_l(folder.join("text_encoder/model.safetensors"))
        .t5(folder.join("text_encoder_2/model.safetensors"));
    let build = |files: sd_pipeline::EncoderFiles| {
        StableDiffusion::builder()
            .single_file(single.join("tiny-flux-dev.safetensors"))
            .config_dir(&configs)
            .encoder_files(files)
            .build()
    };
    let pipeline = build(files.clone().vae(single.join("ae.safetensors"))).unwrap();
    let reference = read_tensors(fixtures().join("outputs/flux_pipeline.safetensors")).unwrap();
    let latents = pipeline.generate(&request()).unwrap().latents;
    let want = take(&reference, "dev.f32").unwrap();
    // (split q/k/v are views of the fused rows: docs/development.md)
    let packed = sd_flux::packing::pack(&latents);
    sd_testkit::parity::assert_matches_reordered("ComfyUI's FLUX files", &packed, &want, 3);
    let Err(error) = build(files.clone()) else {
        panic!("built without VAE weights")
    };
    let error = error.to_string();
    assert!(error.contains("vae"), "{error}");
    let Err(error) = build(files.vae(single.join("tiny-flux-dev.safetensors"))) else {
        panic!("built with a transformer file as its VAE")
    };
    let error = error.to_string();
    assert!(
        error.contains("not a VAE: no decoder.conv_in.weight"),
        "{error}"
    );
}

/// The BFL file in fp8 (as `flux1-dev-fp8.safetensors`: layer weights in
/// `F8_E4M3`, kept in 8 bits) and as Q8_0 GGUF (`sd convert`) run as their
/// decoded copies.
#[test]
fn fp8_and_gguf_flux_files_run_as_their_decoded_copies() {
    use sd_pipeline::convert::{convert, GgmlType, Target};
    use sd_testkit::parity::assert_matches_reordered;
    tch::set_num_threads(1);
    let folder = fixtures().join("flux/pipeline-dev");
    let bfl = fixtures().join("flux/single-file/tiny-flux-dev.safetensors");
    let dir = sd_testkit::scratch_dir("flux-narrow");
    let run = |file: &std::path::Path| {
        let pipeline = StableDiffusion::builder()
            .single_file(file)
            .config_dir(&folder)
            .build()
            .unwrap();
        pipeline.generate(&request()).unwrap().latents
    };
    let tensors = tch::Tensor::read_safetensors(&bfl).unwrap();
    let narrow = |eight_bit| sd_testkit::files::fp8_copy(&tensors, Kind::Float8e4m3fn, eight_bit);
    let (fp8, wide) = (dir.join("fp8.safetensors"), dir.join("wide.safetensors"));
    sd_testkit::files::write(&fp8, &narrow(true));
    sd_testkit::files::write(&wide, &narrow(false));
    assert_matches_reordered("fp8 BFL", &run(&fp8), &run(&wide), 3);
    let (gguf, decoded) = (dir.join("q8.gguf"), dir.join("q8.safetensors"));
    let done = convert(&bfl, &gguf, Target::Gguf(GgmlType::Q8_0), false).unwrap();
    assert!(done.quantized > 0, "{done:?}");
    convert(&gguf, &decoded, Target::SafeTensors(Kind::Float), false).unwrap();
    assert_matches_reordered("Q8_0 BFL", &run(&gguf), &run(&decoded), 3);
}

/// The request layer carries `true_cfg_scale` from A1111 bodies (and so
/// `sd serve` and the Ray app) into the run.
#[test]
fn true_cfg_reaches_the_request_from_a1111_bodies() {
    use sd_pipeline::front::a1111::GenerateRequest;
    let body = r#"{"prompt": "a fox", "negative_prompt": "blurry", "true_cfg_scale": 4.0}"#;
    let request: GenerateRequest = serde_json::from_str(body).unwrap();
    let checked = request
        .parameters(false)
        .unwrap()
        .check(&Default::default(), None)
        .unwrap();
    let runs = checked.requests();
    assert_eq!(runs[0].true_cfg_scale, 4.0);
    assert_eq!(runs[0].negative_prompt.as_deref(), Some("blurry"));
}

/// A1111-style bodies (`sd serve`, the Ray app) carry FLUX.1-dev's
/// guidance as Forge names it, `distilled_cfg_scale`, over `cfg_scale`.
#[test]
fn distilled_cfg_scale_is_the_guidance() {
    use sd_pipeline::front::a1111::GenerateRequest;
    let body = r#"{"prompt": "a fox", "cfg_scale": 1.0, "distilled_cfg_scale": 3.5}"#;
    let request: GenerateRequest = serde_json::from_str(body).unwrap();
    assert_eq!(request.parameters(false).unwrap().guidance, 3.5);
    let plain: GenerateRequest = serde_json::from_str(r#"{"prompt": "a fox"}"#).unwrap();
    assert_eq!(plain.parameters(false).unwrap().guidance, 7.0);
}

/// What a request or frontend leaves unset takes FLUX.1's own defaults:
/// 512 T5 tokens, 28 steps at distilled guidance 3.5 for [dev]; 256 tokens
/// and 4 steps for [schnell]; none of their own for the other families.
#[test]
fn flux_models_have_their_own_defaults() {
    let load = |dir: &str| {
        StableDiffusion::builder()
            .model_dir(fixtures().join(dir))
            .build()
            .unwrap()
    };
    let (dev, schnell) = (load("flux/pipeline-dev"), load("flux/pipeline-schnell"));
    assert_eq!(dev.default_max_sequence_length(), 512);
    assert_eq!(schnell.default_max_sequence_length(), 256);
    let d = dev.model_defaults().unwrap();
    assert_eq!((d.steps, d.guidance), (28, 3.5));
    assert_eq!(schnell.model_defaults().unwrap().steps, 4);
    assert_eq!(load("tiny-sd1").model_defaults(), None);
    let checked = sd_pipeline::front::Parameters::new("a cat")
        .check(&sd_pipeline::front::Limits::NONE, None)
        .unwrap()
        .with_model_defaults(
            Some(d.steps),
            Some(d.guidance),
            &sd_pipeline::front::Limits::NONE,
        )
        .unwrap();
    let request = &checked.requests()[0];
    assert_eq!((request.steps, request.guidance_scale), (28, 3.5));
    assert_eq!(request.max_sequence_length, None);
}

/// A T5 of another width than the transformer's text input is refused when
/// the pipeline is built, in one line naming the option (not by a shape error
/// inside the first step).
#[test]
fn a_t5_of_the_wrong_width_is_refused_at_load() {
    let dir = sd_testkit::scratch_dir("flux-narrow-t5");
    sd_testkit::scratch::copy_dir(&fixtures().join("flux/pipeline-dev"), &dir);
    let t5 = dir.join("text_encoder_2");
    // the tiny T5 at width 16 instead of 24 (no other dimension is 24)
    let tensors: Vec<(String, tch::Tensor)> =
        tch::Tensor::read_safetensors(t5.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(k, t)| {
                let shape: Vec<i64> = t
                    .size()
                    .iter()
                    .map(|&d| if d == 24 { 16 } else { d })
                    .collect();
                (
                    k,
                    tch::Tensor::zeros(shape.as_slice(), (t.kind(), tch::Device::Cpu)),
                )
            })
            .collect();
    tch::Tensor::write_safetensors(&tensors, t5.join("model.safetensors")).unwrap();
    let config = std::fs::read_to_string(t5.join("config.json")).unwrap();
    let config = config.replace("\"d_model\": 24", "\"d_model\": 16");
    std::fs::write(t5.join("config.json"), config).unwrap();
    let Err(error) = StableDiffusion::builder().model_dir(&dir).build() else {
        panic!("built with a T5 of the wrong width")
    };
    let error = error.to_string();
    assert!(
        error.contains("t5: a T5 of width 16; this transformer takes text states of width 24"),
        "{error}"
    );
    assert_eq!(error.lines().count(), 1, "{error}");
}
