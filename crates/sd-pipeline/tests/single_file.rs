//! Single-file (LDM layout) checkpoints made by the harness from the tiny
//! models (reference/harness_single_file.py, checked there against diffusers'
//! own conversion): SD1, SD1 inpainting, SD2 (OpenCLIP tower with fused
//! in_proj and one layer more than SD2 uses), SD2 inpainting and SDXL give
//! diffusers' `from_single_file` latents, and those of the diffusers folders.

use sd_core::DiffusersModel;
use std::path::PathBuf;

use sd_core::weights::MappedFile;
use sd_pipeline::single_file::{detect, preset, CheckpointKind, Detected, Plan};
use sd_pipeline::{Request, StableDiffusion};
use sd_scheduler::PredictionType;
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    reference_dir().join("fixtures")
}

fn request() -> Request {
    let mut r = Request::new("a red circle on a white background");
    r.steps = 3;
    r.seed = 11.into();
    r
}

#[test]
fn single_files_match_their_diffusers_folders() {
    for model in ["tiny-sd1", "tiny-sd1-inpaint", "tiny-sd2", "tiny-sdxl"] {
        let folder = StableDiffusion::builder()
            .model_dir(fixtures().join(model))
            .build()
            .unwrap();
        let single = StableDiffusion::builder()
            .single_file(fixtures().join(format!("single-file/{model}.safetensors")))
            .config_dir(fixtures().join(model))
            .build()
            .unwrap();
        assert_eq!(single.family(), folder.family());
        let mut request = request();
        if model.ends_with("inpaint") {
            let images = fixtures().join("images");
            let image = image::open(images.join("init.png")).unwrap().to_rgb8();
            let mask = image::open(images.join("mask.png")).unwrap().to_luma8();
            request = request.inpaint(image, mask, 1.0);
        }
        let (a, b) = (
            folder.generate(&request).unwrap().latents,
            single.generate(&request).unwrap().latents,
        );
        assert_eq!(a, b, "{model}");
    }
}

#[test]
fn single_files_match_diffusers_from_single_file() {
    let outputs = fixtures().join("outputs");
    let reference = read_tensors(outputs.join("single_file.safetensors")).unwrap();
    let runs: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(outputs.join("single_file.json")).unwrap())
            .unwrap();
    assert_eq!(runs.len(), 6);
    tch::set_num_threads(1);
    for run in runs {
        let key = run["key"].as_str().unwrap();
        let pipeline = StableDiffusion::builder()
            .single_file(fixtures().join(run["file"].as_str().unwrap()))
            .config_dir(fixtures().join(run["config"].as_str().unwrap()))
            .build()
            .unwrap();
        let mut request = Request::new(run["prompt"].as_str().unwrap());
        request.steps = run["steps"].as_u64().unwrap() as usize;
        request.seed = run["seed"].as_u64().unwrap().into();
        request.guidance_scale = run["guidance_scale"].as_f64().unwrap();
        request.width = Some(64);
        request.height = Some(64);
        if let Some(strength) = run["strength"].as_f64() {
            let images = fixtures().join("images");
            let image = image::open(images.join("init.png")).unwrap().to_rgb8();
            let mask = image::open(images.join("mask.png")).unwrap().to_luma8();
            request = request.inpaint(image, mask, strength);
        }
        let latents = pipeline.generate(&request).unwrap().latents;
        assert_matches(
            key,
            &latents,
            &take(&reference, key).unwrap(),
            request.steps,
        );
    }
}

#[test]
fn files_without_a_config_take_the_configs_diffusers_falls_back_to() {
    // diffusers' DIFFUSERS_DEFAULT_PIPELINE_PATHS: v2 -> stable-diffusion-2-1
    // (v-prediction, 768), inpainting_v2 -> stable-diffusion-2-inpainting
    // (epsilon, 512), v1 and inpainting -> SD1.5 (epsilon, 512).
    let cases = [
        (
            "tiny-sd1",
            CheckpointKind::Sd1,
            false,
            PredictionType::Epsilon,
            64,
            4,
        ),
        (
            "tiny-sd1-inpaint",
            CheckpointKind::Sd1,
            true,
            PredictionType::Epsilon,
            64,
            9,
        ),
        (
            "tiny-sd2",
            CheckpointKind::Sd2,
            false,
            PredictionType::VPrediction,
            96,
            4,
        ),
        (
            "tiny-sd2-inpaint",
            CheckpointKind::Sd2,
            true,
            PredictionType::Epsilon,
            64,
            9,
        ),
        (
            "tiny-sdxl",
            CheckpointKind::Sdxl,
            false,
            PredictionType::Epsilon,
            128,
            4,
        ),
    ];
    for (stem, kind, inpainting, prediction, sample_size, in_channels) in cases {
        let file =
            MappedFile::open(fixtures().join(format!("single-file/{stem}.safetensors"))).unwrap();
        let detected = detect(&file).unwrap();
        assert_eq!(detected, Detected { kind, inpainting }, "{stem}");
        let plan = Plan::new(detected, None).unwrap();
        assert_eq!(
            plan.configs
                .scheduler
                .prediction_type
                .unwrap_or(PredictionType::Epsilon),
            prediction,
            "{stem}"
        );
        assert_eq!(plan.configs.unet.sample_size, Some(sample_size), "{stem}");
        assert_eq!(plan.configs.unet.in_channels, in_channels, "{stem}");
        if kind == CheckpointKind::Sd2 {
            // OpenCLIP-H's 24 layers, of which SD2 uses 23 (the penultimate
            // layer's output, through the final layer norm)
            assert_eq!(plan.configs.text.num_hidden_layers, 23);
            assert_eq!(preset(detected)["text_encoder"]["num_hidden_layers"], 23);
        }
    }
}

fn synthetic(name: &str, tensors: &[(&str, &[i64])]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "sd-single-{}-{name}.safetensors",
        std::process::id()
    ));
    let list: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, s)| (k.to_string(), Tensor::zeros(*s, (Kind::Half, Device::Cpu))))
        .collect();
    Tensor::write_safetensors(&list, &path).unwrap();
    path
}

#[test]
fn families_are_recognised_from_keys_and_shapes() {
    let unet = "model.diffusion_model.input_blocks.0.0.weight";
    type Case<'a> = (&'a str, Vec<(&'a str, &'a [i64])>, Detected);
    let cases: [Case; 4] = [
        (
            "sd1",
            vec![
                (unet, &[4, 4, 3, 3]),
                (
                    "cond_stage_model.transformer.text_model.final_layer_norm.weight",
                    &[4],
                ),
            ],
            Detected {
                kind: CheckpointKind::Sd1,
                inpainting: false,
            },
        ),
        (
            "sd2",
            vec![
                (unet, &[4, 4, 3, 3]),
                ("cond_stage_model.model.ln_final.weight", &[4]),
            ],
            Detected {
                kind: CheckpointKind::Sd2,
                inpainting: false,
            },
        ),
        (
            "xl",
            vec![
                (unet, &[4, 4, 3, 3]),
                ("conditioner.embedders.1.model.ln_final.weight", &[4]),
            ],
            Detected {
                kind: CheckpointKind::Sdxl,
                inpainting: false,
            },
        ),
        (
            "inpaint",
            vec![
                (unet, &[4, 9, 3, 3]),
                (
                    "cond_stage_model.transformer.text_model.final_layer_norm.weight",
                    &[4],
                ),
            ],
            Detected {
                kind: CheckpointKind::Sd1,
                inpainting: true,
            },
        ),
    ];
    for (name, tensors, expected) in cases {
        let path = synthetic(name, &tensors);
        assert_eq!(
            detect(&MappedFile::open(&path).unwrap()).unwrap(),
            expected,
            "{name}"
        );
    }
    let vae_only = synthetic("vae", &[("first_stage_model.decoder.conv_in.weight", &[4])]);
    let err = detect(&MappedFile::open(&vae_only).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.diffusion_model"), "{err}");
}

#[test]
fn a_truncated_checkpoint_names_the_missing_tensors() {
    // The tiny SD1 file without its UNet's conv_out: the error names it.
    let source = fixtures().join("single-file/tiny-sd1.safetensors");
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&source)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("model.diffusion_model.out.2."))
        .collect();
    let path = std::env::temp_dir().join(format!(
        "sd-single-{}-truncated.safetensors",
        std::process::id()
    ));
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let err = StableDiffusion::builder()
        .single_file(&path)
        .config_dir(fixtures().join("tiny-sd1"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv_out.weight") && err.contains("conv_out.bias"),
        "{err}"
    );
}

/// The real SD1.5, SD2.1 and SDXL single files (their names and shapes, in
/// reference/manifests/*/single_file.json) map onto exactly the weights of
/// the models built from the built-in presets: nothing missing, nothing left
/// over, every shape right after its transform.
#[test]
fn real_single_file_layouts_map_onto_the_presets() {
    use sd_pipeline::single_file::{Component, Plan};
    use sd_testkit::manifest::Manifest;
    use std::collections::BTreeMap;

    for (model, kind) in [
        ("sd15", CheckpointKind::Sd1),
        ("sd21", CheckpointKind::Sd2),
        ("sdxl", CheckpointKind::Sdxl),
    ] {
        let single =
            Manifest::read(reference_dir().join(format!("manifests/{model}/single_file.json")))
                .unwrap();
        let plan = Plan::new(
            Detected {
                kind,
                inpainting: false,
            },
            None,
        )
        .unwrap();
        let mut components = vec![
            (
                Component::UNet,
                Manifest::of_var_store(
                    sd_unet::UNet2DConditionModel::new(&plan.configs.unet, Device::Cpu)
                        .unwrap()
                        .var_store(),
                ),
            ),
            (
                Component::Vae,
                Manifest::of_var_store(
                    sd_vae::AutoencoderKL::new(&plan.configs.vae, Device::Cpu)
                        .unwrap()
                        .var_store(),
                ),
            ),
            (
                Component::TextEncoder,
                Manifest::of_var_store(
                    sd_clip::ClipTextModel::new(&plan.configs.text, Device::Cpu)
                        .unwrap()
                        .var_store(),
                ),
            ),
        ];
        if let Some(config) = &plan.configs.text_2 {
            components.push((
                Component::TextEncoder2,
                Manifest::of_var_store(
                    sd_clip::ClipTextModel::new(config, Device::Cpu)
                        .unwrap()
                        .var_store(),
                ),
            ));
        }
        for (component, expected) in components {
            let mut mapped: BTreeMap<String, Vec<i64>> = BTreeMap::new();
            for (key, shape) in &single.tensors {
                let targets = plan.map(component, key).targets(shape);
                mapped.extend(targets);
            }
            let diff = expected.diff(&Manifest {
                tensors: mapped,
                optional: BTreeMap::new(),
            });
            assert!(diff.is_empty(), "{model} {component:?}: {diff:?}");
        }
    }
}

/// A VAE from a file of its own (`--vae`), as A1111 users keep one beside a
/// checkpoint: in the LDM names without a prefix (`vae-ft-mse-840000-ema-pruned`'s
/// layout, here the checkpoint's own VAE cut out) and in diffusers' names (the
/// folder's file) both decode as the checkpoint's own VAE, weight for weight.
#[test]
fn a_vae_file_of_its_own_replaces_the_checkpoints() {
    let checkpoint = fixtures().join("single-file/tiny-sd1.safetensors");
    let build = |vae: Option<&std::path::Path>| {
        let mut files = sd_pipeline::EncoderFiles::new();
        if let Some(vae) = vae {
            files = files.vae(vae);
        }
        (StableDiffusion::builder().single_file(&checkpoint))
            .config_dir(fixtures().join("tiny-sd1"))
            .encoder_files(files)
            .build()
            .unwrap()
    };
    let own = build(None);
    let dir = sd_testkit::scratch_dir("vae-file");
    let ldm: Vec<(String, Tensor)> = Tensor::read_safetensors(&checkpoint)
        .unwrap()
        .into_iter()
        .filter_map(|(k, t)| Some((k.strip_prefix("first_stage_model.")?.to_string(), t)))
        .collect();
    let ldm_file = dir.join("vae-ldm.safetensors");
    Tensor::write_safetensors(&ldm, &ldm_file).unwrap();
    let diffusers_file = fixtures().join("tiny-sd1/vae/diffusion_pytorch_model.safetensors");
    for file in [&ldm_file, &diffusers_file] {
        let other = build(Some(file));
        let theirs = other.vae().var_store().variables();
        for (name, tensor) in own.vae().var_store().variables() {
            assert!(tensor.equal(&theirs[&name]), "{}: {name}", file.display());
        }
    }
}
