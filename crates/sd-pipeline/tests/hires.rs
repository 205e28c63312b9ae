//! Hires fix against its composed diffusers references (reference/harness_hires.py):
//! the tiny SD1 pipeline at 32x32, enlarged to 64x64 by each kind of
//! `hr_upscaler`, then image-to-image at strength 0.6, Euler, 4 steps a pass;
//! the tiny SDXL pipeline the same way with "Latent" and "Lanczos", and the
//! tiny SD2 (v-prediction) with "Latent".

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
        ("lanczos", HiresUpscaler::Lanczos),
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

/// SDXL's second pass is conditioned on the enlarged size, as diffusers'
/// SDXL image-to-image pipeline does it; SD2 predicts v in both passes.
#[test]
fn sdxl_and_sd2_hires_match_their_composed_references() {
    tch::set_num_threads(1);
    let fixtures = reference_dir().join("fixtures");
    let reference = read_tensors(fixtures.join("outputs/hires.safetensors")).unwrap();
    let model = |folder: &str| {
        let builder = StableDiffusion::builder().model_dir(fixtures.join(folder));
        builder.build().unwrap()
    };
    let (sdxl, sd2) = (model("tiny-sdxl"), model("tiny-sd2"));
    let cases = [
        (
            &sdxl,
            "sdxl-latent",
            HiresUpscaler::Latent(LatentResize::Bilinear),
        ),
        (&sdxl, "sdxl-lanczos", HiresUpscaler::Lanczos),
        (
            &sd2,
            "sd2-latent",
            HiresUpscaler::Latent(LatentResize::Bilinear),
        ),
    ];
    for (pipeline, name, upscaler) in cases {
        let generation = pipeline.generate(&request(upscaler)).unwrap();
        assert_eq!(generation.images[0].dimensions(), (64, 64));
        let want = take(&reference, name).unwrap();
        assert_matches(name, &generation.latents, &want, 8);
    }
}

/// Pillow's LANCZOS resize, pixel for pixel: up, down, one axis.
#[test]
fn lanczos_resizes_as_pillow() {
    let fixtures = reference_dir().join("fixtures");
    let reference = read_tensors(fixtures.join("outputs/hires.safetensors")).unwrap();
    let photo = image::open(fixtures.join("images/init-72x64.png"))
        .unwrap()
        .to_rgb8();
    for (w, h) in [(100, 90), (31, 17), (72, 40), (7, 64)] {
        let ours = sd_pipeline::resample::resize_lanczos(&photo, w, h);
        let want = take(&reference, &format!("pil.lanczos.{w}x{h}.image")).unwrap();
        let want = Vec::<u8>::try_from(want.flatten(0, -1)).unwrap();
        assert_eq!(ours.as_raw(), &want, "{w}x{h}");
    }
}

/// The PNG's A1111 infotext carries hires fix as A1111 writes it: `Size` is
/// the first pass's, then the hires keys.
#[test]
fn the_infotext_says_hires_as_a1111() {
    use sd_pipeline::front::{Limits, Parameters};
    let mut p = Parameters::new("a cat");
    (p.steps, p.width, p.height, p.seed) = (4, Some(32), Some(32), Some(1));
    p.hires = Some(HiresFix::new(
        HiresSize::Scale(2.0),
        HiresUpscaler::Latent(LatentResize::Bicubic),
    ));
    let checked = p.check(&Limits::NONE, None).unwrap();
    let text = checked
        .generation_parameters(0, (64, 64), SamplerKind::Euler, "tiny")
        .infotext();
    let tail =
        "Size: 32x32, Model: tiny, Denoising strength: 0.7, Hires upscale: 2, Hires steps: 4, \
                Hires upscaler: Latent (bicubic)";
    assert!(text.ends_with(tail), "{text}");
}
