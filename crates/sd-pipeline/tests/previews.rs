//! The tiny autoencoder in the pipeline and live previews: txt2img with
//! TAESD for the final decode against diffusers' pipelines given
//! `vae=AutoencoderTiny` (reference/harness_taesd.py), previews from the
//! per-step callback (TAESD's full-size decode, or the linear latent-to-RGB
//! map at latent size), and the samplers' denoised estimates.

use std::ops::ControlFlow;
use std::path::PathBuf;

use sd_pipeline::{Request, SamplerKind, StableDiffusion, TinyVaeUse};
use sd_testkit::parity::{
    assert_close, assert_image_matches, chain_tolerance_for, read_tensors, reference_dir, take,
};
use serde_json::Value;
use tch::Kind;

fn fixtures() -> PathBuf {
    reference_dir().join("fixtures")
}

fn request(run: &Value) -> Request {
    let mut r = Request::new(run["prompt"].as_str().unwrap());
    r.steps = run["steps"].as_u64().unwrap() as usize;
    r.guidance_scale = run["guidance_scale"].as_f64().unwrap();
    r.width = Some(64);
    r.height = Some(64);
    r.with_seed(run["seed"].as_u64().unwrap())
}

#[test]
fn tiny_autoencoder_decodes_as_in_diffusers() {
    tch::set_num_threads(1);
    let reference = read_tensors(fixtures().join("outputs/taesd.safetensors")).unwrap();
    let text = std::fs::read_to_string(fixtures().join("outputs/taesd.json")).unwrap();
    let runs: Vec<Value> = serde_json::from_str(&text).unwrap();
    for run in runs {
        let key = run["key"].as_str().unwrap();
        let pipeline = StableDiffusion::builder()
            .model_dir(fixtures().join(run["model"].as_str().unwrap()))
            .tiny_vae(
                fixtures().join("taesd/tiny-taesd"),
                TinyVaeUse::PreviewsAndDecode,
            )
            .build()
            .unwrap();
        let out = pipeline.generate(&request(&run)).unwrap();
        let expected = take(&reference, key).unwrap();
        let tolerance = chain_tolerance_for(Kind::Float, 5, &expected);
        assert_close(key, &out.latents, &expected, tolerance);
        let image = take(&reference, &format!("{key}.image")).unwrap();
        let decoded = pipeline.decode_latents(&expected).unwrap();
        assert_image_matches(
            key,
            decoded[0].as_raw(),
            out.images[0].as_raw(),
            &image,
            Kind::Float,
        );
    }
}

#[test]
fn previews_come_from_the_callback_at_every_step() {
    tch::set_num_threads(1);
    let tiny = fixtures().join("tiny-sd1");
    let mut pipeline = StableDiffusion::builder()
        .model_dir(&tiny)
        .sampler(SamplerKind::Euler)
        .build()
        .unwrap();
    let mut request = Request::new("a red circle").with_seed(3);
    request.steps = 4;
    request.width = Some(64);
    request.height = Some(64);

    // Without TAESD: the linear map, one pixel per latent (32x32 here),
    // from the sampler's denoised estimate (Euler makes one every step).
    let mut previews = Vec::new();
    let mut last_denoised = None;
    let out = pipeline
        .generate_with(&request, pipeline.new_scheduler().unwrap(), &mut |info| {
            let denoised = info.denoised.expect("Euler gives a denoised estimate");
            previews.push(pipeline.preview(denoised).unwrap());
            last_denoised = Some(denoised.copy());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(previews.len(), 4);
    for images in &previews {
        assert_eq!(images[0].dimensions(), (32, 32));
    }
    // Euler's last step lands on sigma 0: the result is its denoised estimate.
    let last = last_denoised.unwrap();
    let gap = (&out.latents - &last).abs().max().double_value(&[]);
    assert!(
        gap < 1e-5,
        "final latents are {gap} from the last denoised estimate"
    );
    // The linear map by hand for one pixel: SD's latent-to-RGB weights.
    let weights = [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ];
    let (y, x) = (5i64, 9i64);
    let z: Vec<f64> = (0..4).map(|c| last.double_value(&[0, c, y, x])).collect();
    for (rgb, column) in previews[3][0]
        .get_pixel(x as u32, y as u32)
        .0
        .iter()
        .zip(0..3)
    {
        let v: f64 = (0..4).map(|c| z[c] * weights[c][column]).sum();
        let expected = ((v * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).round();
        assert!((*rgb as f64 - expected).abs() <= 1.0, "{rgb} vs {expected}");
    }

    // With TAESD for previews only: full-size previews, the final image
    // still from the full VAE; the preview of the final latents is TAESD's
    // decode of them.
    pipeline
        .load_tiny_vae(fixtures().join("taesd/original"), TinyVaeUse::Previews)
        .unwrap();
    let mut sizes = Vec::new();
    let again = pipeline
        .generate_with(&request, pipeline.new_scheduler().unwrap(), &mut |info| {
            sizes.push(pipeline.preview(info.latents).unwrap()[0].dimensions());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(sizes, vec![(64, 64); 4]);
    assert_eq!(
        again.images[0], out.images[0],
        "previews-only TAESD changed the final image"
    );
    let tiny_view = pipeline.preview(&again.latents).unwrap();
    assert_ne!(
        tiny_view[0], again.images[0],
        "TAESD and the full VAE decode alike?"
    );
}
