//! Helpers the CLI suites share: the fixtures, running `sd`, scratch folders.
//! (Each suite uses some of them.)
#![allow(dead_code)]

pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixtures() -> PathBuf {
    sd_testkit::parity::reference_dir().join("fixtures")
}

/// `sd` with `args`, single-threaded (the references were made so).
pub fn sd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("sd runs")
}

/// A fresh folder for one test of one suite.
pub fn scratch(suite: &str, name: &str) -> PathBuf {
    sd_testkit::scratch_dir(&format!("cli-{suite}-{name}"))
}

/// `sd txt2img` on the tiny SD1 model as the harness runs it (4 steps,
/// seed 0, 64x64), writing `out` and its latents beside it, plus `extra`.
pub fn txt2img(prompt: &str, extra: &[&str], out: &Path) -> Output {
    let tiny = fixtures().join("tiny-sd1");
    let latents = out.with_extension("safetensors");
    let mut args = vec![
        "txt2img",
        "--model",
        tiny.to_str().unwrap(),
        "--prompt",
        prompt,
        "--steps",
        "4",
        "--seed",
        "0",
        "--width",
        "64",
        "--height",
        "64",
        "--out",
        out.to_str().unwrap(),
        "--save-latents",
        latents.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    sd(&args)
}

/// A (1, 3, H, W) tensor of 0..1 values as 8-bit RGB bytes, `round(255 * x)`.
pub fn rgb_bytes(image: &tch::Tensor) -> Vec<u8> {
    let bytes = (image * 255.0).round().to_kind(tch::Kind::Uint8);
    let hwc = bytes.squeeze_dim(0).permute([1, 2, 0]).contiguous();
    Vec::<u8>::try_from(hwc.flatten(0, -1)).expect("bytes")
}

/// The first pass of the hires-fix references (reference/harness_hires.py):
/// `sd txt2img` options before the `--hires-*` ones.
pub const HIRES_FIRST_PASS: [&str; 16] = [
    "--prompt",
    "a red circle on a white background",
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
    "--guidance",
    "7.5",
    "--hires-scale",
    "2",
];
