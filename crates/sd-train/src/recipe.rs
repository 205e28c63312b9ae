//! Whole training runs: the shapes model from scratch, and fine-tuning a
//! diffusers folder's UNet on your images.

use sd_core::DiffusersModel;
use std::path::{Path, PathBuf};

use sd_clip::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use sd_scheduler::schedule::{BetaConfig, NoiseSchedule};
use sd_scheduler::SchedulerConfig;
use sd_unet::{UNet2DConditionModel, UNetConfig};
use sd_vae::{AutoencoderKL, VaeConfig};
use serde_json::Value;
use tch::Kind;

use crate::dataset::Dataset;
use crate::error::{Result, TrainError};
use crate::lora::{LoraGroup, LoraNetwork, DEFAULT_TARGETS, TEXT_TARGETS};
use crate::model::{self, Checkpoint};
use crate::trainer::{self, Ema, LossLog, TextSide, TrainOptions};

/// Step counts and options for [`train_shapes_model`].
#[derive(Debug, Clone)]
pub struct ShapesRecipe {
    /// The autoencoder phase.
    pub vae: TrainOptions,
    /// The UNet phase.
    pub unet: TrainOptions,
    /// Where to append the loss log (CSV).
    pub log: Option<PathBuf>,
    /// Take the autoencoder (weights and latent scale) from this shapes
    /// folder instead of training one: for trying UNet recipes quickly.
    pub vae_from: Option<PathBuf>,
}

fn schedule_of(config: &Value) -> Result<NoiseSchedule> {
    let c = SchedulerConfig::from_json_str(&config.to_string())?;
    Ok(NoiseSchedule::new(&BetaConfig {
        num_train_timesteps: c.num_train_timesteps.unwrap_or(1000),
        beta_start: c.beta_start.unwrap_or(0.00085),
        beta_end: c.beta_end.unwrap_or(0.012),
        beta_schedule: c
            .beta_schedule
            .unwrap_or(sd_scheduler::config::BetaSchedule::ScaledLinear),
        trained_betas: c.trained_betas.clone(),
        rescale_betas_zero_snr: c.rescale_betas_zero_snr.unwrap_or(false),
    })?)
}

/// Trains the shapes model from nothing and writes it to `out` as a
/// diffusers folder. The text encoder keeps its seeded random weights
/// (frozen) with its token mixing switched off ([`per_token_states`]), so
/// that each caption word reaches the UNet as its own state; that is what
/// lets the model draw colour-shape pairs it never saw.
pub fn train_shapes_model(
    data: &dyn Dataset,
    recipe: &ShapesRecipe,
    out: &Path,
    progress: &mut dyn FnMut(&str, usize, f64),
) -> Result<(Vec<f64>, Vec<f64>)> {
    let device = recipe.unet.device;
    tch::manual_seed(recipe.unet.seed as i64);
    let mut log = LossLog::create(recipe.log.as_deref(), false)?;
    // 1. the frozen text encoder: seeded random weights, one state per word
    let te_config_json = model::text_encoder_config();
    let te_config = ClipTextConfig::from_json_str(&te_config_json.to_string())?;
    let text_encoder = ClipTextModel::new(&te_config, device)?;
    sd_core::nn::init_for_training(text_encoder.var_store());
    per_token_states(text_encoder.var_store());
    let tokenizer = ClipTokenizer::builtin(sd_clip::tokenizer::EOS)?;
    // 2. the autoencoder, then its latent scale
    let (vae, vae_config_json, vae_losses) = match &recipe.vae_from {
        Some(dir) => {
            let config = read_json(&dir.join("vae/config.json"))?;
            let vae = AutoencoderKL::from_folder(dir.join("vae"), device, Kind::Float, None)?;
            (vae, config, Vec::new())
        }
        None => {
            let vae = AutoencoderKL::new(
                &VaeConfig::from_json_str(&model::vae_config(1.0).to_string())?,
                device,
            )?;
            sd_core::nn::init_for_training(vae.var_store());
            let losses = trainer::train_vae(&vae, data, &recipe.vae, &mut log, &mut |s, l| {
                progress("vae", s, l)
            })?;
            let scaling = trainer::latent_scaling_factor(&vae, data, 256, device)?;
            let config = model::vae_config((scaling * 1e5).round() / 1e5);
            (rescaled(vae, &config)?, config, losses)
        }
    };
    // 3. the UNet on the frozen VAE's latents
    let unet_config_json = model::unet_config();
    let unet = UNet2DConditionModel::new(
        &UNetConfig::from_json_str(&unet_config_json.to_string())?,
        device,
    )?;
    sd_core::nn::init_for_training(unet.var_store());
    let scheduler = model::scheduler_config();
    let schedule = schedule_of(&scheduler)?;
    let mut ema =
        (recipe.unet.ema_decay > 0.0).then(|| Ema::new(unet.var_store(), recipe.unet.ema_decay));
    let text = TextSide {
        tokenizer: &tokenizer,
        encoder: &text_encoder,
    };
    let unet_losses = trainer::train_unet(
        &unet,
        &vae,
        &text,
        &schedule,
        data,
        &recipe.unet,
        trainer::UNetTarget::Full(ema.as_mut()),
        &mut log,
        &mut |s, l| progress("unet", s, l),
    )?;
    // 4. the diffusers folder, with the EMA weights
    model::save(
        out,
        &Checkpoint {
            text_encoder: (&te_config_json, text_encoder.var_store()),
            unet: (
                &unet_config_json,
                unet.var_store(),
                ema.as_ref().map(Ema::weights),
            ),
            vae: (&vae_config_json, vae.var_store()),
            scheduler: &scheduler,
            dtype: Kind::Half,
        },
    )?;
    Ok((vae_losses, unet_losses))
}

/// Makes every token's state a function of its own word only: the
/// self-attention output projections and the position embeddings become
/// zero. With mixing attention, the states after the shape word carry the
/// colour and the shape as one code, the UNet learns to read the colour from
/// that code, and a pair never trained on is a code it has never seen
/// (docs/training.md, "Why held-out pairs failed").
pub fn per_token_states(vs: &tch::nn::VarStore) {
    let _guard = tch::no_grad_guard();
    for (name, mut tensor) in vs.variables() {
        if name.contains("self_attn.out_proj.") || name.contains("position_embedding.") {
            let _ = tensor.zero_();
        }
    }
}

/// The same VAE weights under a config with the measured scaling factor.
fn rescaled(vae: AutoencoderKL, config: &Value) -> Result<AutoencoderKL> {
    let new = AutoencoderKL::new(
        &VaeConfig::from_json_str(&config.to_string())?,
        vae.var_store().device(),
    )?;
    sd_core::weights::copy_variables(vae.var_store(), new.var_store())?;
    Ok(new)
}

/// Fine-tunes the UNet of the diffusers folder `model_dir` on `data` and
/// writes the result to `out` (the other components are copied as they are).
/// With `resume`, training continues from `out`'s UNet and its step count.
pub fn fine_tune(
    model_dir: &Path,
    data: &dyn Dataset,
    options: &TrainOptions,
    out: &Path,
    resume: bool,
    progress: &mut dyn FnMut(&str, usize, f64),
) -> Result<Vec<f64>> {
    let unet_source = if resume { out } else { model_dir };
    let done = if resume { read_state(out)? } else { 0 };
    let Loaded {
        tokenizer,
        text_encoder,
        vae,
        unet,
        scheduler,
        schedule,
    } = Loaded::read(model_dir, unet_source, options.device)?;
    let remaining = TrainOptions {
        steps: options.steps.saturating_sub(done).max(1),
        ..options.clone()
    };
    let mut ema = (options.ema_decay > 0.0).then(|| Ema::new(unet.var_store(), options.ema_decay));
    let mut log = LossLog::create(Some(&out.join("loss.csv")), resume)?;
    let text = TextSide {
        tokenizer: &tokenizer,
        encoder: &text_encoder,
    };
    let losses = trainer::train_unet(
        &unet,
        &vae,
        &text,
        &schedule,
        data,
        &remaining,
        trainer::UNetTarget::Full(ema.as_mut()),
        &mut log,
        &mut |s, l| progress("unet", done + s, l),
    )?;
    let te_config = read_json(&model_dir.join("text_encoder/config.json"))?;
    let unet_config = read_json(&model_dir.join("unet/config.json"))?;
    let vae_config = read_json(&model_dir.join("vae/config.json"))?;
    model::save(
        out,
        &Checkpoint {
            text_encoder: (&te_config, text_encoder.var_store()),
            unet: (
                &unet_config,
                unet.var_store(),
                ema.as_ref().map(Ema::weights),
            ),
            vae: (&vae_config, vae.var_store()),
            scheduler: &scheduler,
            dtype: Kind::Float,
        },
    )?;
    write_state(out, done + remaining.steps)?;
    Ok(losses)
}

/// A diffusers folder's components in f32 for training (the UNet from
/// `unet_source`, which differs when a fine-tune resumes).
struct Loaded {
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    scheduler: Value,
    schedule: NoiseSchedule,
}

impl Loaded {
    fn read(model_dir: &Path, unet_source: &Path, device: tch::Device) -> Result<Self> {
        let scheduler = read_json(&model_dir.join("scheduler/scheduler_config.json"))?;
        Ok(Loaded {
            tokenizer: ClipTokenizer::from_folder(model_dir.join("tokenizer"))?,
            text_encoder: ClipTextModel::from_folder(
                model_dir.join("text_encoder"),
                device,
                Kind::Float,
                None,
            )?,
            vae: AutoencoderKL::from_folder(model_dir.join("vae"), device, Kind::Float, None)?,
            unet: UNet2DConditionModel::from_folder(
                unet_source.join("unet"),
                device,
                Kind::Float,
                None,
            )?,
            schedule: schedule_of(&scheduler)?,
            scheduler,
        })
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| sd_core::CoreError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
}

/// The LoRA file `sd train --lora` writes in its --out folder.
pub const LORA_FILE: &str = "lora.safetensors";

/// Trains a LoRA of `rank` (alpha = rank: scale 1) on the UNet of the
/// diffusers folder `model_dir` (and its text encoder with `text_encoder`)
/// and writes it, in kohya's format, to `out/lora.safetensors` (with
/// `loss.csv` beside it). With `resume`, the factors and the step count come
/// from that file.
#[allow(clippy::too_many_arguments)]
pub fn train_lora(
    model_dir: &Path,
    data: &dyn Dataset,
    options: &TrainOptions,
    rank: i64,
    text_encoder: bool,
    out: &Path,
    resume: bool,
    progress: &mut dyn FnMut(&str, usize, f64),
) -> Result<Vec<f64>> {
    let loaded = Loaded::read(model_dir, model_dir, options.device)?;
    let mut groups = vec![LoraGroup {
        prefix: "lora_unet_",
        store: loaded.unet.var_store(),
        targets: &DEFAULT_TARGETS,
    }];
    if text_encoder {
        groups.push(LoraGroup {
            prefix: "lora_te_",
            store: loaded.text_encoder.var_store(),
            targets: &TEXT_TARGETS,
        });
    }
    let lora = LoraNetwork::new(&groups, rank, rank as f64, options.seed as i64)?;
    std::fs::create_dir_all(out).map_err(|e| sd_core::CoreError::io(out, e))?;
    let file = out.join(LORA_FILE);
    let done = if resume { lora.load(&file)? } else { 0 };
    let remaining = TrainOptions {
        steps: options.steps.saturating_sub(done).max(1),
        ..options.clone()
    };
    let mut log = LossLog::create(Some(&out.join("loss.csv")), resume)?;
    let text = TextSide {
        tokenizer: &loaded.tokenizer,
        encoder: &loaded.text_encoder,
    };
    let losses = trainer::train_unet(
        &loaded.unet,
        &loaded.vae,
        &text,
        &loaded.schedule,
        data,
        &remaining,
        trainer::UNetTarget::Lora(&lora),
        &mut log,
        &mut |s, l| progress("lora", done + s, l),
    )?;
    lora.save(&file, done + remaining.steps)?;
    Ok(losses)
}

fn read_state(dir: &Path) -> Result<usize> {
    let path = dir.join("train_state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| sd_core::CoreError::io(&path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
    value["step"]
        .as_u64()
        .map(|s| s as usize)
        .ok_or_else(|| TrainError::Config(format!("{}: no \"step\"", path.display())))
}

fn write_state(dir: &Path, step: usize) -> Result<()> {
    let path = dir.join("train_state.json");
    std::fs::write(&path, format!("{{\"step\": {step}}}\n"))
        .map_err(|e| sd_core::CoreError::io(&path, e).into())
}
