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
