//! The project's own small model ("shapes"): configs of its text encoder,
//! UNet and VAE, and writing a trained model as a diffusers folder that both
//! this pipeline and diffusers load.

use sd_core::DiffusersModel;
use std::path::Path;

use serde_json::{json, Value};
use tch::nn::VarStore;
use tch::Tensor;

use crate::error::{Result, TrainError};

/// Images are 32x32; the VAE maps them to 4x8x8 latents.
pub const IMAGE_SIDE: u32 = 32;

/// The shapes model's text encoder config (a small CLIP).
pub fn text_encoder_config() -> Value {
    json!({
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
        "vocab_size": 49408, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5, "projection_dim": 16, "bos_token_id": 49406, "eos_token_id": 49407,
        "pad_token_id": 49407, "attention_dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02
    })
}

/// The shapes model's UNet config.
pub fn unet_config() -> Value {
    json!({
        "_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 4, "out_channels": 4,
        "layers_per_block": 1, "block_out_channels": [32, 64], "norm_num_groups": 16,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 16, "attention_head_dim": 4, "flip_sin_to_cos": true, "freq_shift": 0
    })
}

/// The shapes model's VAE config with its latent `scaling_factor`.
pub fn vae_config(scaling_factor: f64) -> Value {
    json!({
        "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "layers_per_block": 1, "block_out_channels": [32, 64, 64], "norm_num_groups": 16,
        "sample_size": IMAGE_SIDE, "scaling_factor": scaling_factor, "force_upcast": false,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    })
}

/// The noise schedule the model trains and samples with (SD's betas).
pub fn scheduler_config() -> Value {
    json!({
        "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "clip_sample": false, "set_alpha_to_one": false, "steps_offset": 1,
        "prediction_type": "epsilon", "timestep_spacing": "leading", "trained_betas": null
    })
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| sd_core::CoreError::io(dir, e))?;
    }
    std::fs::write(path, text).map_err(|e| sd_core::CoreError::io(path, e).into())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    write(
        path,
        &(serde_json::to_string_pretty(value).expect("JSON values serialise") + "\n"),
    )
}

/// Every variable of `vs` (or `weights` when given, e.g. EMA copies) as
/// safetensors in `kind` (f32, or f16 to halve the size), sorted by name.
pub fn write_weights(
    path: &Path,
    vs: &VarStore,
    weights: Option<&[(String, Tensor)]>,
    kind: tch::Kind,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = match weights {
        Some(w) => w
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
        None => vs.variables().into_iter().collect(),
    };
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let tensors: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.detach()
                    .to_device(tch::Device::Cpu)
                    .to_kind(kind)
                    .contiguous(),
            )
        })
        .collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| sd_core::CoreError::io(dir, e))?;
    }
    Tensor::write_safetensors(&tensors, path).map_err(TrainError::from)
}

/// The parts of a checkpoint folder.
pub struct Checkpoint<'a> {
    /// The text encoder's config and weights.
    pub text_encoder: (&'a Value, &'a VarStore),
    /// The UNet's config, weights and optional EMA weights to save instead.
    pub unet: (&'a Value, &'a VarStore, Option<&'a [(String, Tensor)]>),
    /// The VAE's config and weights.
    pub vae: (&'a Value, &'a VarStore),
    /// The scheduler config.
    pub scheduler: &'a Value,
    /// Weight dtype in the files (f16 keeps the shapes model small).
    pub dtype: tch::Kind,
}

/// Writes a complete diffusers folder (model_index.json, tokenizer/,
/// text_encoder/, unet/, vae/, scheduler/).
pub fn save(dir: &Path, c: &Checkpoint<'_>) -> Result<()> {
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
            "feature_extractor": [null, null], "safety_checker": [null, null], "requires_safety_checker": false,
            "scheduler": ["diffusers", c.scheduler["_class_name"]],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]
        }),
    )?;
    write(
        &dir.join("tokenizer/vocab.json"),
        sd_clip::tokenizer::BUILTIN_VOCAB,
    )?;
    write(
        &dir.join("tokenizer/merges.txt"),
        sd_clip::tokenizer::BUILTIN_MERGES,
    )?;
    let special = json!({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"});
    write_json(&dir.join("tokenizer/special_tokens_map.json"), &special)?;
    let mut tokenizer_config = special.clone();
    tokenizer_config["tokenizer_class"] = json!("CLIPTokenizer");
    tokenizer_config["model_max_length"] = json!(77);
    write_json(
        &dir.join("tokenizer/tokenizer_config.json"),
        &tokenizer_config,
    )?;
    write_json(&dir.join("scheduler/scheduler_config.json"), c.scheduler)?;
    write_json(&dir.join("text_encoder/config.json"), c.text_encoder.0)?;
    write_weights(
        &dir.join("text_encoder/model.safetensors"),
        c.text_encoder.1,
        None,
        c.dtype,
    )?;
    write_json(&dir.join("unet/config.json"), c.unet.0)?;
    write_weights(
        &dir.join("unet/diffusion_pytorch_model.safetensors"),
        c.unet.1,
        c.unet.2,
        c.dtype,
    )?;
    write_json(&dir.join("vae/config.json"), c.vae.0)?;
    write_weights(
        &dir.join("vae/diffusion_pytorch_model.safetensors"),
        c.vae.1,
        None,
        c.dtype,
    )
}

/// A full-size SD1.5-architecture folder with seeded random weights, from
/// the built-in SD1.5 configs: for benchmarks where no real weights exist
/// (and where Python's diffusers is absent, e.g. a bare GPU machine).
/// Random weights draw noise; this only times the work.
pub fn write_random_sd15(dir: &Path, seed: u64, kind: tch::Kind) -> Result<()> {
    use sd_clip::{ClipTextConfig, ClipTextModel};
    use sd_unet::{UNet2DConditionModel, UNetConfig};
    use sd_vae::{AutoencoderKL, VaeConfig};

    let preset = sd_pipeline::single_file::preset(sd_pipeline::single_file::Detected {
        kind: sd_pipeline::single_file::CheckpointKind::Sd1,
        inpainting: false,
    });
    let device = tch::Device::Cpu;
    tch::manual_seed(seed as i64);
    let text_encoder = ClipTextModel::new(
        &ClipTextConfig::from_json_str(&preset["text_encoder"].to_string())?,
        device,
    )?;
    let unet = UNet2DConditionModel::new(
        &UNetConfig::from_json_str(&preset["unet"].to_string())?,
        device,
    )?;
    let vae = AutoencoderKL::new(
        &VaeConfig::from_json_str(&preset["vae"].to_string())?,
        device,
    )?;
    for vs in [text_encoder.var_store(), unet.var_store(), vae.var_store()] {
        sd_core::nn::init_for_training(vs);
    }
    save(
        dir,
        &Checkpoint {
            text_encoder: (&preset["text_encoder"], text_encoder.var_store()),
            unet: (&preset["unet"], unet.var_store(), None),
            vae: (&preset["vae"], vae.var_store()),
            scheduler: &preset["scheduler"],
            dtype: kind,
        },
    )
}
