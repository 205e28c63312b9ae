//! `sd serve --upscalers-dir`: A1111's `/sdapi/v1/upscalers` and
//! `/sdapi/v1/extra-single-image` over HTTP; the pixels are `sd upscale`'s
//! (spandrel's, written as 8-bit), a checkpoint that would run code is not
//! listed, and an unknown upscaler is refused naming the field.

mod common;

use base64::Engine;
use common::server::{decode_png, Served};
use common::{fixtures, scratch};
use sd_testkit::parity::{read_tensors, take};
use serde_json::json;

#[test]
fn extras_upscale_as_the_cli_does() {
    let upscalers = fixtures().join("upscale");
    let dir = scratch("serve-extras", "upscale");
    let server = Served::start(
        &dir.join("data"),
        &["--upscalers-dir", upscalers.to_str().unwrap()],
    );
    let listed = server.get("/sdapi/v1/upscalers").body;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    for name in [
        "None",
        "Lanczos",
        "Nearest",
        "esrgan-x4",
        "compact-x4",
        "realesrgan-x2",
    ] {
        assert!(names.contains(&name), "{name}: {listed}");
    }
    assert!(!names.contains(&"malicious"), "{listed}");
    let x2 = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "realesrgan-x2")
        .unwrap();
    assert_eq!(
        (x2["scale"].as_i64(), x2["model_name"].as_str()),
        (Some(2), Some("ESRGAN"))
    );

    let png = std::fs::read(fixtures().join("images/init-32.png")).unwrap();
    let image = base64::engine::general_purpose::STANDARD.encode(png);
    let reply = server.post(
        "/sdapi/v1/extra-single-image",
        &json!({"image": image, "upscaler_1": "esrgan-x4", "upscaling_resize": 4}),
    );
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let (pixels, _) = decode_png(reply.body["image"].as_str().unwrap());
    let reference = read_tensors(fixtures().join("outputs/upscale.safetensors")).unwrap();
    let want = take(&reference, "esrgan-x4.f32").unwrap();
    assert_eq!(pixels, common::rgb_bytes(&want));

    let resized = server.post(
        "/sdapi/v1/extra-single-image",
        &json!({"image": image, "upscaler_1": "Lanczos", "upscaling_resize": 1.5}),
    );
    let (pixels, _) = decode_png(resized.body["image"].as_str().unwrap());
    assert_eq!(pixels.len(), 48 * 48 * 3);
    let unknown = server.post(
        "/sdapi/v1/extra-single-image",
        &json!({"image": image, "upscaler_1": "4x-nothing"}),
    );
    assert_eq!(unknown.status, 422, "{:?}", unknown.body);
    assert!(
        unknown.body.to_string().contains("upscaler_1"),
        "{:?}",
        unknown.body
    );
}

/// A1111's hires-fix fields (`enable_hr`, `hr_scale`, `hr_upscaler` naming a
/// listed model, `denoising_strength`) give `sd txt2img --hires-*`'s pixels.
#[test]
fn hires_fix_over_http_is_the_clis() {
    let fixtures = fixtures();
    let tiny = fixtures.join("tiny-sd1");
    let upscalers = fixtures.join("upscale");
    let dir = scratch("serve-extras", "hires");
    let server = Served::start(
        &dir.join("data"),
        &[
            "--model",
            tiny.to_str().unwrap(),
            "--upscalers-dir",
            upscalers.to_str().unwrap(),
        ],
    );
    let prompt = "a red circle on a white background";
    let reply = server.post(
        "/sdapi/v1/txt2img",
        &json!({"prompt": prompt, "steps": 4, "seed": 3, "width": 32, "height": 32, "cfg_scale": 7.5,
                "sampler_name": "Euler", "enable_hr": true, "hr_scale": 2, "hr_upscaler": "realesrgan-x2",
                "denoising_strength": 0.6}),
    );
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let (pixels, _) = decode_png(reply.body["images"][0].as_str().unwrap());
    let out = dir.join("cli.png");
    let model = upscalers.join("realesrgan-x2.safetensors");
    let (tiny, model, out_s) = (
        tiny.to_str().unwrap(),
        model.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let mut args = vec!["txt2img", "--model", tiny];
    args.extend(common::HIRES_FIRST_PASS);
    args.extend([
        "--hires-upscaler",
        model,
        "--hires-strength",
        "0.6",
        "--out",
        out_s,
    ]);
    let run = common::sd(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(pixels, image::open(&out).unwrap().to_rgb8().into_raw());
    let unknown = server.post(
        "/sdapi/v1/txt2img",
        &json!({"prompt": prompt, "steps": 4, "enable_hr": true, "hr_upscaler": "4x-nothing"}),
    );
    assert_eq!(unknown.status, 422, "{:?}", unknown.body);
    assert!(
        unknown.body.to_string().contains("4x-nothing"),
        "{:?}",
        unknown.body
    );
}
