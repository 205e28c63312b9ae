//! FLUX.1 LoRAs in the formats people download (reference/harness_flux_lora.py:
//! diffusers/PEFT, ai-toolkit, kohya, ComfyUI, XLabs, Black Forest Labs' names),
//! merged at 0.8 into the tiny [dev] pipeline, against the weights diffusers'
//! `load_lora_weights` + `fuse_lora(lora_scale=0.8)` leaves; and the kohya
//! LoRA's whole txt2img run.

use std::collections::HashMap;
use std::path::PathBuf;

use sd_core::DiffusersModel;
use sd_pipeline::{Denoiser, LoraSpec, Request, Seed, StableDiffusion};
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use tch::{nn::VarStore, Kind, Tensor};

/// Each format's file, merged into the f32 pipeline; `kohya-bf16` (the kohya
/// file in bf16) into the bf16 pipeline.
const FORMATS: [&str; 7] = [
    "peft",
    "ai-toolkit",
    "kohya",
    "comfyui",
    "xlabs",
    "bfl",
    "kohya-bf16",
];

fn fixtures() -> PathBuf {
    reference_dir().join("fixtures")
}

fn lora(format: &str) -> PathBuf {
    fixtures().join(format!("flux/lora/flux-{format}.safetensors"))
}

fn dev(kind: Kind) -> StableDiffusion {
    StableDiffusion::builder()
        .model_dir(fixtures().join("flux/pipeline-dev"))
        .dtype(kind)
        .build()
        .unwrap()
}

/// The transformer's and CLIP-L's variables, under the reference's names
/// (transformers 5 names CLIP's weights without `text_model.`).
fn weights(pipeline: &StableDiffusion) -> Vec<(String, Tensor)> {
    let Denoiser::Flux(transformer) = pipeline.denoiser() else {
        panic!("not a FLUX pipeline")
    };
    let named = |component: &str, store: &VarStore| {
        let component = component.to_string();
        store.variables().into_iter().map(move |(name, tensor)| {
            let name = name
                .strip_prefix("text_model.")
                .unwrap_or(&name)
                .to_string();
            (format!("{component}.{name}"), tensor.copy())
        })
    };
    named("transformer", transformer.var_store())
        .chain(named("text_encoder", pipeline.text_encoder().var_store()))
        .collect()
}

#[test]
fn every_flux_lora_format_merges_as_diffusers_fuses_it() {
    tch::set_num_threads(1);
    let reference = read_tensors(fixtures().join("outputs/flux_lora.safetensors")).unwrap();
    for format in FORMATS {
        let kind = match format.ends_with("bf16") {
            true => Kind::BFloat16,
            false => Kind::Float,
        };
        let mut pipeline = dev(kind);
        let base: HashMap<String, Tensor> = weights(&pipeline).into_iter().collect();
        let reports = pipeline
            .set_loras(&[LoraSpec::new(lora(format), 0.8)])
            .unwrap();
        assert!(
            reports[0].skipped.is_empty(),
            "{format}: {:?}",
            reports[0].skipped
        );
        let mut changed = 0;
        for (name, tensor) in weights(&pipeline) {
            let key = format!("{format}.{name}");
            match reference.get(&key) {
                Some(want) => {
                    assert_matches(&key, &tensor, want, 1);
                    changed += 1;
                }
                None => assert!(
                    tensor.equal(&base[&name]),
                    "{key} changed; diffusers left it"
                ),
            }
        }
        let expected = reference
            .keys()
            .filter(|k| k.starts_with(&format!("{format}.")));
        let expected = expected.filter(|k| !k.ends_with("txt2img")).count();
        assert_eq!(changed, expected, "{format}: weights diffusers changed");
        pipeline.unload_loras().unwrap();
        for (name, tensor) in weights(&pipeline) {
            assert!(tensor.equal(&base[&name]), "{format}: {name} not restored");
        }
    }
}

#[test]
fn a_kohya_flux_lora_run_matches_diffusers() {
    tch::set_num_threads(1);
    let reference = read_tensors(fixtures().join("outputs/flux_lora.safetensors")).unwrap();
    let mut pipeline = dev(Kind::Float);
    pipeline
        .set_loras(&[LoraSpec::new(lora("kohya"), 0.8)])
        .unwrap();
    let mut request = Request::new("a red circle on a white background");
    (
        request.steps,
        request.guidance_scale,
        request.max_sequence_length,
    ) = (3, 3.5, Some(16));
    (request.width, request.height, request.num_images) = (Some(48), Some(32), 2);
    request.seed = Seed::Batch(0);
    let latents = pipeline.generate(&request).unwrap().latents;
    let want = take(&reference, "kohya.f32.txt2img").unwrap();
    assert_matches(
        "kohya.f32.txt2img",
        &sd_flux::packing::pack(&latents),
        &want,
        3,
    );
}

#[test]
fn loras_for_other_families_are_refused_in_one_line() {
    let mut flux = dev(Kind::Float);
    let sd1 = fixtures().join("lora/sd1-kohya.safetensors");
    let error = flux
        .set_loras(&[LoraSpec::new(&sd1, 1.0)])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("changes a unet, and this model has none"),
        "{error}"
    );

    let mut sd3 = StableDiffusion::builder()
        .model_dir(fixtures().join("sd3/pipeline"))
        .build()
        .unwrap();
    let error = (sd3.set_loras(&[LoraSpec::new(lora("kohya"), 1.0)]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("FLUX"), "{error}");

    // a Control LoRA (BFL's Canny/Depth) carries norm scales
    let control = sd_testkit::scratch_dir("flux-control-lora").join("control.safetensors");
    let tensors = [
        (
            "double_blocks.0.img_attn.qkv.lora_A.weight",
            Tensor::zeros([2, 32], tch::kind::FLOAT_CPU),
        ),
        (
            "double_blocks.0.img_attn.qkv.lora_B.weight",
            Tensor::zeros([96, 2], tch::kind::FLOAT_CPU),
        ),
        (
            "double_blocks.0.img_attn.norm.query_norm.scale",
            Tensor::ones([16], tch::kind::FLOAT_CPU),
        ),
    ];
    Tensor::write_safetensors(&tensors, &control).unwrap();
    let error = flux
        .set_loras(&[LoraSpec::new(&control, 1.0)])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Control LoRA") && error.contains("query_norm.scale"),
        "{error}"
    );
}
