//! ControlNets against diffusers (reference/harness_controlnet.py): the
//! tiny SD1 and SDXL models with random ControlNets, through txt2img,
//! img2img and inpainting, covering the scale, the start/end window, guess
//! mode and two ControlNets summed; final latents within the error model of
//! `sd_testkit::parity` and images within the pixel bound (exact in
//! `SD_PARITY=exact` mode). The original single-file layout of `sd1-a` must
//! give the diffusers folder's numbers bit for bit. Bad input is refused
//! before any step runs.

use std::path::PathBuf;

use image::RgbImage;
use sd_pipeline::front::Field;
use sd_pipeline::{Control, PipelineError, Request, StableDiffusion};
use sd_testkit::parity::{
    assert_close, assert_image_matches, chain_tolerance_for, read_tensors, reference_dir, take,
};
use serde_json::Value;
use tch::Kind;

fn fixtures() -> PathBuf {
    reference_dir().join("fixtures")
}

fn runs() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("outputs/controlnet.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn png(path: &str) -> RgbImage {
    image::open(fixtures().join(path)).unwrap().to_rgb8()
}

fn strings(run: &Value, field: &str) -> Vec<String> {
    run[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn request(run: &Value) -> Request {
    let mut r = Request::new(run["prompt"].as_str().unwrap());
    r.steps = run["steps"].as_u64().unwrap() as usize;
    r.guidance_scale = run["guidance_scale"].as_f64().unwrap();
    r.width = Some(64);
    r.height = Some(64);
    let scales = run["scales"].as_array().unwrap();
    let control = Control::new(
        strings(run, "control_images")
            .iter()
            .map(|p| png(p))
            .collect(),
    )
    .with_scales(scales.iter().map(|s| s.as_f64().unwrap()).collect())
    .with_window(run["start"].as_f64().unwrap(), run["end"].as_f64().unwrap())
    .with_guess_mode(run["guess_mode"].as_bool().unwrap());
    r = r
        .with_control(control)
        .with_seed(run["seed"].as_u64().unwrap());
    let strength = run["strength"].as_f64().unwrap_or(1.0);
    let init = || png("images/init.png");
    match run["task"].as_str().unwrap() {
        "img2img" => r.image_to_image(init(), strength),
        "inpaint" => {
            let mask = image::open(fixtures().join("images/mask.png"))
                .unwrap()
                .to_luma8();
            r.inpaint(init(), mask, strength)
        }
        _ => r,
    }
}

fn pipeline(model: &str, controlnets: &[String]) -> StableDiffusion {
    let mut builder = StableDiffusion::builder().model_dir(fixtures().join(model));
    for c in controlnets {
        builder = builder.controlnet(fixtures().join(c));
    }
    builder.build().unwrap()
}

#[test]
fn controlnets_match_diffusers() {
    let reference = read_tensors(fixtures().join("outputs/controlnet.safetensors")).unwrap();
    tch::set_num_threads(1);
    for run in runs() {
        let key = run["key"].as_str().unwrap();
        let pipeline = pipeline(
            run["model"].as_str().unwrap(),
            &strings(&run, "controlnets"),
        );
        let out = pipeline.generate(&request(&run)).unwrap();
        let expected = take(&reference, key).unwrap();
        let mut counter = pipeline.new_scheduler().unwrap();
        counter.set_timesteps(4).unwrap();
        let tolerance = chain_tolerance_for(Kind::Float, counter.timesteps().len(), &expected);
        assert_close(key, &out.latents, &expected, tolerance);
        let image = take(&reference, &format!("{key}.image")).unwrap();
        let decoded = pipeline.decode_latents(&expected).unwrap();
        assert_image_matches(
            key,
            decoded[0].as_raw(),
            out.images[0].as_raw(),
            &image,
            Kind::Float,
        );
    }
}

#[test]
fn the_original_single_file_equals_the_diffusers_folder() {
    tch::set_num_threads(1);
    let run = runs().into_iter().find(|r| r["key"] == "sd1.cn").unwrap();
    let folder = pipeline("tiny-sd1", &["controlnet/sd1-a".into()]);
    let single = pipeline(
        "tiny-sd1",
        &["controlnet/sd1-a-original.safetensors".into()],
    );
    let a = folder.generate(&request(&run)).unwrap().latents;
    let b = single.generate(&request(&run)).unwrap().latents;
    assert!(
        a.equal(&b),
        "the single file's ControlNet differs from the folder's"
    );
}

#[test]
fn bad_control_input_is_refused_before_any_step() {
    let run = runs()
        .into_iter()
        .find(|r| r["key"] == "sd1.cn.two")
        .unwrap();
    let two = pipeline("tiny-sd1", &strings(&run, "controlnets"));
    let mut steps = 0;
    let mut count = |_: sd_pipeline::StepInfo<'_>| {
        steps += 1;
        std::ops::ControlFlow::Continue(())
    };
    let refuse =
        |request: Request,
         field: Field,
         count: &mut dyn FnMut(sd_pipeline::StepInfo<'_>) -> std::ops::ControlFlow<()>| {
            let err = two
                .generate_with(&request, two.new_scheduler().unwrap(), count)
                .unwrap_err();
            assert!(
                matches!(&err, PipelineError::InvalidInput { field: f, .. } if *f == field),
                "{field}: {err}"
            );
        };
    // One image for two ControlNets.
    let mut one = request(&run);
    one.control =
        Some(Control::new(vec![png("controlnet/control-a.png")]).with_scales(vec![1.0, 1.0]));
    refuse(one, Field::ControlImages, &mut count);
    // No control images at all while ControlNets are loaded.
    let mut none = request(&run);
    none.control = None;
    refuse(none, Field::ControlImages, &mut count);
    // A window that is empty.
    let mut window = request(&run);
    window.control = window.control.map(|c| c.with_window(0.8, 0.2));
    refuse(window, Field::ControlWindow, &mut count);
    assert_eq!(steps, 0, "a step ran before the request was refused");

    // A ControlNet for another family (SDXL's on the SD1 model), and a
    // missing file: refused at load with the path named.
    let mut sd1 = pipeline("tiny-sd1", &[]);
    let xl = fixtures().join("controlnet/sdxl-a");
    let err = sd1.load_controlnet(&xl).unwrap_err().to_string();
    assert!(
        err.contains("sdxl-a") && err.contains("cross-attention"),
        "{err}"
    );
    let missing = fixtures().join("controlnet/missing.safetensors");
    let err = sd1.load_controlnet(&missing).unwrap_err().to_string();
    assert!(err.contains("missing.safetensors"), "{err}");
    let pickle = std::env::temp_dir().join("sd-controlnet-test.pth");
    std::fs::write(&pickle, b"not a safetensors file").unwrap();
    let err = sd1.load_controlnet(&pickle).unwrap_err().to_string();
    assert!(
        err.contains(".safetensors") && err.contains("Convert"),
        "{err}"
    );
    std::fs::remove_file(&pickle).ok();
    assert!(sd1.controlnets().is_empty());
}

#[test]
fn low_memory_mode_gives_the_same_latents() {
    tch::set_num_threads(1);
    let run = runs()
        .into_iter()
        .find(|r| r["key"] == "sd1.cn.two")
        .unwrap();
    let nets = strings(&run, "controlnets");
    let normal = pipeline("tiny-sd1", &nets);
    let mut builder = StableDiffusion::builder()
        .model_dir(fixtures().join("tiny-sd1"))
        .low_memory(true);
    for c in &nets {
        builder = builder.controlnet(fixtures().join(c));
    }
    let low = builder.build().unwrap();
    assert_eq!(low.controlnets().len(), 2);
    assert!(low.controlnets()[1].path().ends_with("sd1-b"));
    let a = normal.generate(&request(&run)).unwrap().latents;
    let b = low.generate(&request(&run)).unwrap().latents;
    assert!(a.equal(&b), "low-memory mode changed the ControlNet run");
}
