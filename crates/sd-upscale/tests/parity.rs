//! Upscalers against spandrel (reference/harness_upscale.py): random-weight
//! models of each architecture and key layout, built with spandrel's classes
//! and loaded back by spandrel's detection, on images/init-32.png.

use std::path::PathBuf;

use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use sd_upscale::{Architecture, Tiling, Upscaler};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    reference_dir().join("fixtures")
}

/// The test image as spandrel gets it: (1, 3, H, W), u8 / 255 in f32.
fn image() -> Tensor {
    let rgb = image::open(fixtures().join("images/init-32.png"))
        .unwrap()
        .to_rgb8();
    let (w, h) = rgb.dimensions();
    Tensor::from_slice(rgb.as_raw())
        .reshape([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float)
        / 255.0
}

fn open(name: &str, kind: Kind) -> Upscaler {
    let path = fixtures().join(format!("upscale/{name}.safetensors"));
    Upscaler::open(path, Device::Cpu, kind).unwrap()
}

#[test]
fn every_architecture_and_layout_matches_spandrel() {
    tch::set_num_threads(1);
    let reference = read_tensors(fixtures().join("outputs/upscale.safetensors")).unwrap();
    let cases = [
        ("esrgan-x4", 4),
        ("realesrgan-x2", 2),
        ("bsrgan-x4", 4),
        ("esrgan-plus-x2", 2),
        ("compact-x4", 4),
    ];
    for (name, scale) in cases {
        let model = open(name, Kind::Float);
        assert_eq!(model.scale(), scale, "{name}");
        let out = model.upscale(&image(), None).unwrap();
        let key = format!("{name}.f32");
        assert_matches(&key, &out, &take(&reference, &key).unwrap(), 1);
    }
    let compact = open("compact-x4", Kind::Float).architecture();
    assert!(matches!(compact, Architecture::Compact(c) if c.convs == 4 && c.features == 16));
    let x2 = open("realesrgan-x2", Kind::Float).architecture();
    assert!(matches!(x2, Architecture::Esrgan(c) if c.unshuffle == Some(2) && c.blocks == 1));
}

#[test]
fn bf16_matches_spandrel_in_bf16() {
    tch::set_num_threads(1);
    let reference = read_tensors(fixtures().join("outputs/upscale.safetensors")).unwrap();
    let model = open("esrgan-x4", Kind::BFloat16);
    let out = model
        .forward(&image().to_kind(Kind::BFloat16))
        .unwrap()
        .clamp(0.0, 1.0);
    let want = take(&reference, "esrgan-x4.bf16").unwrap();
    assert_matches("esrgan-x4.bf16", &out, &want, 1);
}

/// 16-pixel tiles sharing 4: the harness' composition of the same tiling
/// (bit for bit), and within the seam bound of the untiled result.
#[test]
fn tiles_match_their_composed_reference() {
    tch::set_num_threads(1);
    let reference = read_tensors(fixtures().join("outputs/upscale.safetensors")).unwrap();
    let model = open("esrgan-x4", Kind::Float);
    let tiled = model
        .upscale(&image(), Some(Tiling::new(16, 4).unwrap()))
        .unwrap();
    let want = take(&reference, "esrgan-x4.tiled").unwrap();
    assert_matches("esrgan-x4.tiled", &tiled, &want, 1);
    let whole = model.upscale(&image(), None).unwrap();
    let seam = (&tiled - &whole).abs().max().double_value(&[]);
    assert!(seam < 0.25, "tiled vs whole: {seam}");
    assert!(seam > 0.0, "tiles that see less context cannot be exact");
}

#[test]
fn bad_files_and_inputs_are_refused_in_one_line() {
    let dir = sd_testkit::scratch_dir("upscale-bad");
    let path = dir.join("not-an-upscaler.safetensors");
    let tensors = [(
        "conv.weight",
        Tensor::zeros([4, 3, 3, 3], (Kind::Float, Device::Cpu)),
    )];
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let error = Upscaler::open(&path, Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("not an upscaler this crate knows"),
        "{error}"
    );
    let model = open("esrgan-x4", Kind::Float);
    let gray = Tensor::zeros([1, 1, 8, 8], (Kind::Float, Device::Cpu));
    let error = model.upscale(&gray, None).unwrap_err().to_string();
    assert!(
        error.contains("this model takes (batch, 3, height, width)"),
        "{error}"
    );
    assert!(Tiling::new(16, 8).is_err());
}

/// The `.pth` checkpoints (`torch.save`'s zip format: a plain state dict, and
/// BasicSR's `{"params_ema": ...}`) give the `.safetensors` files' results.
#[test]
fn pth_checkpoints_load_as_their_safetensors() {
    tch::set_num_threads(1);
    for name in ["esrgan-x4", "realesrgan-x2"] {
        let path = fixtures().join(format!("upscale/{name}.pth"));
        let pth = Upscaler::open(path, Device::Cpu, Kind::Float).unwrap();
        let out = pth.upscale(&image(), None).unwrap();
        let want = open(name, Kind::Float).upscale(&image(), None).unwrap();
        assert!(out.equal(&want), "{name}");
    }
}

/// A checkpoint whose unpickling would run `os.system` (what `torch.load`
/// without `weights_only` does) is refused, naming the call, and nothing runs.
#[test]
fn a_malicious_checkpoint_is_refused_without_running() {
    let marker = std::path::Path::new("/tmp/sd-rs-pickle-ran");
    let _ = std::fs::remove_file(marker);
    let path = fixtures().join("upscale/malicious.pth");
    let error = Upscaler::open(&path, Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(error.contains("it would call 'posix.system'"), "{error}");
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(!marker.exists());
}
