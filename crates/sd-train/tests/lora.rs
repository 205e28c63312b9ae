//! `sd train --lora` in the library: the loss falls, the file is kohya's
//! format (read back by sd-lora, all modules, nothing skipped), training
//! resumes from it, and bad settings fail naming what is wrong. (That
//! diffusers reads the file the same way is the harness's "sd1.trained"
//! case, checked by crates/sd-pipeline/tests/lora.rs.)

use sd_testkit::parity::reference_dir;
use sd_train::recipe::{train_lora, LORA_FILE};
use sd_train::{FolderDataset, TrainOptions};

fn scratch(name: &str) -> std::path::PathBuf {
    sd_testkit::scratch_dir(&format!("train-lora-{name}"))
}

fn colours() -> FolderDataset {
    let data = scratch("data");
    let colours = [
        ("red", [255u8, 0, 0]),
        ("blue", [0, 0, 255]),
        ("green", [0, 255, 0]),
        ("yellow", [255, 255, 0]),
    ];
    for (i, (name, rgb)) in colours.iter().enumerate() {
        image::RgbImage::from_pixel(64, 64, image::Rgb(*rgb))
            .save(data.join(format!("{i}.png")))
            .unwrap();
        std::fs::write(data.join(format!("{i}.txt")), format!("a {name} square\n")).unwrap();
    }
    FolderDataset::open(&data, 64).unwrap()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn a_lora_learns_writes_kohya_and_resumes() {
    let data = colours();
    let model = reference_dir().join("fixtures/tiny-sd1");
    let out = scratch("out");
    let options = TrainOptions {
        steps: 40,
        batch_size: 4,
        learning_rate: 1e-2,
        warmup_steps: 2,
        ..Default::default()
    };
    let losses = train_lora(
        &model,
        &data,
        &options,
        4,
        false,
        &out,
        false,
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(losses.len(), 40);
    let (first, last) = (mean(&losses[..10]), mean(&losses[30..]));
    println!("loss {first:.4} -> {last:.4}");
    assert!(
        last < first - 0.05,
        "the loss did not fall: {first:.4} -> {last:.4}"
    );

    let file = sd_lora::LoraFile::open(out.join(LORA_FILE)).unwrap();
    assert_eq!(
        file.modules.len(),
        48,
        "every attention projection of tiny-sd1"
    );
    assert!(file.unknown.is_empty(), "{:?}", file.unknown);
    let mapped = sd_core::weights::MappedFile::open(out.join(LORA_FILE)).unwrap();
    let metadata = mapped.metadata().unwrap();
    assert_eq!(metadata["ss_network_dim"], "4");
    assert_eq!(metadata["sd_rs_steps"], "40");

    // Resuming to 44 steps runs the 4 remaining ones from the saved factors.
    let more = TrainOptions {
        steps: 44,
        ..options.clone()
    };
    let resumed = train_lora(
        &model,
        &data,
        &more,
        4,
        false,
        &out,
        true,
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(resumed.len(), 4);
    assert!(mean(&resumed) < first, "resumed from scratch? {resumed:?}");
    let mapped = sd_core::weights::MappedFile::open(out.join(LORA_FILE)).unwrap();
    assert_eq!(mapped.metadata().unwrap()["sd_rs_steps"], "44");
    let log = std::fs::read_to_string(out.join("loss.csv")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.starts_with("unet,")).count(),
        44,
        "one log line per step"
    );

    // Another rank cannot resume this file.
    let err = train_lora(
        &model,
        &data,
        &more,
        2,
        false,
        &out,
        true,
        &mut |_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("another rank"), "{err}");
}

#[test]
fn bad_lora_settings_are_named() {
    let data = colours();
    let model = reference_dir().join("fixtures/tiny-sd1");
    let options = TrainOptions {
        steps: 1,
        batch_size: 1,
        warmup_steps: 1,
        ..Default::default()
    };
    let err = train_lora(
        &model,
        &data,
        &options,
        0,
        false,
        &scratch("rank0"),
        false,
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("rank 0"), "{err}");
    let err = train_lora(
        &model,
        &data,
        &options,
        64,
        false,
        &scratch("rank64"),
        false,
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    let err = train_lora(
        &model,
        &data,
        &options,
        2,
        false,
        &scratch("fresh"),
        true,
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains(LORA_FILE), "{err}");
}

#[test]
fn the_text_encoder_trains_too_when_asked() {
    let data = colours();
    let model = reference_dir().join("fixtures/tiny-sd1");
    let out = scratch("te");
    let options = TrainOptions {
        steps: 3,
        batch_size: 2,
        learning_rate: 1e-2,
        warmup_steps: 1,
        ..Default::default()
    };
    train_lora(
        &model,
        &data,
        &options,
        2,
        true,
        &out,
        false,
        &mut |_, _, _| {},
    )
    .unwrap();
    let file = sd_lora::LoraFile::open(out.join(LORA_FILE)).unwrap();
    let text: Vec<_> = file
        .modules
        .iter()
        .filter(|m| m.component == sd_lora::Component::TextEncoder)
        .collect();
    assert!(!text.is_empty(), "no lora_te_ modules");
    // the gradient reached the text encoder's factors: `up` left zero
    for module in text {
        let sd_lora::Adapter::Lora { up, .. } = &module.adapter else {
            panic!("not a LoRA");
        };
        let moved = f64::try_from(up.abs().sum(tch::Kind::Float)).unwrap();
        assert!(moved > 0.0, "{}: up is still zero", module.name.as_str());
    }
    let mut pipeline = sd_pipeline::StableDiffusion::builder()
        .model_dir(&model)
        .build()
        .unwrap();
    let report = pipeline
        .set_loras(&[sd_pipeline::LoraSpec::new(out.join(LORA_FILE), 1.0)])
        .unwrap();
    assert!(report[0].applied[&sd_lora::Component::TextEncoder] > 0);
    assert!(report[0].skipped.is_empty());
}
