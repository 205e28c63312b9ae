//! A short training run on the shapes dataset: the losses fall, and the
//! written folder loads in the pipeline. (The full run is documented in
//! docs/training.md; it does not run in CI.)

use sd_pipeline::{Request, StableDiffusion};
use sd_train::recipe::{train_shapes_model, ShapesRecipe};
use sd_train::{ShapesDataset, TrainOptions};

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn short_training_lowers_the_loss_and_writes_a_loadable_model() {
    let data = ShapesDataset::new(1, 512, 32);
    let base = TrainOptions {
        batch_size: 8,
        learning_rate: 2e-3,
        warmup_steps: 5,
        ema_decay: 0.0,
        ..Default::default()
    };
    let recipe = ShapesRecipe {
        vae: TrainOptions {
            steps: 40,
            ..base.clone()
        },
        unet: TrainOptions { steps: 60, ..base },
        log: None,
        vae_from: None,
    };
    let out = std::env::temp_dir().join(format!("sd-train-smoke-{}", std::process::id()));
    let started = std::time::Instant::now();
    let (vae, unet) = train_shapes_model(&data, &recipe, &out, &mut |_, _, _| {}).unwrap();
    println!("trained in {:?}", started.elapsed());
    assert!(
        mean(&vae[30..]) < 0.7 * mean(&vae[..10]),
        "vae loss {:.4} -> {:.4}",
        mean(&vae[..10]),
        mean(&vae[30..])
    );
    assert!(
        mean(&unet[45..]) < mean(&unet[..15]),
        "unet loss {:.4} -> {:.4}",
        mean(&unet[..15]),
        mean(&unet[45..])
    );
    let pipeline = StableDiffusion::builder().model_dir(&out).build().unwrap();
    let mut request = Request::new("a large red circle on a white background");
    request.steps = 4;
    let image = &pipeline.generate(&request).unwrap().images[0];
    assert_eq!(image.dimensions(), (32, 32));
}
