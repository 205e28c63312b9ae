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
