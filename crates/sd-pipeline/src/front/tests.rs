//! The request layer's checks and what a checked set gives, without a model.

use super::*;
use crate::error::PipelineError;
use crate::generate::{Seed, Task};
use crate::Control;

fn field_of(params: Parameters, limits: &Limits) -> Field {
    match params.check(limits, None) {
        Err(PipelineError::InvalidInput { field, .. }) => field,
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn each_bad_value_is_refused_naming_its_field() {
    let with = |change: fn(&mut Parameters)| {
        let mut p = Parameters::new("a cat");
        change(&mut p);
        p
    };
    let server = Limits::default();
    type Change = fn(&mut Parameters);
    let cases: [(Change, Field); 12] = [
        (|p| p.steps = 0, Field::Steps),
        (|p| p.steps = 151, Field::Steps),
        (|p| p.guidance = f64::NAN, Field::Guidance),
        (|p| p.guidance = 101.0, Field::Guidance),
        (|p| p.eta = f64::INFINITY, Field::Eta),
        (|p| p.width = Some(60), Field::Width),
        (|p| p.height = Some(4096), Field::Height),
        (|p| p.batch_size = 0, Field::BatchSize),
        (|p| p.n_iter = 17, Field::BatchSize),
        (|p| p.prompt_options.clip_skip = 12, Field::ClipSkip),
        (|p| p.prompt = "a <lora:ink:0.5> cat".into(), Field::Prompt),
        (
            |p| p.control = Some(Control::new(vec![]).with_window(0.8, 0.2)),
            Field::ControlWindow,
        ),
    ];
    for (change, field) in cases {
        assert_eq!(field_of(with(change), &server), field);
    }
    let strength = Source::Image {
        image: image::RgbImage::new(8, 8),
        mask: None,
        strength: 0.0,
    };
    let mut p = Parameters::new("x");
    p.source = strength;
    assert_eq!(field_of(p, &Limits::NONE), Field::Strength);
    // Without limits, sizes and counts are the pipeline's business.
    let mut big = Parameters::new("x");
    (big.steps, big.width, big.guidance) = (1000, Some(4096), 500.0);
    assert!(big.check(&Limits::NONE, None).is_ok());
}

#[test]
fn seeds_requests_and_batch_keys_follow_the_seed_layout() {
    let mut p = Parameters::new("a cat");
    (p.seed, p.batch_size, p.n_iter) = (Some(10), 2, 2);
    p.batch_seeds = BatchSeeds::Consecutive;
    let checked = p.clone().check(&Limits::NONE, None).unwrap();
    assert_eq!(checked.image_seeds(), [10, 11, 12, 13]);
    let requests = checked.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].seed, Seed::PerImage(vec![12, 13]));
    assert!(checked.batch_key().is_none(), "two runs run alone");

    p.batch_seeds = BatchSeeds::OneGenerator;
    let checked = p.clone().check(&Limits::NONE, None).unwrap();
    assert_eq!(checked.image_seeds(), [10, 10, 12, 12]);
    assert_eq!(checked.requests()[1].seed, Seed::Batch(12));

    // One run: consecutive seeds may join a batch; one generator for several may not.
    p.n_iter = 1;
    let one_generator = p.clone().check(&Limits::NONE, None).unwrap();
    assert!(one_generator.batch_key().is_none());
    p.batch_seeds = BatchSeeds::Consecutive;
    let a = p.clone().check(&Limits::NONE, None).unwrap();
    p.prompt = "a dog".into();
    let b = p.clone().check(&Limits::NONE, None).unwrap();
    assert!(a.batch_key().is_some() && a.batch_key() == b.batch_key());
    p.steps += 1;
    let c = p.check(&Limits::NONE, None).unwrap();
    assert_ne!(a.batch_key(), c.batch_key());
    assert!(matches!(a.requests()[0].task, Task::TextToImage));
}

#[test]
fn a_random_seed_is_fixed_once_and_recorded() {
    let checked = Parameters::new("x").check(&Limits::NONE, None).unwrap();
    let seed = checked.seed();
    assert_eq!(checked.image_seeds(), [seed]);
    assert_eq!(checked.requests()[0].seed, Seed::Batch(seed));
    let text = checked
        .generation_parameters(0, (64, 48), sd_scheduler::SamplerKind::EulerAncestral, "m")
        .infotext();
    assert!(
        text.ends_with(&format!(
            "Sampler: Euler a, CFG scale: 7.5, Seed: {seed}, Size: 64x48, Model: m"
        )),
        "{text}"
    );
}

#[test]
fn sd3_options_reach_the_requests_and_keep_batches_apart() {
    let body: a1111::GenerateRequest = serde_json::from_str(
        r#"{"prompt": "a cat", "seed": 3, "max_sequence_length": 77, "skip_layer_guidance": [7, 8, 9]}"#,
    )
    .unwrap();
    let checked = body
        .parameters(false)
        .unwrap()
        .check(&Limits::NONE, None)
        .unwrap();
    let request = &checked.requests()[0];
    assert_eq!(request.max_sequence_length, Some(77));
    assert_eq!(
        request.skip_layer_guidance,
        Some(crate::SkipLayerGuidance::new(vec![7, 8, 9]))
    );
    let plain = Parameters::new("a cat").check(&Limits::NONE, None).unwrap();
    assert_eq!(plain.requests()[0].max_sequence_length, None);
    assert_ne!(checked.batch_key(), plain.batch_key());
}
