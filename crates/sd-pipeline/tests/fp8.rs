//! fp8 weights (`F8_E4M3`, `F8_E5M2` safetensors): the tiny SD1 pipeline with
//! its UNet's layer weights stored in 8 bits runs with them kept in 8 bits
//! (upcast per layer on use) and gives the run of the same weights
//! dequantized (torch's fp8 -> f32 conversion) ahead of time; a LoRA merges
//! into them and unloads back to 8 bits.

use std::path::{Path, PathBuf};

use sd_pipeline::{DiffusersModel, Request, Seed, StableDiffusion};
use sd_testkit::parity::{assert_matches_reordered, reference_dir};
use tch::{Kind, Tensor};

fn fixtures() -> PathBuf {
    reference_dir().join("fixtures")
}

/// tiny-sd1 with its UNet's weights of two or more dims rounded to `kind`,
/// stored in 8 bits (`eight_bit`) or upcast back to f32.
fn tiny_sd1_with_fp8_unet(kind: Kind, eight_bit: bool) -> PathBuf {
    let dir = sd_testkit::scratch_dir(&format!("fp8-{kind:?}-{eight_bit}"));
    let source = fixtures().join("tiny-sd1");
    for part in [
        "model_index.json",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "vae",
    ] {
        std::os::unix::fs::symlink(source.join(part), dir.join(part)).unwrap();
    }
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    std::fs::copy(
        source.join("unet/config.json"),
        dir.join("unet/config.json"),
    )
    .unwrap();
    let unet =
        Tensor::read_safetensors(source.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let weights = sd_testkit::files::fp8_copy(&unet, kind, eight_bit);
    sd_testkit::files::write(
        &dir.join("unet/diffusion_pytorch_model.safetensors"),
        &weights,
    );
    dir
}

fn request() -> Request {
    let mut r = Request::new("a red circle on a white background");
    (r.steps, r.width, r.height) = (3, Some(32), Some(32));
    r.seed = Seed::Batch(3);
    r
}

fn load(dir: &Path) -> StableDiffusion {
    StableDiffusion::builder().model_dir(dir).build().unwrap()
}

fn kinds(pipeline: &StableDiffusion) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = pipeline
        .unet()
        .unwrap()
        .var_store()
        .variables()
        .iter()
        .filter(|(name, t)| name.ends_with(".weight") && t.dim() >= 2)
        .map(|(_, t)| t.kind())
        .collect();
    kinds.dedup();
    kinds
}

#[test]
fn fp8_weights_stay_8_bit_and_run_as_their_dequantized_copy() {
    tch::set_num_threads(1);
    for kind in [Kind::Float8e4m3fn, Kind::Float8e5m2] {
        let mut eight = load(&tiny_sd1_with_fp8_unet(kind, true));
        let wide = load(&tiny_sd1_with_fp8_unet(kind, false));
        assert_eq!(kinds(&eight), vec![kind]);
        let (a, b) = (
            eight.generate(&request()).unwrap().latents,
            wide.generate(&request()).unwrap().latents,
        );
        // (the same values; the upcast copies start elsewhere in memory than
        // the f32 file's weights, which changes rounding: docs/development.md)
        assert_matches_reordered(&format!("{kind:?} run"), &a, &b, 3);

        // a LoRA merges at full width and unloads back to 8 bits
        let lora = sd_pipeline::LoraSpec::new(fixtures().join("lora/sd1-kohya.safetensors"), 0.5);
        eight.set_loras(&[lora]).unwrap();
        assert!(kinds(&eight).contains(&Kind::Float));
        eight.unload_loras().unwrap();
        assert_eq!(kinds(&eight), vec![kind]);
    }
}
