//! Hires fix against its composed diffusers references (reference/harness_hires.py):
//! the tiny SD1 pipeline at 32x32, enlarged to 64x64 by each kind of
//! `hr_upscaler`, then image-to-image at strength 0.6, Euler, 4 steps a pass.

use sd_pipeline::{
    HiresFix, HiresSize, HiresUpscaler, LatentResize, Request, SamplerKind, StableDiffusion,
};
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};

fn request(upscaler: HiresUpscaler) -> Request {
    let mut r = Request::new("a red circle on a white background").with_seed(3);
    (r.steps, r.guidance_scale, r.sampler) = (4, 7.5, Some(SamplerKind::Euler));
    (r.width, r.height) = (Some(32), Some(32));
    let mut hires = HiresFix::new(HiresSize::Scale(2.0), upscaler);
    hires.strength = 0.6;
    r.hires = Some(hires);
    r
}

#[test]
fn every_upscaler_kind_matches_its_composed_reference() {
    tch::set_num_threads(1);
    let fixtures = reference_dir().join("fixtures");
    let reference = read_tensors(fixtures.join("outputs/hires.safetensors")).unwrap();
    let pipeline = StableDiffusion::builder()
        .model_dir(fixtures.join("tiny-sd1"))
        .build()
        .unwrap();
    let model = fixtures.join("upscale/realesrgan-x2.safetensors");
    let cases = [
        ("latent", HiresUpscaler::Latent(LatentResize::Bilinear)),
        (
            "latent-nearest-exact",
            HiresUpscaler::Latent(LatentResize::NearestExact),
        ),
        (
            "latent-bicubic-antialiased",
            HiresUpscaler::Latent(LatentResize::BicubicAntialiased),
        ),
        ("model", HiresUpscaler::Model(model)),
    ];
    for (name, upscaler) in cases {
        let generation = pipeline.generate(&request(upscaler)).unwrap();
        assert_eq!(generation.images[0].dimensions(), (64, 64));
        // two passes of 4 steps, the second from 0.6 of its schedule
        assert_matches(
            name,
            &generation.latents,
            &take(&reference, name).unwrap(),
            8,
        );
    }
    let mut bad = request(HiresUpscaler::Lanczos);
    bad.hires.as_mut().unwrap().strength = 1.5;
    let error = pipeline
        .generate(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("hires: strength 1.5 is outside (0, 1]"),
        "{error}"
    );
    assert_eq!(
        HiresUpscaler::parse("Latent (bicubic)"),
        Some(HiresUpscaler::Latent(LatentResize::Bicubic))
    );
}
