//! GGUF models (reference/harness_gguf.py's tiny SD1 files): the UNet alone
//! without the checkpoint prefix (ComfyUI-GGUF's form) beside the diffusers
//! folder, and the whole checkpoint (stable-diffusion.cpp's form), with
//! weights in Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and F16. Layer weights stay in
//! their blocks; the runs are diffusers' on the dequantized weights.

use std::path::PathBuf;

use sd_core::DiffusersModel;
use sd_pipeline::{Request, StableDiffusion};
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};

fn fixtures() -> PathBuf {
    reference_dir().join("fixtures")
}

fn request() -> Request {
    let mut r = Request::new("a red circle on a white background");
    (r.steps, r.width, r.height) = (4, Some(64), Some(64));
    r.guidance_scale = 7.5;
    r.seed = 0.into();
    r
}

fn load(file: &str) -> sd_pipeline::Result<StableDiffusion> {
    StableDiffusion::builder()
        .single_file(fixtures().join("gguf").join(file))
        .config_dir(fixtures().join("tiny-sd1"))
        .build()
}

/// How many of the UNet's variables are kept in GGML blocks.
fn packed(pipeline: &StableDiffusion) -> usize {
    let vs = pipeline.unet().unwrap().var_store();
    let variables = vs.variables();
    variables
        .values()
        .filter(|t| sd_core::packed::is_packed(t))
        .count()
}

#[test]
fn gguf_models_run_as_diffusers_on_their_dequantized_weights() {
    tch::set_num_threads(1);
    let reference = read_tensors(fixtures().join("outputs/gguf_sd1.safetensors")).unwrap();
    for (file, key) in [
        ("tiny-sd1-unet.gguf", "unet-only"),
        ("tiny-sd1.gguf", "whole"),
    ] {
        let pipeline = load(file).unwrap();
        // every linear and attention weight of the tiny UNet (2+ dims, rows
        // of whole blocks): the rest are convolutions (F16, decoded at load)
        assert!(
            packed(&pipeline) >= 20,
            "{file}: {} packed",
            packed(&pipeline)
        );
        let latents = pipeline.generate(&request()).unwrap().latents;
        assert_matches(file, &latents, &take(&reference, key).unwrap(), 4);
    }
}

#[test]
fn a_unet_alone_needs_a_folder_for_the_rest() {
    let error = StableDiffusion::builder()
        .single_file(fixtures().join("gguf/tiny-sd1-unet.gguf"))
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("tiny-sd1-unet.gguf"), "{error}");
    assert!(error.contains("holds a UNet alone"), "{error}");
}
