//! The training loops. The UNet learns to predict the noise (or v) that the
//! forward process added to a latent at a random timestep, given the
//! caption's embeddings; the VAE learns to reconstruct images through a
//! small KL-regularised latent.

use sd_core::DiffusersModel;
use std::io::Write;
use std::path::Path;

use sd_clip::{ClipTextModel, ClipTokenizer};
use sd_core::rng::NoiseSource;
use sd_scheduler::schedule::NoiseSchedule;
use sd_scheduler::PredictionType;
use sd_unet::UNet2DConditionModel;
use sd_vae::AutoencoderKL;
use tch::nn::{self, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

use crate::dataset::Dataset;
use crate::error::{Result, TrainError};
use crate::shapes::SplitMix;

/// Options shared by both loops.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Optimiser steps.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate (after warmup).
    pub learning_rate: f64,
    /// Linear warm-up, then cosine decay to 10% of the rate.
    pub warmup_steps: usize,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Gradient norm clip (0 = off).
    pub grad_clip: f64,
    /// EMA of the weights (0 = off); the checkpoint holds the EMA weights.
    pub ema_decay: f64,
    /// Probability of training on the empty caption (for classifier-free guidance).
    pub caption_dropout: f64,
    /// What the UNet learns to predict (epsilon or v).
    pub prediction: PredictionType,
    /// Min-SNR loss weighting (Hang et al. 2023); None = plain MSE.
    pub min_snr_gamma: Option<f64>,
    /// Seed of the data order and the noise.
    pub seed: u64,
    /// Where training runs.
    pub device: Device,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            steps: 1000,
            batch_size: 32,
            learning_rate: 1e-3,
            warmup_steps: 100,
            weight_decay: 1e-2,
            grad_clip: 1.0,
            ema_decay: 0.999,
            caption_dropout: 0.1,
            prediction: PredictionType::Epsilon,
            min_snr_gamma: Some(5.0),
            seed: 0,
            device: Device::Cpu,
        }
    }
}

/// The learning rate at `step`: linear warm-up, then cosine decay to 10%.
pub fn learning_rate(options: &TrainOptions, step: usize) -> f64 {
    let base = options.learning_rate;
    if step < options.warmup_steps {
        return base * (step + 1) as f64 / options.warmup_steps as f64;
    }
    let span = (options.steps - options.warmup_steps).max(1) as f64;
    let progress = ((step - options.warmup_steps) as f64 / span).min(1.0);
    base * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// An exponential moving average of a store's variables.
pub struct Ema {
    decay: f64,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// An exponential moving average of the variables of `vs` with `decay`.
    pub fn new(vs: &VarStore, decay: f64) -> Self {
        let _guard = tch::no_grad_guard();
        let mut shadow: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect();
        shadow.sort_by(|a, b| a.0.cmp(&b.0));
        Ema { decay, shadow }
    }

    /// Moves the average towards the current variables.
    pub fn update(&mut self, vs: &VarStore) {
        let _guard = tch::no_grad_guard();
        let vars = vs.variables();
        for (name, shadow) in &mut self.shadow {
            let current = &vars[name.as_str()];
            let _ = shadow
                .g_mul_scalar_(self.decay)
                .g_add_(&(current.detach() * (1.0 - self.decay)));
        }
    }

    /// The averaged weights, by name.
    pub fn weights(&self) -> &[(String, Tensor)] {
        &self.shadow
    }
}

/// A CSV log of (step, loss, learning rate).
pub struct LossLog {
    file: Option<std::fs::File>,
}

impl LossLog {
    /// A log at `path` (none: no log), appended to or started afresh.
    pub fn create(path: Option<&Path>, append: bool) -> Result<Self> {
        let Some(path) = path else {
            return Ok(LossLog { file: None });
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| sd_core::CoreError::io(dir, e))?;
        }
        let exists = path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(path)
            .map_err(|e| sd_core::CoreError::io(path, e))?;
        if !(append && exists) {
            writeln!(file, "phase,step,loss,lr").map_err(|e| sd_core::CoreError::io(path, e))?;
        }
        Ok(LossLog { file: Some(file) })
    }

    fn write(&mut self, phase: &str, step: usize, loss: f64, lr: f64) {
        if let Some(file) = &mut self.file {
            let _ = writeln!(file, "{phase},{step},{loss:.6},{lr:.3e}");
        }
    }
}

/// A batch of images (B, 3, H, W) in [-1, 1] and their captions.
fn batch(
    data: &dyn Dataset,
    rng: &mut SplitMix,
    size: usize,
    device: Device,
) -> Result<(Tensor, Vec<String>)> {
    let mut images = Vec::with_capacity(size);
    let mut captions = Vec::with_capacity(size);
    for _ in 0..size {
        let sample = data.get(rng.below(data.len()))?;
        images.push(sd_pipeline::images::image_to_tensor(&sample.image).contiguous());
        captions.push(sample.caption);
    }
    Ok((Tensor::cat(&images, 0).to_device(device), captions))
}

fn optimizer(vs: &VarStore, options: &TrainOptions) -> Result<nn::Optimizer> {
    let adamw = nn::AdamW {
        wd: options.weight_decay,
        ..Default::default()
    };
    Ok(adamw.build(vs, options.learning_rate)?)
}

/// Trains the autoencoder on reconstruction + KL; returns the per-step losses.
pub fn train_vae(
    vae: &AutoencoderKL,
    data: &dyn Dataset,
    options: &TrainOptions,
    log: &mut LossLog,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<Vec<f64>> {
    check(data, options)?;
    tch::manual_seed(options.seed as i64);
    let mut rng = SplitMix::new(options.seed);
    let mut opt = optimizer(vae.var_store(), options)?;
    let mut losses = Vec::with_capacity(options.steps);
    for step in 0..options.steps {
        let lr = learning_rate(options, step);
        opt.set_lr(lr);
        let (images, _) = batch(data, &mut rng, options.batch_size, options.device)?;
        let dist = vae.encode(&images)?;
        let z = &dist.mean + &dist.std * dist.mean.randn_like();
        let reconstruction = vae.decode(&z)?;
        let mse = (&reconstruction - &images).square().mean(Kind::Float);
        let var = dist.logvar.exp();
        let kl = ((dist.mean.square() + var - 1.0 - &dist.logvar) * 0.5).mean(Kind::Float);
        let loss = mse + kl * 1e-4;
        opt.zero_grad();
        loss.backward();
        if options.grad_clip > 0.0 {
            opt.clip_grad_norm(options.grad_clip);
        }
        opt.step();
        let value = loss.double_value(&[]);
        log.write("vae", step, value, lr);
        progress(step, value);
        losses.push(value);
    }
    Ok(losses)
}

/// The latent scale that gives unit variance (SD's `scaling_factor` recipe).
pub fn latent_scaling_factor(
    vae: &AutoencoderKL,
    data: &dyn Dataset,
    samples: usize,
    device: Device,
) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    let mut rng = SplitMix::new(12345);
    let (images, _) = batch(data, &mut rng, samples, device)?;
    let std = vae.encode(&images)?.mean.std(true).double_value(&[]);
    Ok(1.0 / std.max(1e-6))
}

/// The frozen text side of UNet training.
pub struct TextSide<'a> {
    /// The tokenizer.
    pub tokenizer: &'a ClipTokenizer,
    /// The text encoder.
    pub encoder: &'a ClipTextModel,
}

/// What UNet training updates.
pub enum UNetTarget<'a> {
    /// Every UNet weight, with an optional EMA copy.
    Full(Option<&'a mut Ema>),
    /// Only the factors of a LoRA (the models' weights stay as loaded).
    Lora(&'a crate::lora::LoraNetwork),
}

/// Trains the UNet (or a LoRA of it) on the forward process of `schedule`;
/// returns the per-step losses. The VAE and the text encoder stay frozen.
#[allow(clippy::too_many_arguments)]
pub fn train_unet(
    unet: &UNet2DConditionModel,
    vae: &AutoencoderKL,
    text: &TextSide<'_>,
    schedule: &NoiseSchedule,
    data: &dyn Dataset,
    options: &TrainOptions,
    target: UNetTarget<'_>,
    log: &mut LossLog,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<Vec<f64>> {
    check(data, options)?;
    tch::manual_seed(options.seed as i64);
    let mut rng = SplitMix::new(options.seed ^ 0x5EED);
    let device = options.device;
    let alphas = Tensor::from_slice(&schedule.alphas_cumprod).to_device(device);
    let (mut ema, lora) = match target {
        UNetTarget::Full(ema) => (ema, None),
        UNetTarget::Lora(lora) => (None, Some(lora)),
    };
    let mut opt = optimizer(lora.map_or(unet.var_store(), |l| l.params()), options)?;
    let scaling = vae.config().scaling_factor;
    let mut losses = Vec::with_capacity(options.steps);
    for step in 0..options.steps {
        let lr = learning_rate(options, step);
        opt.set_lr(lr);
        let (images, captions) = batch(data, &mut rng, options.batch_size, device)?;
        if let Some(lora) = lora {
            lora.sync();
        }
        // 1. latents and caption embeddings from the frozen models (the text
        // encoder runs with gradients when a LoRA trains it)
        let train_text = lora.is_some_and(|l| l.trains_text_encoder());
        let (latents, ids) = {
            let _guard = tch::no_grad_guard();
            let latents = vae.encode(&images)?.sample(&mut GlobalNoise)? * scaling;
            let ids: Vec<Vec<i64>> = captions
                .iter()
                .map(|c| {
                    let dropped = rng.unit() < options.caption_dropout;
                    text.tokenizer
                        .encode(if dropped { "" } else { c })
                        .map(|t| t.ids)
                })
                .collect::<sd_clip::Result<_>>()?;
            (latents, ids)
        };
        let context = {
            let _guard = (!train_text).then(tch::no_grad_guard);
            text.encoder
                .forward(&Tensor::from_slice2(&ids))?
                .last_hidden_state
                .to_device(device)
        };
        // 2. the forward process at random timesteps
        let b = latents.size()[0];
        let t = Tensor::randint(
            schedule.num_train_timesteps() as i64,
            [b],
            (Kind::Int64, device),
        );
        let a = alphas.index_select(0, &t).view([b, 1, 1, 1]);
        let one_minus_a: Tensor = a.ones_like() - &a;
        let noise = latents.randn_like();
        let noisy = &latents * a.sqrt() + &noise * one_minus_a.sqrt();
        let target = match options.prediction {
            PredictionType::Epsilon => noise.shallow_clone(),
            PredictionType::VPrediction => &noise * a.sqrt() - &latents * one_minus_a.sqrt(),
            PredictionType::Sample => latents.shallow_clone(),
        };
        // 3. the loss, optionally min-SNR weighted per sample
        // bf16/f16 autocast where libtorch has it (CUDA); f32 elsewhere.
        let autocast = matches!(device, Device::Cuda(_));
        let prediction = tch::autocast(autocast, || {
            unet.forward(&noisy, &t.to_kind(Kind::Float), &context, None)
        })?
        .to_kind(Kind::Float);
        let per_sample =
            (prediction - target)
                .square()
                .mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float);
        let loss = match options.min_snr_gamma {
            Some(gamma) => {
                let snr = a.view([b]) / one_minus_a.view([b]);
                let clipped = snr.clamp_max(gamma);
                let weight = match options.prediction {
                    PredictionType::VPrediction => clipped / (snr + 1.0),
                    PredictionType::Epsilon => clipped / snr,
                    PredictionType::Sample => clipped,
                };
                (per_sample * weight).mean(Kind::Float)
            }
            None => per_sample.mean(Kind::Float),
        };
        opt.zero_grad();
        loss.backward();
        if let Some(lora) = lora {
            lora.backprop();
        }
        if options.grad_clip > 0.0 {
            opt.clip_grad_norm(options.grad_clip);
        }
        opt.step();
        if let Some(ema) = ema.as_deref_mut() {
            ema.update(unet.var_store());
        }
        let value = loss.double_value(&[]);
        log.write("unet", step, value, lr);
        progress(step, value);
        losses.push(value);
    }
    Ok(losses)
}

/// Training noise comes from libtorch's global generator, seeded per run.
struct GlobalNoise;

impl NoiseSource for GlobalNoise {
    fn randn(&mut self, shape: &[i64]) -> sd_core::Result<Tensor> {
        Ok(Tensor::randn(shape, (Kind::Float, Device::Cpu)))
    }
}

fn check(data: &dyn Dataset, options: &TrainOptions) -> Result<()> {
    if data.is_empty() {
        return Err(TrainError::Data("the dataset is empty".into()));
    }
    if options.steps == 0 || options.batch_size == 0 {
        return Err(TrainError::Config(
            "steps and batch size must be at least 1".into(),
        ));
    }
    if options.warmup_steps > options.steps {
        return Err(TrainError::Config(format!(
            "{} warm-up steps for {} steps",
            options.warmup_steps, options.steps
        )));
    }
    Ok(())
}
