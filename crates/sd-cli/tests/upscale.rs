//! `sd upscale` and `sd txt2img --hires-*` end to end: the pixels are
//! spandrel's output written as 8-bit (`round(255 * x)`), from a `.pth`
//! checkpoint; hires fix's latents are its composed diffusers reference's;
//! bad input is one line and no file.

mod common;

use common::{fixtures, scratch, sd, HIRES_FIRST_PASS};
use sd_testkit::parity::{assert_matches, read_tensors, take};

#[test]
fn upscale_writes_spandrels_pixels() {
    let dir = scratch("upscale", "pth");
    let out = dir.join("big.png");
    let image = fixtures().join("images/init-32.png");
    let model = fixtures().join("upscale/esrgan-x4.pth");
    let (image, out_s, model) = (
        image.to_str().unwrap(),
        out.to_str().unwrap(),
        model.to_str().unwrap(),
    );
    let run = sd(&["upscale", image, out_s, "--model", model, "--tile", "0"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let written = image::open(&out).unwrap().to_rgb8();
    assert_eq!(written.dimensions(), (128, 128));
    let reference = read_tensors(fixtures().join("outputs/upscale.safetensors")).unwrap();
    let want = take(&reference, "esrgan-x4.f32").unwrap();
    assert_eq!(written.as_raw(), &common::rgb_bytes(&want));

    let bad = dir.join("bad.png");
    let malicious = fixtures().join("upscale/malicious.pth");
    let run = sd(&[
        "upscale",
        image,
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

/// `--hires-upscaler latent` at strength 0.6: the second pass's latents are
/// the composed diffusers reference's (reference/harness_hires.py).
#[test]
fn hires_fix_through_the_cli_matches_its_reference() {
    let dir = scratch("upscale", "hires");
    let latents = dir.join("latents.safetensors");
    let tiny = fixtures().join("tiny-sd1");
    let mut args = vec!["txt2img", "--model", tiny.to_str().unwrap()];
    args.extend(HIRES_FIRST_PASS);
    let out = dir.join("hires.png");
    args.extend([
        "--hires-upscaler",
        "latent",
        "--hires-strength",
        "0.6",
        "--out",
        out.to_str().unwrap(),
    ]);
    args.extend(["--save-latents", latents.to_str().unwrap()]);
    let run = sd(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(image::open(&out).unwrap().to_rgb8().dimensions(), (64, 64));
    let ours = read_tensors(&latents).unwrap();
    let reference = read_tensors(fixtures().join("outputs/hires.safetensors")).unwrap();
    let want = take(&reference, "latent").unwrap();
    assert_matches("cli hires", ours.values().next().unwrap(), &want, 8);

    let no = dir.join("no.png");
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
        no.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("--hires-*: \"bilinear-ish\" is neither a mode"),
        "{stderr}"
    );
    assert!(!no.exists());
}
