//! IP-Adapters against diffusers' `load_ip_adapter` (reference/harness_ip_adapter.py):
//! tiny random plain and Plus adapters on the tiny SD1 and SDXL models, one
//! or two adapters, one or two images, a scale, per-block scale dicts,
//! img2img and a ControlNet;
//! final latents within the error model (exact with `SD_PARITY=exact`).
//! Adapters for another model, or an encoder of the wrong width, are refused
//! at load in one line; the `.bin` file gives the `.safetensors` weights.

use std::path::PathBuf;

use image::RgbImage;
use sd_pipeline::{BlockScales, Control, ImagePrompt, Request, StableDiffusion};
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use serde_json::Value;

fn fixtures() -> PathBuf {
    reference_dir().join("fixtures")
}

fn png(name: &str) -> RgbImage {
    let path = fixtures().join(format!("images/{name}.png"));
    image::open(path).unwrap().to_rgb8()
}

fn encoder() -> PathBuf {
    fixtures().join("ip-adapter/image_encoder")
}

fn request(run: &Value) -> Request {
    let mut r = Request::new("a red circle on a white background").with_seed(0);
    (r.steps, r.width, r.height) = (4, Some(64), Some(64));
    r.guidance_scale = run["guidance_scale"].as_f64().unwrap();
    let scales = run["scales"].as_array().unwrap();
    let images = run["images"].as_array().unwrap();
    for (names, scale) in images.iter().zip(scales) {
        let names = names.as_array().unwrap();
        let images = names.iter().map(|n| png(n.as_str().unwrap())).collect();
        let prompt = ImagePrompt::new(images);
        r.image_prompts.push(match scale.as_f64() {
            Some(scale) => prompt.with_scale(scale),
            None => prompt.with_block_scales(BlockScales::from_json(scale).unwrap()),
        });
    }
    match run["strength"].as_f64() {
        Some(strength) => r.image_to_image(png("init"), strength),
        None => r,
    }
}

#[test]
fn ip_adapters_match_diffusers() {
    tch::set_num_threads(1);
    let reference = read_tensors(fixtures().join("outputs/ip_adapter.safetensors")).unwrap();
    let text = std::fs::read_to_string(fixtures().join("outputs/ip_adapter.json")).unwrap();
    let runs: Vec<Value> = serde_json::from_str(&text).unwrap();
    for run in runs {
        let key = run["key"].as_str().unwrap();
        let mut builder =
            StableDiffusion::builder().model_dir(fixtures().join(run["model"].as_str().unwrap()));
        for adapter in run["adapters"].as_array().unwrap() {
            builder = builder.ip_adapter(fixtures().join(adapter.as_str().unwrap()), encoder());
        }
        let controlled = key.ends_with(".controlnet");
        if controlled {
            builder = builder.controlnet(fixtures().join("controlnet/sd1-a"));
        }
        let pipeline = builder.build().unwrap();
        let mut request = request(&run);
        if controlled {
            let control = image::open(fixtures().join("controlnet/control-a.png")).unwrap();
            request = request.with_control(Control::new(vec![control.to_rgb8()]));
        }
        let out = pipeline.generate(&request).unwrap();
        assert_matches(key, &out.latents, &take(&reference, key).unwrap(), 4);
    }
}

#[test]
fn the_bin_file_gives_the_safetensors_weights() {
    let open = |name: &str| {
        let path = fixtures().join(format!("ip-adapter/{name}"));
        sd_ip_adapter::IpAdapter::open(path, tch::Device::Cpu, tch::Kind::Float).unwrap()
    };
    let (bin, safetensors) = (open("sd1-plain.bin"), open("sd1-plain.safetensors"));
    let (a, b) = (
        bin.var_store().variables(),
        safetensors.var_store().variables(),
    );
    assert_eq!(a.len(), b.len());
    assert!(a.len() > 10, "{} variables", a.len());
    for (name, tensor) in &a {
        assert!(tensor.equal(&b[name]), "{name}");
    }
}

#[test]
fn a_wrong_adapter_or_encoder_is_refused_in_one_line() {
    let sd1 = || StableDiffusion::builder().model_dir(fixtures().join("tiny-sd1"));
    let error = |builder: sd_pipeline::StableDiffusionBuilder| {
        let Err(e) = builder.build() else {
            panic!("built")
        };
        e.to_string()
    };
    let xl = fixtures().join("ip-adapter/sdxl-plain.safetensors");
    let e = error(sd1().ip_adapter(&xl, encoder()));
    assert!(
        e.contains(
            "sdxl-plain.safetensors: made for a UNet with 11 cross-attention layers, \
                    this model has 6"
        ),
        "{e}"
    );
    // a Plus adapter's input is the encoder's hidden width; give it an
    // encoder whose width is another (the control image is no encoder)
    let plus = fixtures().join("ip-adapter/sd1-plus.safetensors");
    let e = error(sd1().ip_adapter(&plus, fixtures().join("tiny-sd1/text_encoder")));
    assert!(e.contains("text_encoder"), "{e}");
    let not_adapter = fixtures().join("tiny-sd1/unet/diffusion_pytorch_model.safetensors");
    let e = error(sd1().ip_adapter(&not_adapter, encoder()));
    assert!(e.contains("not an IP-Adapter"), "{e}");
    // one image prompt per adapter
    let pipeline = sd1()
        .ip_adapter(
            fixtures().join("ip-adapter/sd1-plain.safetensors"),
            encoder(),
        )
        .build()
        .unwrap();
    let mut request = Request::new("x").with_seed(0);
    (request.steps, request.width, request.height) = (1, Some(64), Some(64));
    request.image_prompts = vec![ImagePrompt::new(vec![png("init")]); 2];
    let Err(e) = pipeline.generate(&request) else {
        panic!("ran")
    };
    assert!(
        e.to_string()
            .contains("ip_adapter: 2 image prompts for 1 loaded IP-Adapters"),
        "{e}"
    );
    // per-block scales naming a block without attentions, or miscounting
    for (blocks, message) in [
        (
            r#"{"down": {"block_1": 1.0}}"#,
            "scale down.block_1: that block has no attentions",
        ),
        (
            r#"{"up": {"block_1": [1.0, 0.0]}}"#,
            "scale up.block_1: 2 values for 3 attentions",
        ),
        (
            r#"{"sideways": 1.0}"#,
            "scale: 'sideways' is not down, mid or up",
        ),
    ] {
        let value = serde_json::from_str(blocks).unwrap();
        let prompt = BlockScales::from_json(&value)
            .map(|b| ImagePrompt::new(vec![png("init")]).with_block_scales(b));
        let outcome = prompt.and_then(|p| {
            request.image_prompts = vec![p];
            pipeline.generate(&request).map(|_| ())
        });
        let Err(e) = outcome else {
            panic!("{blocks} ran")
        };
        assert!(e.to_string().contains(message), "{blocks}: {e}");
    }
}
