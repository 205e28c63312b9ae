//! `sd upscale` end to end: the pixels are spandrel's output written as
//! 8-bit (`round(255 * x)`), from a `.pth` checkpoint; bad input is one line
//! and no file.

use std::process::Command;

use sd_testkit::parity::{read_tensors, reference_dir, take};
use tch::Kind;

fn sd(args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_sd")).args(args).output();
    output.expect("sd runs")
}

#[test]
fn upscale_writes_spandrels_pixels() {
    let fixtures = reference_dir().join("fixtures");
    let dir = sd_testkit::scratch_dir("cli-upscale");
    let out = dir.join("big.png");
    let image = fixtures.join("images/init-32.png");
    let model = fixtures.join("upscale/esrgan-x4.pth");
    let run = sd(&[
        "upscale",
        image.to_str().unwrap(),
        out.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--tile",
        "0",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let written = image::open(&out).unwrap().to_rgb8();
    assert_eq!(written.dimensions(), (128, 128));
    let reference = read_tensors(fixtures.join("outputs/upscale.safetensors")).unwrap();
    let want = take(&reference, "esrgan-x4.f32").unwrap();
    let want: Vec<u8> = Vec::try_from(
        (want * 255.0)
            .round()
            .to_kind(Kind::Uint8)
            .squeeze_dim(0)
            .permute([1, 2, 0])
            .contiguous()
            .flatten(0, -1),
    )
    .unwrap();
    assert_eq!(written.as_raw(), &want);

    let bad = dir.join("bad.png");
    let malicious = fixtures.join("upscale/malicious.pth");
    let run = sd(&[
        "upscale",
        image.to_str().unwrap(),
        bad.to_str().unwrap(),
        "--model",
        malicious.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("posix.system"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!bad.exists());
}

/// `sd txt2img --hires-scale 2 --hires-upscaler latent`: the second pass's
/// latents are the composed diffusers reference's (reference/harness_hires.py).
#[test]
fn hires_fix_through_the_cli_matches_its_reference() {
    let fixtures = reference_dir().join("fixtures");
    let dir = sd_testkit::scratch_dir("cli-hires");
    let latents = dir.join("latents.safetensors");
    let tiny = fixtures.join("tiny-sd1");
    let run = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args([
            "txt2img",
            "--model",
            tiny.to_str().unwrap(),
            "--prompt",
            "a red circle on a white background",
        ])
        .args([
            "--width",
            "32",
            "--height",
            "32",
            "--steps",
            "4",
            "--scheduler",
            "euler",
            "--seed",
            "3",
        ])
        .args([
            "--guidance",
            "7.5",
            "--hires-scale",
            "2",
            "--hires-upscaler",
            "latent",
            "--hires-strength",
            "0.6",
        ])
        .args([
            "--out",
            dir.join("hires.png").to_str().unwrap(),
            "--save-latents",
            latents.to_str().unwrap(),
        ])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        image::open(dir.join("hires.png"))
            .unwrap()
            .to_rgb8()
            .dimensions(),
        (64, 64)
    );
    let ours = read_tensors(&latents).unwrap();
    let ours = ours.values().next().unwrap();
    let reference = read_tensors(fixtures.join("outputs/hires.safetensors")).unwrap();
    sd_testkit::parity::assert_matches("cli hires", ours, &take(&reference, "latent").unwrap(), 8);
    let bad = sd(&[
        "txt2img",
        "--model",
        tiny.to_str().unwrap(),
        "--prompt",
        "x",
        "--hires-scale",
        "2",
        "--hires-upscaler",
        "bilinear-ish",
        "--out",
        dir.join("no.png").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("--hires-upscaler: \"bilinear-ish\""),
        "{stderr}"
    );
}
