//! The committed shapes model (crates/sd-cli/shapes): prompt adherence as measured
//! by the analyser, and parity with diffusers on the same folder.

use std::path::PathBuf;

use sd_pipeline::{Request, StableDiffusion};
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};

fn model() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../sd-cli/shapes"))
}

#[test]
fn the_shapes_model_draws_what_it_is_asked() {
    let pipeline = StableDiffusion::builder()
        .model_dir(model())
        .build()
        .expect("crates/sd-cli/shapes is committed");
    let report = sd_train::eval::evaluate(&pipeline, 2, 20, 7.5).unwrap();
    println!("{report}");
    assert!(report.seen_color_accuracy() >= 0.9, "{report}");
    assert!(report.seen_shape_accuracy() >= 0.8, "{report}");
}

#[test]
fn diffusers_gives_the_same_latents_on_the_trained_folder() {
    tch::set_num_threads(1);
    let outputs = reference_dir().join("fixtures/outputs");
    let reference = read_tensors(outputs.join("shapes_model.safetensors")).unwrap();
    let runs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(outputs.join("shapes_model.json")).unwrap())
            .unwrap();
    let pipeline = StableDiffusion::builder()
        .model_dir(model())
        .build()
        .unwrap();
    for run in runs {
        let mut request = Request::new(run["prompt"].as_str().unwrap());
        request.steps = 20;
        request.seed = run["seed"].as_u64().unwrap().into();
        let key = run["key"].as_str().unwrap();
        let latents = pipeline.generate(&request).unwrap().latents;
        assert_matches(key, &latents, &take(&reference, key).unwrap(), 1);
    }
}
