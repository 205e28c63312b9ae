//! `sd compile` then `sd txt2img --compiled` (issue 32): the tiny SD1's UNet
//! compiled by the virtualenv's torch, the compiled run within the error
//! model of the eager one (fusion rounds otherwise), `--list` showing the
//! package; two sizes from one `sd compile`; another size runs eager and says so; `sd serve --compiled`
//! gives the CLI's compiled pixels.

mod common;

use std::process::{Command, Output};

use common::fixtures;
use common::server::{decode_png, Served};
use sd_testkit::parity::{assert_matches_reordered, read_tensors, reference_dir, take};
use serde_json::json;

/// Where packages are kept: under the build folder, shared with the
/// pipeline's suite, so the compile happens once.
fn cache() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache")
}

/// `sd ARGS` with that cache and the project's Python.
fn sd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("XDG_CACHE_HOME", cache())
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
    // two sizes in one command (64x64 is the pipeline suite's: compiled once
    // for both), the UNet's alone (the decoder's is the pipeline suite's)
    let compile = [
        "compile", "--model", tiny, "--size", "64x64", "--size", "48x48", "--part", "unet",
    ];
    let compiled = ok(&sd(&compile));
    assert!(compiled.contains("48x48 ready in"), "{compiled}");
    let bad = sd(&["compile", "--model", tiny, "--size", "64"]);
    let bad = String::from_utf8_lossy(&bad.stderr);
    assert!(bad.contains("\"64\" is not WxH"), "{bad}");
    let bad = sd(&["compile", "--model", tiny, "--part", "text-encoder"]);
    let bad = String::from_utf8_lossy(&bad.stderr);
    assert!(
        bad.contains(
            "--part <PART>': \"text-encoder\" is not a part to compile (unet, vae-decoder)"
        ),
        "{bad}"
    );
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
    let (compiled, stderr) = latents("compiled-48", &["--compiled"], "48");
    assert!(
        !stderr.contains("no compiled UNet") && !stderr.contains("running eager"),
        "{stderr}"
    );
    let (eager, _) = latents("eager-48", &[], "48");
    assert_matches_reordered("cli compiled 48x48", &compiled, &eager, 4);
    let (_, stderr) = latents("other", &["--compiled"], "32");
    assert!(
        stderr.contains("no compiled UNet for this model at 32x32"),
        "{stderr}"
    );
    // `sd serve --compiled`: the CLI's compiled pixels exactly (PLMS: the
    // model's own scheduler, the CLI's default; here the eager image is 1
    // level away, so an eager server fails this)
    let cache = cache();
    let server = Served::start_env(
        &dir.join("data"),
        &["--model", tiny, "--compiled"],
        &[("XDG_CACHE_HOME", cache.as_path())],
    );
    let body = json!({"prompt": "a red circle", "steps": 4, "seed": 0, "width": 64,
                      "height": 64, "cfg_scale": 7.5, "sampler_name": "PLMS"});
    let reply = server.post("/sdapi/v1/txt2img", &body);
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let (served, _) = decode_png(reply.body["images"][0].as_str().unwrap());
    let cli = image::open(dir.join("compiled.png"))
        .unwrap()
        .to_rgb8()
        .into_raw();
    let eager = image::open(dir.join("eager.png"))
        .unwrap()
        .to_rgb8()
        .into_raw();
    let worst = sd_testkit::parity::max_pixel_difference(&served, &cli).expect("same size");
    let from_eager = sd_testkit::parity::max_pixel_difference(&served, &eager).expect("same size");
    assert!(
        worst == 0,
        "sd serve --compiled is {worst} levels from sd txt2img --compiled ({from_eager} from eager)"
    );
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
}
