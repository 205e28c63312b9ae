//! `--lora`, `<lora:NAME:SCALE>` with `--lora-dir`, `--embedding` and
//! `--verbose` end to end: the saved latents equal diffusers' reference for
//! the same LoRA (reference/harness_lora.py), both ways of naming a LoRA give
//! the same pixels, and bad LoRA options fail with one line naming them.

mod common;

use common::{fixtures, sd, txt2img};
use sd_testkit::parity::{assert_close, chain_tolerance_for, read_tensors, take};

fn scratch(name: &str) -> std::path::PathBuf {
    common::scratch("lora", name)
}

#[test]
fn lora_options_match_diffusers_and_each_other() {
    let dir = scratch("options");
    let lora_dir = fixtures().join("lora");
    let kohya = lora_dir.join("sd1-kohya.safetensors");
    let prompt = "a red circle on a white background";

    let by_option = dir.join("option.png");
    let with_scale = format!("{}:0.6", kohya.display());
    let run = txt2img(prompt, &["--lora", &with_scale, "--verbose"], &by_option);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("merged") && stderr.contains("skipped 0"),
        "{stderr}"
    );

    // the prompt tag names the same file, at the same scale
    let by_tag = dir.join("tag.png");
    let tagged = format!("{prompt} <lora:sd1-kohya:0.6>");
    let run = txt2img(
        &tagged,
        &["--lora-dir", lora_dir.to_str().unwrap()],
        &by_tag,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let a = image::open(&by_option).unwrap().to_rgb8();
    let b = image::open(&by_tag).unwrap().to_rgb8();
    assert_eq!(a.as_raw(), b.as_raw(), "--lora and <lora:...> differ");

    // and both are diffusers' fuse_lora(lora_scale=0.6)
    let reference = read_tensors(fixtures().join("outputs/lora.safetensors")).unwrap();
    let expected = take(&reference, "sd1.kohya.scale0.6").unwrap();
    let saved = tch::Tensor::read_safetensors(by_option.with_extension("safetensors")).unwrap();
    // PNDM, 4 steps: 7 evaluations
    assert_close(
        "cli lora",
        &saved[0].1,
        &expected,
        chain_tolerance_for(tch::Kind::Float, 7, &expected),
    );

    // an embedding by file, its token from the file name
    let ti = dir.join("ti.png");
    let shiny = lora_dir.join("shiny-style.safetensors");
    let run = txt2img(
        "a red circle, shiny-style",
        &["--embedding", shiny.to_str().unwrap()],
        &ti,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let expected = take(&reference, "sd1.ti-a1111").unwrap();
    let saved = tch::Tensor::read_safetensors(ti.with_extension("safetensors")).unwrap();
    assert_close(
        "cli embedding",
        &saved[0].1,
        &expected,
        chain_tolerance_for(tch::Kind::Float, 7, &expected),
    );
}

#[test]
fn bad_lora_options_fail_with_one_line() {
    let dir = scratch("bad");
    let out = dir.join("x.png");
    let lora_dir = fixtures().join("lora");
    let sdxl = lora_dir.join("sdxl-kohya-ldm.safetensors");
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            vec!["--lora".into(), "/nonexistent/a.safetensors".into()],
            "a cat",
            "--lora /nonexistent/a.safetensors: no such file",
        ),
        (
            vec!["--lora".into(), format!("{}:lots", sdxl.display())],
            "a cat",
            "scale 'lots' is not a number",
        ),
        (
            vec![],
            "a cat <lora:style:0.5>",
            "no LoRA folder (--lora-dir",
        ),
        (
            vec!["--lora-dir".into(), lora_dir.display().to_string()],
            "a cat <lora:missing>",
            "no missing.safetensors",
        ),
        (
            vec!["--lora-dir".into(), lora_dir.display().to_string()],
            "a cat <lora:../x>",
            "without folders",
        ),
        (
            vec!["--lora".into(), sdxl.display().to_string()],
            "a cat",
            "sdxl-kohya-ldm.safetensors",
        ),
        (
            vec![
                "--embedding".into(),
                lora_dir.join("xl-style.safetensors").display().to_string(),
            ],
            "a cat",
            "one text encoder",
        ),
    ];
    for (extra, prompt, needle) in cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let run = txt2img(prompt, &extra, &out);
        assert!(!run.status.success(), "{extra:?}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(needle),
            "{extra:?}: {stderr}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn train_lora_then_generate_with_it() {
    let dir = scratch("train");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (i, rgb) in [[255u8, 0, 0], [0, 0, 255]].iter().enumerate() {
        image::RgbImage::from_pixel(64, 64, image::Rgb(*rgb))
            .save(data.join(format!("{i}.png")))
            .unwrap();
        std::fs::write(data.join(format!("{i}.txt")), "a plain square").unwrap();
    }
    let tiny = fixtures().join("tiny-sd1");
    let out = dir.join("out");
    let run = sd(&[
        "train",
        "--model",
        tiny.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--lora",
        "2",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--resolution",
        "64",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("rank-2 LoRA") && stdout.contains("3 steps"),
        "{stdout}"
    );
    let lora = out.join("lora.safetensors");
    let image = dir.join("with.png");
    let run = txt2img(
        "a plain square",
        &["--lora", lora.to_str().unwrap(), "--verbose"],
        &image,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("merged 48 modules (48 unet), skipped 0"),
        "{stderr}"
    );

    let run = sd(&[
        "train",
        "--shapes",
        "--lora",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--lora trains on a model you give"));

    let run = sd(&[
        "train",
        "--vae-from",
        "crates/sd-cli/shapes",
        "--lora",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--vae-from goes with --shapes"));
}
