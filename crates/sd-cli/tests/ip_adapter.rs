//! `--ip-adapter`, `--ip-image`, `--image-encoder` end to end: two adapters
//! (plain and Plus) with their scales give diffusers' latents
//! (reference/harness_ip_adapter.py, `sd1.two`), and bad options fail with
//! one line naming them, writing nothing.

mod common;

use common::fixtures;
use sd_testkit::parity::{assert_matches, read_tensors, take};

const PROMPT: &str = "a red circle on a white background";

fn path(rel: &str) -> String {
    fixtures().join(rel).display().to_string()
}

/// `sd txt2img` on the tiny SD1 with `args`: its saved latents against the
/// reference's `key`.
fn assert_cli_matches(name: &str, args: &[&str], key: &str) {
    let dir = common::scratch("ip-adapter", name);
    let out = dir.join("ip.png");
    let run = common::txt2img(PROMPT, args, &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let saved = read_tensors(out.with_extension("safetensors")).unwrap();
    let reference = read_tensors(fixtures().join("outputs/ip_adapter.safetensors")).unwrap();
    let (latents, expected) = (
        take(&saved, "latents").unwrap(),
        take(&reference, key).unwrap(),
    );
    assert_matches(&format!("cli {key}"), &latents, &expected, 4);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn two_adapters_match_diffusers() {
    let plain = format!("{}:0.6", path("ip-adapter/sd1-plain.safetensors"));
    let plus = format!("{}:0.9", path("ip-adapter/sd1-plus.safetensors"));
    let (init, control) = (path("images/init.png"), path("images/control-a-72x64.png"));
    let encoder = path("ip-adapter/image_encoder");
    let args = [
        "--ip-adapter",
        &plain,
        "--ip-image",
        &init,
        "--ip-adapter",
        &plus,
        "--ip-image",
        &control,
        "--image-encoder",
        &encoder,
    ];
    assert_cli_matches("match", &args, "sd1.two");
}

/// `--ip-blocks` takes diffusers' per-block dict.
#[test]
fn per_block_scales_match_diffusers() {
    let (plain, init) = (
        path("ip-adapter/sd1-plain.safetensors"),
        path("images/init.png"),
    );
    let encoder = path("ip-adapter/image_encoder");
    let blocks =
        r#"{"down": {"block_0": [0.0, 1.0]}, "mid": 0.5, "up": {"block_1": [1.0, 0.0, 0.7]}}"#;
    let args = [
        "--ip-adapter",
        &plain,
        "--ip-image",
        &init,
        "--image-encoder",
        &encoder,
        "--ip-blocks",
        blocks,
    ];
    assert_cli_matches("blocks", &args, "sd1.plain.blocks");
}

#[test]
fn bad_ip_adapter_options_name_the_option_and_write_nothing() {
    let dir = common::scratch("ip-adapter", "bad");
    let out = dir.join("bad.png");
    let (plain, xl) = (
        path("ip-adapter/sd1-plain.safetensors"),
        path("ip-adapter/sdxl-plain.safetensors"),
    );
    let (init, encoder) = (path("images/init.png"), path("ip-adapter/image_encoder"));
    let missing = format!("{plain}-missing");
    let bad_scale = format!("{plain}:lots");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--ip-adapter", &plain, "--image-encoder", &encoder],
            "--ip-image",
        ),
        (
            vec!["--ip-adapter", &plain, "--ip-image", &init],
            "--image-encoder",
        ),
        (
            vec![
                "--ip-adapter",
                &missing,
                "--ip-image",
                &init,
                "--image-encoder",
                &encoder,
            ],
            "no such file",
        ),
        (
            vec![
                "--ip-adapter",
                &bad_scale,
                "--ip-image",
                &init,
                "--image-encoder",
                &encoder,
            ],
            "not a number",
        ),
        (
            vec![
                "--ip-adapter",
                &xl,
                "--ip-image",
                &init,
                "--image-encoder",
                &encoder,
            ],
            "made for a UNet with 11 cross-attention layers, this model has 6",
        ),
    ];
    for (args, expected) in cases {
        let run = common::txt2img(PROMPT, &args, &out);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
        assert!(!out.exists(), "{args:?} wrote an image");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `sd serve --ip-adapter` with the body's `ip_adapter` field gives
/// diffusers' image; a prompt count that does not match is a 422 naming it.
#[test]
fn image_prompts_over_http_match_diffusers() {
    use base64::Engine;
    let dir = common::scratch("ip-adapter", "serve");
    let (tiny, plain) = (path("tiny-sd1"), path("ip-adapter/sd1-plain.safetensors"));
    let encoder = path("ip-adapter/image_encoder");
    let args = [
        "--model",
        &tiny,
        "--ip-adapter",
        &plain,
        "--image-encoder",
        &encoder,
    ];
    let server = common::server::Served::start(&dir.join("data"), &args);
    let init = std::fs::read(fixtures().join("images/init.png")).unwrap();
    let init = base64::engine::general_purpose::STANDARD.encode(init);
    let body = |prompts: serde_json::Value| {
        serde_json::json!({"prompt": PROMPT, "steps": 4, "seed": 0, "width": 64, "height": 64,
                           "cfg_scale": 7.5, "ip_adapter": prompts})
    };
    let one = serde_json::json!([{"images": [init], "scale": 0.6}]);
    let reply = server.post("/sdapi/v1/txt2img", &body(one));
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let (pixels, _) = common::server::decode_png(reply.body["images"][0].as_str().unwrap());
    let reference = read_tensors(fixtures().join("outputs/ip_adapter.safetensors")).unwrap();
    let want = take(&reference, "sd1.plain.scale0.6.image").unwrap();
    let want = Vec::<u8>::try_from(want.flatten(0, -1)).unwrap();
    let worst = sd_testkit::parity::max_pixel_difference(&pixels, &want);
    let bound = sd_testkit::parity::pixel_tolerance(tch::Kind::Float);
    assert!(worst.is_some_and(|d| d <= bound), "{worst:?} levels");
    let two = serde_json::json!([{"images": [init]}, {"images": [init]}]);
    let reply = server.post("/sdapi/v1/txt2img", &body(two));
    assert_eq!(reply.status, 422, "{:?}", reply.body);
    let text = reply.body.to_string();
    assert!(
        text.contains("2 image prompts for 1 loaded IP-Adapters"),
        "{text}"
    );
}
