//! `sd compile` then `sd txt2img --compiled` (issue 32): the tiny SD1's UNet
//! compiled by the virtualenv's torch, the compiled run within the error
//! model of the eager one (fusion rounds otherwise), `--list` showing the
//! package; another size runs eager and says so.

mod common;

use std::process::{Command, Output};

use common::fixtures;
use sd_testkit::parity::{assert_matches_reordered, read_tensors, reference_dir, take};

/// `sd ARGS` with the packages kept under the build folder (shared with the
/// pipeline's suite, so the compile happens once) and the project's Python.
fn sd(args: &[&str]) -> Output {
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache");
    Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("XDG_CACHE_HOME", cache)
        .env("SD_PYTHON", reference_dir().join("../.venv/bin/python"))
        .output()
        .expect("sd runs")
}

fn ok(run: &Output) -> String {
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stderr}");
    stderr
}

#[test]
fn compile_then_run_compiled() {
    let dir = common::scratch("compile", "run");
    let tiny = fixtures().join("tiny-sd1");
    let tiny = tiny.to_str().unwrap();
    let compile = [
        "compile", "--model", tiny, "--width", "64", "--height", "64",
    ];
    ok(&sd(&compile));
    let listed = sd(&["compile", "--list"]);
    ok(&listed);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(".pt2"));
    let latents = |name: &str, extra: &[&str], size: &str| {
        let out = dir.join(format!("{name}.png"));
        let saved = out.with_extension("safetensors");
        let (out, saved) = (
            out.to_str().unwrap().to_string(),
            saved.to_str().unwrap().to_string(),
        );
        let mut args = vec![
            "txt2img",
            "--model",
            tiny,
            "--prompt",
            "a red circle",
            "--steps",
            "4",
            "--seed",
            "0",
            "--width",
            size,
            "--height",
            size,
            "--out",
            &out,
            "--save-latents",
            &saved,
        ];
        args.extend_from_slice(extra);
        let stderr = ok(&sd(&args));
        (
            take(&read_tensors(&saved).unwrap(), "latents").unwrap(),
            stderr,
        )
    };
    let (compiled, stderr) = latents("compiled", &["--compiled"], "64");
    assert!(!stderr.contains("running eager"), "{stderr}");
    let (eager, _) = latents("eager", &[], "64");
    assert_matches_reordered("cli compiled", &compiled, &eager, 4);
    let (_, stderr) = latents("other", &["--compiled"], "32");
    assert!(
        stderr.contains("no compiled UNet for this model at 32x32"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
