//! Compiled UNets (issue 32): the tiny SD1's UNet compiled by torch's
//! compiler in the project's virtualenv (`compile_unet`), run from Rust for
//! the size it was made for, within the error model of the eager run (fusion
//! rounds otherwise: the bound for a reordered computation, in every mode);
//! another size runs eager and says why; a package for other weights (a
//! LoRA merged) is refused in one line.

use std::path::PathBuf;

use sd_pipeline::compiled::CompileSpec;
use sd_pipeline::{LoraSpec, Request, StableDiffusion, UNetExecution};
use sd_testkit::parity::{assert_matches_reordered, reference_dir};

fn fixtures() -> PathBuf {
    reference_dir().join("fixtures")
}

fn pipeline() -> StableDiffusion {
    let builder = StableDiffusion::builder().model_dir(fixtures().join("tiny-sd1"));
    builder.build().unwrap()
}

fn request(size: u32) -> Request {
    let mut r = Request::new("a red circle on a white background").with_seed(0);
    (r.steps, r.width, r.height) = (4, Some(size), Some(size));
    r
}

#[test]
fn a_compiled_unet_runs_as_the_eager_one() {
    tch::set_num_threads(1);
    let python = reference_dir().join("../.venv/bin/python");
    // (the CLI suite's cache too: the same weights and size compile once)
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache/sd-rs/compiled");
    let spec = CompileSpec::new(64, 64, python, cache);
    let mut compiled = pipeline();
    let mut stages = Vec::new();
    let package = compiled
        .compile_unet(&spec, &mut |s| stages.push(s.to_string()))
        .unwrap();
    let eager = pipeline();
    let (fast, slow) = (
        compiled.generate(&request(64)).unwrap(),
        eager.generate(&request(64)).unwrap(),
    );
    assert_eq!(fast.unet_execution, UNetExecution::Compiled);
    assert_matches_reordered("compiled 64x64", &fast.latents, &slow.latents, 4);
    // another size: eager, saying why, the eager numbers exactly
    let other = compiled.generate(&request(32)).unwrap();
    let UNetExecution::EagerNotCompiled(why) = &other.unet_execution else {
        panic!("{:?}", other.unet_execution)
    };
    assert!(
        why.contains("compiled for a UNet batch of 2 at 32x32 latents"),
        "{why}"
    );
    assert!(other
        .latents
        .equal(&eager.generate(&request(32)).unwrap().latents));
    // other weights: refused
    let mut merged = pipeline();
    let lora = LoraSpec::new(fixtures().join("lora/sd1-kohya.safetensors"), 0.8);
    merged.set_loras(&[lora]).unwrap();
    let error = merged.load_compiled_unet(&package).unwrap_err().to_string();
    assert!(
        error.contains("compiled for another model or machine"),
        "{error}"
    );
}
