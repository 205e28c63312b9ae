//! LoRAs and textual-inversion embeddings against diffusers
//! (reference/harness_lora.py): every file format the harness writes, on the
//! tiny SD1, SD2 and SDXL models, final latents within the error model of
//! `sd_testkit::parity` and images from diffusers' latents within the pixel
//! bound; exact in `SD_PARITY=exact` mode. One pipeline per model serves
//! all its LoRA cases, swapping LoRAs with `set_loras`: so the runs also
//! show that unmerging restores the base model (the `.base` run comes
//! first, and every later case starts from the restored weights).

use std::collections::HashMap;
use std::path::PathBuf;

use sd_pipeline::{LoraSpec, Request, StableDiffusion};
use sd_testkit::parity::{
    assert_close, assert_image_matches, chain_tolerance_for, read_tensors, reference_dir, take,
};
use serde_json::Value;
use tch::Kind;

fn fixtures() -> PathBuf {
    reference_dir().join("fixtures")
}

fn runs() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("outputs/lora.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn loras(run: &Value) -> Vec<LoraSpec> {
    run["loras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            LoraSpec::new(
                fixtures().join(l[0].as_str().unwrap()),
                l[1].as_f64().unwrap(),
            )
        })
        .collect()
}

fn request(run: &Value) -> Request {
    let mut r = Request::new(run["prompt"].as_str().unwrap());
    r.steps = run["steps"].as_u64().unwrap() as usize;
    r.guidance_scale = run["guidance_scale"].as_f64().unwrap();
    r.width = Some(64);
    r.height = Some(64);
    r.with_seed(run["seed"].as_u64().unwrap())
}

fn load(model: &str) -> StableDiffusion {
    StableDiffusion::builder()
        .model_dir(fixtures().join(model))
        .build()
        .unwrap()
}

#[test]
fn loras_and_embeddings_match_diffusers() {
    let reference = read_tensors(fixtures().join("outputs/lora.safetensors")).unwrap();
    tch::set_num_threads(1);
    let mut shared: HashMap<String, StableDiffusion> = HashMap::new();
    let mut base_outputs: HashMap<String, tch::Tensor> = HashMap::new();
    for run in runs() {
        let key = run["key"].as_str().unwrap();
        let model = run["model"].as_str().unwrap();
        let embeddings = run["embeddings"].as_array().unwrap();
        // Embeddings stay once loaded, and the spacing is the pipeline's:
        // those runs get a pipeline of their own.
        let spacing = run["timestep_spacing"].as_str();
        let mut own;
        let pipeline = if let Some(spacing) = spacing {
            own = StableDiffusion::builder()
                .model_dir(fixtures().join(model))
                .timestep_spacing(spacing.parse().unwrap())
                .build()
                .unwrap();
            &mut own
        } else if embeddings.is_empty() {
            shared
                .entry(model.to_string())
                .or_insert_with(|| load(model))
        } else {
            own = load(model);
            for e in embeddings {
                let tokens = own
                    .load_embedding(fixtures().join(e[0].as_str().unwrap()), e[1].as_str())
                    .unwrap();
                assert!(!tokens.is_empty(), "{key}");
            }
            &mut own
        };
        let reports = pipeline.set_loras(&loras(&run)).unwrap();
        for report in &reports {
            assert!(report.applied_total() > 0, "{key}: nothing merged");
            assert!(
                report.skipped.is_empty(),
                "{key}: skipped {:?}",
                report.skipped
            );
        }
        let sampler = run["scheduler"].as_str().map(|s| s.parse().unwrap());
        let new_scheduler = || match sampler {
            Some(kind) => pipeline.new_scheduler_of(kind).unwrap(),
            None => pipeline.new_scheduler().unwrap(),
        };
        let mut counter = new_scheduler();
        counter
            .set_timesteps(run["steps"].as_u64().unwrap() as usize)
            .unwrap();
        let evaluations = counter.timesteps().len();
        let out = pipeline
            .generate_with(&request(&run), new_scheduler(), &mut |_| {
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        if key.ends_with(".base") {
            base_outputs.insert(model.to_string(), out.latents.copy());
        }
        let expected = take(&reference, key).unwrap();
        let tolerance = chain_tolerance_for(Kind::Float, evaluations, &expected);
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
    // After every swap, unloading gives the base model back bit for bit.
    for (model, pipeline) in &mut shared {
        assert!(
            pipeline.lora_undo_bytes() > 0,
            "{model}: the last case merged nothing"
        );
        pipeline.unload_loras().unwrap();
        assert_eq!(pipeline.lora_undo_bytes(), 0);
        let base = runs()
            .into_iter()
            .find(|r| r["model"] == model.as_str() && r["key"].as_str().unwrap().ends_with(".base"))
            .unwrap();
        let again = pipeline.generate(&request(&base)).unwrap().latents;
        assert!(
            again.equal(&base_outputs[model]),
            "{model}: unloading left a trace"
        );
    }
}
