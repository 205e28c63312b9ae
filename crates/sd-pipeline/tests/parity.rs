//! Whole pipelines against diffusers' final latents (reference/harness_outputs.py):
//! txt2img with ddim, euler, euler-a, dpm++2m and pndm on the tiny SD1 model,
//! img2img, inpainting with 9- and 4-channel UNets, and SDXL. Same seeds
//! (CPU generators), f32 on CPU, single-threaded like the reference:
//! every case agrees bit for bit (the bound stays max-abs 1e-4). That needs
//! the same tensor layouts as diffusers too (its image tensors are
//! channels-last; convolutions round differently on the two layouts).

use std::path::PathBuf;

use sd_core::parity::{assert_close, read_tensors, reference_dir, take, Tolerance};
use sd_pipeline::{Request, SamplerKind, StableDiffusion};
use serde_json::Value;

const TOL: Tolerance = Tolerance::abs(1e-4);

fn fixtures() -> PathBuf {
    reference_dir().join("fixtures")
}

fn runs(name: &str) -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("outputs").join(name)).unwrap())
        .unwrap()
}

fn load(folder: &str) -> StableDiffusion {
    // The reference ran single-threaded; so do we, for the same summation order.
    tch::set_num_threads(1);
    StableDiffusion::builder()
        .model_dir(fixtures().join(folder))
        .build()
        .unwrap()
}

fn sampler(run: &Value) -> SamplerKind {
    run["scheduler"].as_str().unwrap().parse().unwrap()
}

fn request(run: &Value) -> Request {
    let mut r = Request::new(
        run["prompt"]
            .as_str()
            .unwrap_or("a red circle on a white background"),
    );
    r.negative_prompt = run["negative_prompt"].as_str().map(str::to_string);
    r.steps = run["steps"].as_u64().unwrap() as usize;
    r.guidance_scale = run["guidance_scale"].as_f64().unwrap();
    r.seed = run["seed"].as_u64().unwrap();
    r.width = run["width"].as_u64().map(|v| v as u32);
    r.height = run["height"].as_u64().map(|v| v as u32);
    r
}

/// Every txt2img case of the harness through `pipeline`, within `tolerance`.
fn check_txt2img(pipeline: &StableDiffusion, tolerance: Tolerance) {
    let reference = read_tensors(fixtures().join("outputs/txt2img.safetensors")).unwrap();
    for run in runs("txt2img.json") {
        let key = run["key"].as_str().unwrap();
        let scheduler = pipeline.new_scheduler_of(sampler(&run)).unwrap();
        let out = pipeline
            .generate_with(&request(&run), scheduler, &mut |_| {
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        assert_close(
            key,
            &out.latents,
            &take(&reference, key).unwrap(),
            tolerance,
        );
    }
}

#[test]
fn txt2img_matches_diffusers() {
    check_txt2img(&load("tiny-sd1"), TOL);
}

/// Every img2img/inpaint case in `name` (.json + .safetensors), each run in
/// its "dtype" (f32 when absent), within `tolerance`.
fn check_img2img_inpaint(name: &str, tolerance: Tolerance) {
    let reference = read_tensors(fixtures().join(format!("outputs/{name}.safetensors"))).unwrap();
    let init = image::open(fixtures().join("images/init.png"))
        .unwrap()
        .to_rgb8();
    let mask = image::open(fixtures().join("images/mask.png"))
        .unwrap()
        .to_luma8();
    tch::set_num_threads(1);
    for run in runs(&format!("{name}.json")) {
        let key = run["key"].as_str().unwrap();
        let kind = sd_core::device::parse_kind(run["dtype"].as_str().unwrap_or("f32")).unwrap();
        let pipeline = StableDiffusion::builder()
            .model_dir(fixtures().join(run["model"].as_str().unwrap_or("tiny-sd1")))
            .dtype(kind)
            .build()
            .unwrap();
        let mut r = request(&run);
        r.init_image = Some(init.clone());
        r.strength = run["strength"].as_f64().unwrap();
        if key.contains("inpaint.") {
            r.mask = Some(mask.clone());
        }
        let scheduler = pipeline.new_scheduler_of(sampler(&run)).unwrap();
        let out = pipeline
            .generate_with(&r, scheduler, &mut |_| std::ops::ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(out.latents.kind(), kind, "{key}");
        let expected = take(&reference, key).unwrap().to_kind(tch::Kind::Float);
        assert_close(
            key,
            &out.latents.to_kind(tch::Kind::Float),
            &expected,
            tolerance,
        );
    }
}

#[test]
fn img2img_and_inpaint_match_diffusers() {
    check_img2img_inpaint("img2img_inpaint", TOL);
}

#[test]
fn half_precision_img2img_and_inpaint_match_diffusers() {
    // f16 and bf16 together; the bound is below one bf16 ulp at |x| >= 8.
    check_img2img_inpaint("img2img_inpaint_half", Tolerance::abs(3e-2));
}

#[test]
fn sdxl_matches_diffusers() {
    // f32, f16 and bf16 (the VAE's force_upcast keeps it f32 in the halves)
    let reference = read_tensors(fixtures().join("outputs/sdxl.safetensors")).unwrap();
    tch::set_num_threads(1);
    for run in runs("sdxl.json") {
        let key = run["key"].as_str().unwrap();
        let kind = sd_core::device::parse_kind(run["dtype"].as_str().unwrap_or("f32")).unwrap();
        let pipeline = StableDiffusion::builder()
            .model_dir(fixtures().join("tiny-sdxl"))
            .dtype(kind)
            .build()
            .unwrap();
        let out = pipeline.generate(&request(&run)).unwrap();
        assert_eq!(out.latents.kind(), kind, "{key}");
        let expected = take(&reference, key).unwrap().to_kind(tch::Kind::Float);
        assert_close(key, &out.latents.to_kind(tch::Kind::Float), &expected, TOL);
    }
}

#[test]
fn channels_last_stays_within_rounding_of_diffusers() {
    // Another memory layout sums in another order: not bit-exact, but every
    // txt2img case must stay within float rounding of diffusers (latents
    // reach |20|, so the bound is relative too), in the normal and in the
    // low-memory placement (whose device copies are re-laid out).
    const ROUNDING: Tolerance = Tolerance {
        atol: 5e-4,
        rtol: 1e-4,
    };
    tch::set_num_threads(1);
    for low_memory in [false, true] {
        let pipeline = StableDiffusion::builder()
            .model_dir(fixtures().join("tiny-sd1"))
            .channels_last(true)
            .low_memory(low_memory)
            .build()
            .unwrap();
        let conv = &pipeline.unet().var_store().variables()["conv_in.weight"];
        assert!(sd_core::nn::is_channels_last(conv));
        check_txt2img(&pipeline, ROUNDING);
    }
}

#[test]
fn half_precision_txt2img_matches_diffusers() {
    // diffusers draws f16/bf16 noise with torch's half-precision transform
    // (other numbers than an f32 draw: drawing f32 instead misses by ~26)
    // and computes the loop in that dtype, rounding each coefficient it
    // writes first to the tensor's format (`sd_scheduler::schedule::leading`).
    // Mirrored, every case agrees bit for bit; the bounds are below one ulp
    // of each format at the latents' largest magnitudes (|x| up to ~70).
    let reference = read_tensors(fixtures().join("outputs/txt2img_half.safetensors")).unwrap();
    tch::set_num_threads(1);
    for (dtype, kind, tolerance) in [
        ("f16", tch::Kind::Half, Tolerance::abs(1e-2)),
        ("bf16", tch::Kind::BFloat16, Tolerance::abs(6e-2)),
    ] {
        let pipeline = StableDiffusion::builder()
            .model_dir(fixtures().join("tiny-sd1"))
            .dtype(kind)
            .build()
            .unwrap();
        for run in runs("txt2img_half.json")
            .into_iter()
            .filter(|r| r["dtype"] == dtype)
        {
            let key = run["key"].as_str().unwrap();
            let scheduler = pipeline.new_scheduler_of(sampler(&run)).unwrap();
            let out = pipeline
                .generate_with(&request(&run), scheduler, &mut |_| {
                    std::ops::ControlFlow::Continue(())
                })
                .unwrap();
            assert_eq!(out.latents.kind(), kind, "{key}");
            let expected = take(&reference, key).unwrap().to_kind(tch::Kind::Float);
            assert_close(
                key,
                &out.latents.to_kind(tch::Kind::Float),
                &expected,
                tolerance,
            );
        }
    }
}
