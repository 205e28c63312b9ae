//! The VAE against diffusers on tiny random configs (reference/harness_outputs.py,
//! write_vaes): encode mean/std, a seeded sample, decode, and tiled encode and
//! decode. f32 CPU, max-abs error <= 1e-4.

use sd_core::rng::CpuGenerator;
use sd_core::DiffusersModel;
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use sd_vae::AutoencoderKL;
use tch::{Device, Kind};

#[test]
fn vaes_match_diffusers() {
    let fixtures = reference_dir().join("fixtures");
    tch::set_num_threads(1);
    let reference = read_tensors(fixtures.join("outputs/vae.safetensors")).unwrap();
    let _guard = tch::no_grad_guard();
    for (name, folder) in [("sd1", "tiny-sd1"), ("sdxl", "tiny-sdxl")] {
        let t = |key: &str| take(&reference, &format!("{name}.{key}")).unwrap();
        let mut vae = AutoencoderKL::from_folder(
            fixtures.join(folder).join("vae"),
            Device::Cpu,
            Kind::Float,
            None,
        )
        .unwrap();
        let dist = vae.encode(&t("image")).unwrap();
        assert_matches(&format!("{name} mean"), &dist.mean, &t("mean"), 1);
        assert_matches(&format!("{name} std"), &dist.std, &t("std"), 1);
        let sample = dist.sample(&mut CpuGenerator::new(21).unwrap()).unwrap();
        assert_matches(&format!("{name} sample"), &sample, &t("sample"), 1);
        assert_matches(
            &format!("{name} decode"),
            &vae.decode(&t("latents")).unwrap(),
            &t("decoded"),
            1,
        );

        vae.set_tiling(Some(vae.default_tiling()));
        let decoded = vae.decode(&t("tiled_latents")).unwrap();
        assert_matches(
            &format!("{name} tiled decode"),
            &decoded,
            &t("tiled_decoded"),
            1,
        );
        let mean = vae.encode(&t("tiled_image")).unwrap().mean;
        assert_matches(&format!("{name} tiled encode"), &mean, &t("tiled_mean"), 1);

        // Slicing a batch gives the numbers of one batched call, within
        // rounding (one sample at a time is another convolution shape).
        vae.set_tiling(None);
        vae.set_slicing(true);
        sd_testkit::parity::assert_matches_reordered(
            &format!("{name} sliced decode"),
            &vae.decode(&t("latents")).unwrap(),
            &t("decoded"),
            1,
        );
    }
}

#[test]
fn scaling_comes_from_the_config() {
    let fixtures = reference_dir().join("fixtures");
    let sd1 = AutoencoderKL::from_folder(
        fixtures.join("tiny-sd1/vae"),
        Device::Cpu,
        Kind::Float,
        None,
    )
    .unwrap();
    let sdxl = AutoencoderKL::from_folder(
        fixtures.join("tiny-sdxl/vae"),
        Device::Cpu,
        Kind::Float,
        None,
    )
    .unwrap();
    let ones = tch::Tensor::ones([1, 4, 2, 2], (Kind::Float, Device::Cpu));
    assert!((sd1.scale_latents(&ones).double_value(&[0, 0, 0, 0]) - 0.18215).abs() < 1e-7);
    assert!((sdxl.scale_latents(&ones).double_value(&[0, 0, 0, 0]) - 0.13025).abs() < 1e-7);
    let back = sd1.unscale_latents(&sd1.scale_latents(&ones));
    assert!((back - ones).abs().max().double_value(&[]) < 1e-6);
    // force_upcast: an f16 request keeps the SDXL VAE in f32.
    let half = AutoencoderKL::from_folder(
        fixtures.join("tiny-sdxl/vae"),
        Device::Cpu,
        Kind::Half,
        None,
    )
    .unwrap();
    assert_eq!(half.dtype(), Kind::Float);
}

#[test]
fn half_precision_overflow_is_redone_in_f32() {
    // A bf16 VAE fed latents so large that the decode overflows to inf/NaN
    // must not return them: the f32 retry gives finite pixels.
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference_dir().join("fixtures/tiny-sd1/vae/config.json"))
            .unwrap(),
    )
    .unwrap();
    config["force_upcast"] = serde_json::json!(false);
    let dir = std::env::temp_dir().join(format!("sd-vae-overflow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        reference_dir().join("fixtures/tiny-sd1/vae/diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let vae = AutoencoderKL::from_folder(&dir, Device::Cpu, Kind::Half, None).unwrap();
    assert_eq!(vae.dtype(), Kind::Half);
    let _guard = tch::no_grad_guard();
    let z = tch::Tensor::full([1, 4, 8, 8], 1e6, (Kind::Float, Device::Cpu));
    let image = vae.decode(&z).unwrap();
    assert!(
        bool::try_from(image.isfinite().all()).unwrap(),
        "the retry must give finite pixels"
    );
    assert_eq!(image.kind(), Kind::Float);
}

/// SD3's 16-channel VAE (no quant convs, a shift factor; reference/harness_sd3.py):
/// encode, a seeded sample, the pipeline's scaling `(z - shift) * scale`, and
/// the decode of `latents / scale + shift`. f32 CPU, 1 ulp per evaluation.
#[test]
fn the_sd3_vae_matches_diffusers() {
    let fixtures = reference_dir().join("fixtures");
    tch::set_num_threads(1);
    let reference = read_tensors(fixtures.join("outputs/sd3_vae.safetensors")).unwrap();
    let t = |key: &str| take(&reference, key).unwrap();
    let _guard = tch::no_grad_guard();
    let vae = AutoencoderKL::from_folder(fixtures.join("sd3/vae"), Device::Cpu, Kind::Float, None)
        .unwrap();
    assert_eq!(vae.config().latent_channels, 16);
    let dist = vae.encode(&t("image")).unwrap();
    assert_matches("sd3 mean", &dist.mean, &t("mean"), 1);
    assert_matches("sd3 std", &dist.std, &t("std"), 1);
    let sample = dist.sample(&mut CpuGenerator::new(26).unwrap()).unwrap();
    assert_matches("sd3 sample", &sample, &t("sample"), 1);
    assert_matches("sd3 scaled", &vae.scale_latents(&sample), &t("scaled"), 1);
    let decoded = vae.decode(&vae.unscale_latents(&t("latents"))).unwrap();
    assert_matches("sd3 decode", &decoded, &t("decoded"), 1);
}
