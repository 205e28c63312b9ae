//! Fine-tuning a diffusers folder on images with .txt captions: it runs,
//! resumes, and bad data fails naming the file.

use sd_testkit::parity::reference_dir;
use sd_train::recipe::fine_tune;
use sd_train::{FolderDataset, TrainOptions};

fn scratch(name: &str) -> std::path::PathBuf {
    sd_testkit::scratch_dir(&format!("train-ft-{name}"))
}

#[test]
fn fine_tunes_and_resumes_a_diffusers_folder() {
    let data = scratch("data");
    for (i, color) in [[255u8, 0, 0], [0, 0, 255]].iter().enumerate() {
        image::RgbImage::from_pixel(64, 64, image::Rgb(*color))
            .save(data.join(format!("{i}.png")))
            .unwrap();
        std::fs::write(
            data.join(format!("{i}.txt")),
            format!("a plain colour {i}\n"),
        )
        .unwrap();
    }
    let dataset = FolderDataset::open(&data, 32).unwrap();
    let out = scratch("out");
    let model = reference_dir().join("fixtures/tiny-sd1");
    let options = TrainOptions {
        steps: 4,
        batch_size: 2,
        warmup_steps: 1,
        ..Default::default()
    };
    let losses = fine_tune(&model, &dataset, &options, &out, false, &mut |_, _, _| {}).unwrap();
    assert_eq!(losses.len(), 4);
    assert!(losses.iter().all(|l| l.is_finite()));
    let state = std::fs::read_to_string(out.join("train_state.json")).unwrap();
    assert!(state.contains("\"step\": 4"), "{state}");
    // Resuming to 6 steps runs the 2 remaining ones.
    let more = TrainOptions {
        steps: 6,
        ..options
    };
    let losses = fine_tune(&model, &dataset, &more, &out, true, &mut |_, _, _| {}).unwrap();
    assert_eq!(losses.len(), 2);
    let pipeline = sd_pipeline::StableDiffusion::builder()
        .model_dir(&out)
        .build()
        .unwrap();
    let mut request = sd_pipeline::Request::new("a plain colour 0");
    request.steps = 2;
    assert_eq!(pipeline.generate(&request).unwrap().images.len(), 1);
}

#[test]
fn missing_captions_and_unreadable_images_are_named() {
    let data = scratch("bad");
    image::RgbImage::new(8, 8)
        .save(data.join("alone.png"))
        .unwrap();
    let err = FolderDataset::open(&data, 32).unwrap_err().to_string();
    assert!(
        err.contains("alone.png") && err.contains("alone.txt"),
        "{err}"
    );
    std::fs::write(data.join("alone.txt"), "a caption").unwrap();
    std::fs::write(data.join("broken.png"), b"not a png").unwrap();
    std::fs::write(data.join("broken.txt"), "a caption").unwrap();
    let dataset = FolderDataset::open(&data, 32).unwrap();
    use sd_train::Dataset;
    let err = (0..dataset.len())
        .find_map(|i| dataset.get(i).err())
        .unwrap()
        .to_string();
    assert!(
        err.contains("broken.png") && err.contains("unreadable"),
        "{err}"
    );
    let empty = scratch("empty");
    assert!(FolderDataset::open(&empty, 32)
        .unwrap_err()
        .to_string()
        .contains("no images"));
}
