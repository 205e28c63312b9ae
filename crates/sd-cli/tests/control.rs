//! `--controlnet`, `--control-image`, `sd preprocess`, `--vae-tiny` and
//! `--preview` end to end: the saved latents equal diffusers' reference for
//! the same ControlNet (reference/harness_controlnet.py), bad options fail
//! with one line naming them and write nothing, canny edges lie on the
//! edges, the tiny autoencoder's image is diffusers' (harness_taesd.py), and
//! the preview file is a whole PNG with no partial file left behind.

mod common;

use common::{fixtures, sd};
use sd_testkit::parity::{assert_close, chain_tolerance_for, read_tensors, take};

const PROMPT: &str = "a red circle on a white background";

fn scratch(name: &str) -> std::path::PathBuf {
    common::scratch("control", name)
}

fn txt2img(extra: &[&str], out: &std::path::Path) -> std::process::Output {
    common::txt2img(PROMPT, extra, out)
}

#[test]
fn controlnet_options_match_diffusers() {
    let dir = scratch("match");
    let net = fixtures().join("controlnet/sd1-a");
    let image = fixtures().join("controlnet/control-a.png");
    let out = dir.join("cn.png");
    let option = format!("{}:0.5", net.display());
    let run = txt2img(
        &[
            "--controlnet",
            &option,
            "--control-image",
            image.to_str().unwrap(),
        ],
        &out,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let saved = read_tensors(out.with_extension("safetensors")).unwrap();
    let reference = read_tensors(fixtures().join("outputs/controlnet.safetensors")).unwrap();
    let expected = take(&reference, "sd1.cn.scale0.5").unwrap();
    let tolerance = chain_tolerance_for(tch::Kind::Float, 5, &expected);
    assert_close(
        "cli sd1.cn.scale0.5",
        &take(&saved, "latents").unwrap(),
        &expected,
        tolerance,
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_controlnet_options_name_the_option_and_write_nothing() {
    let dir = scratch("bad");
    let net = fixtures().join("controlnet/sd1-a");
    let xl = fixtures().join("controlnet/sdxl-a");
    let image = fixtures().join("controlnet/control-a.png");
    let (net, xl, image) = (
        net.to_str().unwrap(),
        xl.to_str().unwrap(),
        image.to_str().unwrap(),
    );
    let out = dir.join("bad.png");
    let missing = format!("{net}-missing");
    let bad_scale = format!("{net}:lots");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--controlnet", net], "--control-image"),
        (vec!["--control-image", image], "--controlnet"),
        (
            vec!["--controlnet", &missing, "--control-image", image],
            "no such file",
        ),
        (
            vec!["--controlnet", &bad_scale, "--control-image", image],
            "not a number",
        ),
        (
            vec![
                "--controlnet",
                net,
                "--control-image",
                image,
                "--control-start",
                "0.9",
                "--control-end",
                "0.1",
            ],
            "--control-start",
        ),
        (vec!["--guess-mode"], "--guess-mode"),
        (
            vec!["--controlnet", xl, "--control-image", image],
            "cross-attention",
        ),
    ];
    for (args, needle) in cases {
        let run = txt2img(&args, &out);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} wrote an image");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn canny_marks_the_edges_of_a_square_and_nothing_else() {
    let dir = scratch("canny");
    let input = dir.join("square.png");
    let square = image::RgbImage::from_fn(64, 64, |x, y| {
        let inside = (16..48).contains(&x) && (16..48).contains(&y);
        image::Rgb(if inside { [230, 40, 40] } else { [20, 20, 20] })
    });
    square.save(&input).unwrap();
    let output = dir.join("edges.png");
    let run = sd(&[
        "preprocess",
        "canny",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--low",
        "50",
        "--high",
        "100",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let edges = image::open(&output).unwrap().to_rgb8();
    let (mut on_border, mut elsewhere) = (0, 0);
    for (x, y, p) in edges.enumerate_pixels() {
        assert!(p[0] == p[1] && p[1] == p[2] && (p[0] == 0 || p[0] == 255));
        let near = |v: u32| (14..=17).contains(&v) || (46..=49).contains(&v);
        let on_ring = (near(x) && (14..=49).contains(&y)) || (near(y) && (14..=49).contains(&x));
        match (p[0] == 255, on_ring) {
            (true, true) => on_border += 1,
            (true, false) => elsewhere += 1,
            _ => {}
        }
    }
    assert!(
        on_border >= 4 * 28,
        "only {on_border} edge pixels on the square's border"
    );
    assert_eq!(elsewhere, 0, "edge pixels away from the square");
    // Thresholds the wrong way round: one line naming the option.
    let run = sd(&[
        "preprocess",
        "canny",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--low",
        "300",
        "--high",
        "100",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("--low"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn vae_tiny_and_previews() {
    let dir = scratch("preview");
    let out = dir.join("tiny.png");
    let preview = dir.join("preview.png");
    let taesd = fixtures().join("taesd/original");
    let run = txt2img(
        &[
            "--vae-tiny",
            taesd.to_str().unwrap(),
            "--preview",
            preview.to_str().unwrap(),
            "--preview-every",
            "2",
            "--guidance",
            "7.5",
        ],
        &out,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The final image is TAESD's decode, as diffusers' pipeline given
    // vae=AutoencoderTiny makes it.
    let reference = read_tensors(fixtures().join("outputs/taesd.safetensors")).unwrap();
    let expected = take(&reference, "sd1.txt2img.image").unwrap();
    let expected = Vec::<u8>::try_from(expected.flatten(0, -1)).unwrap();
    let image = image::open(&out).unwrap().to_rgb8();
    let worst = image
        .as_raw()
        .iter()
        .zip(&expected)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= sd_testkit::parity::pixel_tolerance(tch::Kind::Float),
        "pixels differ by {worst}"
    );
    // The last preview (the last step always gets one) is TAESD's decode of
    // the final latents: the final image itself.
    let shown = image::open(&preview).unwrap().to_rgb8();
    assert_eq!(shown, image);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    for (args, needle) in [
        (
            vec![
                "--preview",
                preview.to_str().unwrap(),
                "--preview-every",
                "0",
            ],
            "--preview-every",
        ),
        (vec!["--preview", "preview.jpg"], "--preview"),
        (vec!["--vae-tiny", dir.to_str().unwrap()], "config.json"),
    ] {
        let bad = dir.join("bad.png");
        let run = txt2img(&args, &bad);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
        assert!(!bad.exists());
    }
    std::fs::remove_dir_all(&dir).ok();
}
