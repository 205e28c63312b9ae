//! The `sd` binary end to end on the tiny demo model: files, metadata,
//! latents equal to the library's, and one clear line (no file) on bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

fn sd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(args)
        .output()
        .expect("sd runs")
}

fn scratch(name: &str) -> PathBuf {
    sd_testkit::scratch_dir(&format!("cli-{name}"))
}

fn fixtures() -> PathBuf {
    sd_testkit::parity::reference_dir().join("fixtures")
}

#[test]
fn txt2img_writes_images_metadata_and_latents() {
    let dir = scratch("txt2img");
    let out = dir.join("cat.png");
    let latents = dir.join("cat.safetensors");
    let tiny = fixtures().join("tiny-sd1");
    let run = sd(&[
        "txt2img",
        "--model",
        tiny.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--steps",
        "3",
        "--seed",
        "7",
        "--num-images",
        "2",
        "--scheduler",
        "euler",
        "--out",
        out.to_str().unwrap(),
        "--save-latents",
        latents.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.is_empty() || !stderr.contains("error"), "{stderr}");
    for i in 0..2 {
        let path = dir.join(format!("cat-{i}.png"));
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (32, 32));
        let text: Vec<(String, String)> = info
            .utf8_text
            .iter()
            .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
            .collect();
        assert!(text.contains(&("seed".into(), "7".into())), "{text:?}");
        assert!(
            text.contains(&("sampler".into(), "euler".into())),
            "{text:?}"
        );
        assert!(
            text.contains(&("prompt".into(), "a cat".into())),
            "{text:?}"
        );
        // A1111's sampler name in the infotext, as `sd serve` writes it.
        let parameters = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
        assert!(
            parameters.contains("Steps: 3, Sampler: Euler, CFG scale"),
            "{parameters}"
        );
    }
    // The saved latents are what the library computes for the same request.
    let saved = tch::Tensor::read_safetensors(&latents).unwrap();
    let pipeline = sd_pipeline::StableDiffusion::builder()
        .model_dir(fixtures().join("tiny-sd1"))
        .sampler(sd_pipeline::SamplerKind::Euler)
        .build()
        .unwrap();
    let mut request = sd_pipeline::Request::new("a cat");
    request.steps = 3;
    request.seed = 7.into();
    request.num_images = 2;
    let expected = pipeline.generate(&request).unwrap().latents;
    assert_eq!(saved[0].0, "latents");
    sd_testkit::parity::assert_close(
        "cli latents",
        &saved[0].1,
        &expected,
        sd_testkit::parity::Tolerance::abs(1e-5),
    );
}

#[test]
fn img2img_and_inpaint_run_from_files() {
    let dir = scratch("img");
    let init = fixtures().join("images/init.png");
    let mask = fixtures().join("images/mask.png");
    let out = dir.join("i2i.png");
    let run = sd(&[
        "img2img",
        "--model",
        fixtures().join("tiny-sd1").to_str().unwrap(),
        "--prompt",
        "x",
        "--steps",
        "4",
        "--seed",
        "1",
        "--init-image",
        init.to_str().unwrap(),
        "--strength",
        "0.5",
        "--out",
        out.to_str().unwrap(),
        "--save-latents",
        dir.join("i2i.safetensors").to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(image::open(&out).unwrap().to_rgb8().dimensions(), (64, 64));
    // img2img latents keep a channels-last layout; they must still save.
    let saved = tch::Tensor::read_safetensors(dir.join("i2i.safetensors")).unwrap();
    assert_eq!(saved[0].1.size(), vec![1, 4, 32, 32]);
    let out = dir.join("inpaint.png");
    let model = fixtures().join("tiny-sd1-inpaint");
    let run = sd(&[
        "inpaint",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--steps",
        "2",
        "--seed",
        "1",
        "--init-image",
        init.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.is_file());
}

fn fails_cleanly(args: &[&str], out: &Path, needle: &str) {
    let run = sd(args);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "{stderr}"
    );
    assert!(!out.exists(), "no output may be left behind");
    let dir = out.parent().unwrap();
    assert!(std::fs::read_dir(dir).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".partial")));
}

/// A forced CPU kernel path: libtorch 2.11 refuses bf16 attention under
/// `ATEN_CPU_CAPABILITY=avx2` or `default` on CPUs with AMX (Intel Sapphire
/// Rapids) and runs it on others. Either way the user gets an image or one
/// line naming the dtype and the variable, never a panic
/// (sd_core::kernels; its unit test simulates the refusal on every CPU).
#[test]
fn a_forced_cpu_kernel_path_gives_an_image_or_one_line() {
    let dir = scratch("capability");
    let tiny = fixtures().join("tiny-sd1");
    for capability in ["default", "avx2"] {
        let out = dir.join(format!("{capability}.png"));
        let run = Command::new(env!("CARGO_BIN_EXE_sd"))
            .env("ATEN_CPU_CAPABILITY", capability)
            .args([
                "txt2img",
                "--model",
                tiny.to_str().unwrap(),
                "--prompt",
                "x",
            ])
            .args([
                "--steps",
                "2",
                "--dtype",
                "bf16",
                "--out",
                out.to_str().unwrap(),
            ])
            .output()
            .expect("sd runs");
        let stderr = String::from_utf8_lossy(&run.stderr);
        if run.status.success() {
            assert!(out.exists(), "{capability}: {stderr}");
            continue;
        }
        let expected = format!(
            "error: libtorch cannot run bf16 attention on this CPU with \
             ATEN_CPU_CAPABILITY={capability} ("
        );
        assert!(
            stderr.lines().count() == 1 && stderr.starts_with(&expected),
            "{capability}: {stderr}"
        );
        assert!(!out.exists());
    }
}

/// The README's main command (the same arguments) draws what it says.
#[test]
fn without_a_model_the_readme_command_draws_a_blue_triangle() {
    let dir = scratch("default");
    let out = dir.join("triangle.png");
    let run = sd(&[
        "txt2img",
        "--prompt",
        "a large blue triangle on a white background",
        "--steps",
        "20",
        "--seed",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("shapes model"), "{stderr}");
    let image = image::open(&out).unwrap().to_rgb8();
    assert_eq!(image.dimensions(), (32, 32));
    let drawn = sd_train::analyzer::analyze(&image);
    let named = |i: Option<usize>, names: &[&str]| i.map(|i| names[i].to_string());
    let colours: Vec<&str> = sd_train::shapes::COLORS.iter().map(|c| c.0).collect();
    assert_eq!(
        (
            named(drawn.color, &colours),
            named(drawn.shape, &sd_train::shapes::SHAPES)
        ),
        (Some("blue".to_string()), Some("triangle".to_string())),
        "{drawn:?}"
    );
}

#[test]
fn bad_input_is_one_line_and_no_file() {
    let dir = scratch("bad");
    let out = dir.join("x.png");
    let o = out.to_str().unwrap();
    let init = fixtures().join("images/init.png");
    let init = init.to_str().unwrap();
    fails_cleanly(
        &["txt2img", "--prompt", "x", "--width", "60", "--out", o],
        &out,
        "--width: 60 is not a positive multiple of 8",
    );
    fails_cleanly(
        &[
            "txt2img",
            "--prompt",
            "x",
            "--scheduler",
            "dpm3",
            "--out",
            o,
        ],
        &out,
        "--scheduler: unknown sampler \"dpm3\"",
    );
    fails_cleanly(
        &[
            "img2img",
            "--prompt",
            "x",
            "--init-image",
            "/nonexistent.png",
            "--out",
            o,
        ],
        &out,
        "/nonexistent.png",
    );
    fails_cleanly(
        &[
            "inpaint",
            "--prompt",
            "x",
            "--init-image",
            init,
            "--mask",
            init,
            "--width",
            "32",
            "--out",
            o,
        ],
        &out,
        "",
    );
    let half = dir.join("half.png");
    image::GrayImage::new(32, 64).save(&half).unwrap();
    fails_cleanly(
        &[
            "inpaint",
            "--prompt",
            "x",
            "--init-image",
            init,
            "--mask",
            half.to_str().unwrap(),
            "--out",
            o,
        ],
        &out,
        "mask is 32x64",
    );
    let empty = scratch("empty-model");
    std::fs::copy(
        fixtures().join("tiny-sd1/model_index.json"),
        empty.join("model_index.json"),
    )
    .unwrap();
    fails_cleanly(
        &[
            "txt2img",
            "--model",
            empty.to_str().unwrap(),
            "--prompt",
            "x",
            "--out",
            o,
        ],
        &out,
        "missing component",
    );
    fails_cleanly(
        &["txt2img", "--prompt", "x", "--device", "gpu", "--out", o],
        &out,
        "'gpu'",
    );
}

#[test]
fn typos_get_an_error_naming_the_option_before_any_step() {
    let dir = scratch("typos");
    let out = dir.join("x.png");
    let txt2img = |out: &str, extra: &[&str]| {
        let mut args = vec!["txt2img", "--prompt", "x", "--steps", "2", "--out", out];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let check_with = |out: &Path, extra: &[&str], needle: &str| {
        let args = txt2img(out.to_str().unwrap(), extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_cleanly(&args, out, needle);
        let stderr = String::from_utf8_lossy(&sd(&args).stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    let check = |extra: &[&str], needle: &str| check_with(&out, extra, needle);
    // Far beyond any machine: refused by the size check, not by libtorch.
    check(
        &["--width", "100000", "--height", "100000"],
        "--width/--height: 100000x100000 needs at least",
    );
    check(&["--guidance", "nan"], "--guidance: NaN is not a number");
    check(&["--num-images", "0"], "--num-images: 0: at least 1");
    check_with(&dir.join("x.bmp"), &[], "unknown image format '.bmp'");
    // A .jpg name gets JPEG bytes.
    let jpg = dir.join("x.jpg");
    let run = sd(&txt2img(jpg.to_str().unwrap(), &["--seed", "1"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bytes = std::fs::read(&jpg).unwrap();
    assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF], "JPEG magic");
    assert_eq!(
        image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
            .unwrap()
            .to_rgb8()
            .dimensions(),
        (32, 32)
    );
}

/// The default model travels inside the binary: a copy of it in another
/// folder, with another home and no path into this source tree, still runs
/// the README's main job (and writes the model to its own cache once).
#[test]
fn the_shapes_model_is_inside_the_binary() {
    let source_model = concat!(env!("CARGO_MANIFEST_DIR"), "/shapes");
    let binary = std::fs::read(env!("CARGO_BIN_EXE_sd")).unwrap();
    assert!(
        !binary
            .windows(source_model.len())
            .any(|w| w == source_model.as_bytes()),
        "the binary names {source_model}"
    );
    // Nor does it find libtorch through the clone (the setup's `.libtorch` link).
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.libtorch/lib");
    let root = std::path::Path::new(root).components().collect::<PathBuf>();
    let linked = format!("{}", normalize(&root).display());
    for end in [b':', 0u8] {
        let needle = [linked.as_bytes(), &[end]].concat();
        assert!(
            !binary.windows(needle.len()).any(|w| w == needle.as_slice()),
            "the binary's run path goes through {linked}"
        );
    }
    let elsewhere = scratch("installed");
    let installed = elsewhere.join("sd");
    std::fs::copy(env!("CARGO_BIN_EXE_sd"), &installed).unwrap();
    let home = elsewhere.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let run = |out: &str| {
        Command::new(&installed)
            .args([
                "txt2img",
                "--prompt",
                "a small red circle on a black background",
            ])
            .args(["--steps", "4", "--seed", "3", "--out", out])
            .current_dir(&elsewhere)
            .env_clear()
            .env("HOME", &home)
            .output()
            .unwrap()
    };
    let first = run("first.png");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let cached: Vec<_> = std::fs::read_dir(home.join(".cache/sd-rs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        cached.len() == 1 && cached[0].starts_with("shapes-"),
        "{cached:?}"
    );
    // The second run loads the cached folder: the same pixels.
    let second = run("second.png");
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let image = |name: &str| image::open(elsewhere.join(name)).unwrap().to_rgb8();
    assert_eq!(image("first.png").dimensions(), (32, 32));
    assert_eq!(image("first.png"), image("second.png"));
}

/// `path` without `..` components (without touching the file system).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// An SD3 folder through the CLI: the latents of diffusers'
/// StableDiffusion3Pipeline (two images from one generator at 48x32,
/// reference/harness_sd3.py) within the error model (bit for bit on the
/// reference machine), with the SD3 options; `--t5 none` runs without T5;
/// SD3's refusals name their option.
#[test]
fn sd3_runs_through_the_cli() {
    let dir = scratch("sd3");
    let model = fixtures().join("sd3/pipeline");
    let latents = dir.join("sd3.safetensors");
    let out = dir.join("sd3.png");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "txt2img",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a red circle on a white background",
            "--negative-prompt",
            "blurry",
            "--steps",
            "4",
            "--guidance",
            "5",
            "--width",
            "48",
            "--height",
            "32",
            "--num-images",
            "2",
            "--seed",
            "1",
            "--max-sequence-length",
            "16",
            "--out",
            out.to_str().unwrap(),
            "--save-latents",
            latents.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run_with = |extra: &[&str]| {
        let owned = args(extra);
        sd(&owned.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let run = run_with(&[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let reference =
        sd_testkit::parity::read_tensors(fixtures().join("outputs/sd3_runs.safetensors")).unwrap();
    let ours = sd_testkit::parity::read_tensors(&latents).unwrap();
    sd_testkit::parity::assert_matches(
        "cli f32.txt2img",
        &ours["latents"],
        &reference["f32.txt2img"],
        4,
    );
    let without = run_with(&["--t5", "none"]);
    assert!(
        without.status.success(),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
    let no_t5 = sd_testkit::parity::read_tensors(&latents).unwrap();
    let moved = (&no_t5["latents"] - &ours["latents"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        moved > 1e-3,
        "without T5 the prompt's T5 states are zeros: {moved}"
    );
    // T5 from a file of its own (here the folder's own weights): the same run
    let t5_file = fixtures().join("sd3/pipeline/text_encoder_3/model.safetensors");
    let t5_file = t5_file.to_str().unwrap();
    let from_file = run_with(&["--t5", t5_file]);
    assert!(
        from_file.status.success(),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
    let again = sd_testkit::parity::read_tensors(&latents).unwrap();
    assert!(again["latents"].equal(&ours["latents"]), "--t5 FILE");
    for (extra, expected) in [
        (
            &["--guidance-rescale", "0.7"][..],
            "--guidance-rescale: SD3 has no guidance rescale",
        ),
        (&["--clip-l", t5_file][..], "not a CLIP text encoder"),
        (
            &["--skip-layer-guidance", "9"][..],
            "--skip-layer-guidance: layer 9",
        ),
        (
            &["--t5", "t5.safetensors"][..],
            "--t5: t5.safetensors: no such file",
        ),
        (
            &["--scheduler", "euler"][..],
            "--scheduler: euler is for SD1.x/SD2.x/SDXL",
        ),
    ] {
        let run = run_with(extra);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && stderr.contains(expected),
            "{extra:?}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

/// `sd convert` writes the tiny folder's UNet as Q8_0 GGUF; `--model FILE
/// --config-dir FOLDER` runs it as the library does; a type a format cannot
/// hold is one line and no file.
#[test]
fn convert_writes_a_gguf_that_runs_as_the_library_runs_it() {
    let dir = scratch("convert");
    let tiny = fixtures().join("tiny-sd1");
    let gguf = dir.join("unet-q8_0.gguf");
    let run = sd(&[
        "convert",
        tiny.to_str().unwrap(),
        gguf.to_str().unwrap(),
        "--type",
        "q8_0",
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("10 quantized"), "{stdout}");
    let latents = dir.join("q8.safetensors");
    let run = sd(&[
        "txt2img",
        "--model",
        gguf.to_str().unwrap(),
        "--config-dir",
        tiny.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--steps",
        "3",
        "--seed",
        "7",
        "--scheduler",
        "euler",
        "--out",
        dir.join("q8.png").to_str().unwrap(),
        "--save-latents",
        latents.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let saved = tch::Tensor::read_safetensors(&latents).unwrap();
    let pipeline = sd_pipeline::StableDiffusion::builder()
        .single_file(&gguf)
        .config_dir(&tiny)
        .sampler(sd_pipeline::SamplerKind::Euler)
        .build()
        .unwrap();
    let mut request = sd_pipeline::Request::new("a cat");
    request.steps = 3;
    request.seed = 7.into();
    let expected = pipeline.generate(&request).unwrap().latents;
    sd_testkit::parity::assert_close(
        "cli GGUF latents",
        &saved[0].1,
        &expected,
        sd_testkit::parity::Tolerance::abs(1e-5),
    );
    let back = dir.join("back.safetensors");
    let args = ["convert", gguf.to_str().unwrap(), back.to_str().unwrap()];
    fails_cleanly(
        &[&args[..], &["--type", "q4_0"]].concat(),
        &back,
        "type q4_0",
    );
    let k = dir.join("k.gguf");
    let args = [
        "convert",
        tiny.to_str().unwrap(),
        k.to_str().unwrap(),
        "--type",
        "q4_k",
    ];
    fails_cleanly(&args, &k, "type q4_k: not one of");
}

/// A FLUX.1-dev folder through `sd txt2img`: `--guidance` is the distilled
/// guidance; the latents are diffusers' FluxPipeline's (packed as it keeps
/// them).
#[test]
fn flux_runs_through_the_cli() {
    let dir = scratch("flux");
    let model = fixtures().join("flux/pipeline-dev");
    let latents = dir.join("flux.safetensors");
    let run = sd(&[
        "txt2img",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a red circle on a white background",
        "--steps",
        "3",
        "--guidance",
        "3.5",
        "--width",
        "48",
        "--height",
        "32",
        "--num-images",
        "2",
        "--seed",
        "0",
        "--max-sequence-length",
        "16",
        "--out",
        dir.join("flux.png").to_str().unwrap(),
        "--save-latents",
        latents.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let reference =
        sd_testkit::parity::read_tensors(fixtures().join("outputs/flux_pipeline.safetensors"))
            .unwrap();
    let ours = sd_testkit::parity::read_tensors(&latents).unwrap();
    let packed = sd_flux::packing::pack(&ours["latents"]);
    sd_testkit::parity::assert_matches("cli flux dev", &packed, &reference["dev.f32"], 3);
}
