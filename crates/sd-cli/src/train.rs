//! `sd train`: the shapes model from scratch, or fine-tuning a diffusers
//! folder on images with same-named .txt captions.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sd_train::recipe::{fine_tune, train_lora, train_shapes_model, ShapesRecipe};
use sd_train::{FolderDataset, ShapesDataset, TrainOptions};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Train the project's shapes model from scratch (procedural data, no download).
    #[arg(long)]
    pub shapes: bool,
    /// Fine-tune this diffusers folder's UNet (needs --data).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A folder of images with same-named .txt captions.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where the trained diffusers folder goes.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue a fine-tune from --out's UNet and step count (with --lora:
    /// from --out/lora.safetensors).
    #[arg(long)]
    pub resume: bool,
    /// Train a LoRA of this rank on the UNet's attention projections instead
    /// of the whole UNet (with --model and --data); writes
    /// --out/lora.safetensors in kohya's format, which diffusers, A1111 and
    /// `sd txt2img --lora` load.
    #[arg(long, value_name = "RANK")]
    pub lora: Option<i64>,
    /// With --lora: also train the text encoder's attention projections
    /// (written as lora_te_ keys).
    #[arg(long)]
    pub lora_text_encoder: bool,
    /// UNet steps (fine-tuning, or the shapes model's UNet phase).
    #[arg(long, default_value_t = 6000)]
    pub steps: usize,
    /// The shapes model's autoencoder steps.
    #[arg(long, default_value_t = 1500)]
    pub vae_steps: usize,
    /// With --shapes: take the autoencoder from this shapes folder instead
    /// of training one (to try UNet recipes quickly).
    #[arg(long, value_name = "DIR")]
    pub vae_from: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Training image side for --data (the shapes model uses 32).
    #[arg(long, default_value_t = 512)]
    pub resolution: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: &TrainArgs) -> Result<()> {
    if args.lora_text_encoder && args.lora.is_none() {
        bail!("--lora-text-encoder needs --lora RANK");
    }
    if args.vae_from.is_some() && !args.shapes {
        bail!("--vae-from goes with --shapes");
    }
    if args.shapes && args.lora.is_some() {
        bail!("--lora trains on a model you give: use --model DIR with --data DIR, not --shapes");
    }
    let device = sd_core::device::parse_device(&args.device)?;
    let options = TrainOptions {
        steps: args.steps,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        warmup_steps: (args.steps / 20).max(1),
        seed: args.seed,
        device,
        ..Default::default()
    };
    let bar = ProgressBar::new(0);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} {elapsed_precise}")
                .expect("valid template"),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let mut phase = String::new();
    let mut progress = |name: &str, step: usize, loss: f64| {
        if name != phase {
            phase = name.to_string();
            bar.set_position(0);
        }
        bar.set_message(format!("{name} loss {loss:.4}"));
        bar.set_position(step as u64 + 1);
    };
    match (&args.model, &args.data, args.shapes) {
        (None, None, true) => {
            let recipe = ShapesRecipe {
                vae: TrainOptions {
                    steps: args.vae_steps,
                    warmup_steps: (args.vae_steps / 20).max(1),
                    ..options.clone()
                },
                unet: options,
                log: Some(args.out.join("loss.csv")),
                vae_from: args.vae_from.clone(),
            };
            let vae_steps = if args.vae_from.is_some() {
                0
            } else {
                args.vae_steps
            };
            bar.set_length((vae_steps + args.steps) as u64);
            let data = ShapesDataset::new(args.seed, 100_000, sd_train::model::IMAGE_SIDE);
            let (vae, unet) = train_shapes_model(&data, &recipe, &args.out, &mut progress)?;
            bar.finish_and_clear();
            println!(
                "trained {}: vae loss {:.4} -> {:.4}, unet loss {:.4} -> {:.4}",
                args.out.display(),
                vae.first().unwrap_or(&0.0),
                vae.last().unwrap_or(&0.0),
                unet.first().unwrap_or(&0.0),
                unet.last().unwrap_or(&0.0)
            );
        }
        (Some(model), Some(data), false) => {
            let dataset = FolderDataset::open(data, args.resolution)?;
            bar.set_length(args.steps as u64);
            let (o, resume) = (&options, args.resume);
            let losses = match args.lora {
                Some(rank) => {
                    let text = args.lora_text_encoder;
                    train_lora(
                        model,
                        &dataset,
                        o,
                        rank,
                        text,
                        &args.out,
                        resume,
                        &mut progress,
                    )?
                }
                None => fine_tune(model, &dataset, o, &args.out, resume, &mut progress)?,
            };
            bar.finish_and_clear();
            let (first, last) = (
                losses.first().unwrap_or(&0.0),
                losses.last().unwrap_or(&0.0),
            );
            match args.lora {
                Some(rank) => println!(
                    "trained a rank-{rank} LoRA into {} ({} steps, loss {first:.4} -> {last:.4})",
                    args.out.join(sd_train::recipe::LORA_FILE).display(),
                    losses.len(),
                ),
                None => println!(
                    "fine-tuned into {} ({} steps, last loss {last:.4})",
                    args.out.display(),
                    losses.len(),
                ),
            }
        }
        _ => bail!("give either --shapes, or --model DIR with --data DIR"),
    }
    Ok(())
}
