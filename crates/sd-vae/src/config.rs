//! `vae/config.json` (diffusers' `AutoencoderKL`), with diffusers' names.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, VaeError};

/// The encoder's down block types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum DownEncoderBlockType {
    /// Resnets and a downsampler.
    DownEncoderBlock2D,
}

/// The decoder's up block types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum UpDecoderBlockType {
    /// Resnets and an upsampler.
    UpDecoderBlock2D,
}

/// Activation functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActFn {
    /// SiLU (swish).
    Silu,
}

/// `sample_size` is a number or a (height, width) pair in some configs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// One side for both.
    Square(i64),
    /// (height, width).
    Pair(Vec<i64>),
}

fn three() -> i64 {
    3
}
fn four() -> i64 {
    4
}
fn one() -> i64 {
    1
}
fn groups() -> i64 {
    32
}
fn scaling() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}
fn silu() -> ActFn {
    ActFn::Silu
}

/// diffusers' `AutoencoderKL` config (vae/config.json), field for field.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VaeConfig {
    /// Image channels (3).
    #[serde(default = "three")]
    pub in_channels: i64,
    /// Decoded image channels (3).
    #[serde(default = "three")]
    pub out_channels: i64,
    /// Encoder blocks, highest resolution first.
    pub down_block_types: Vec<DownEncoderBlockType>,
    /// Decoder blocks, lowest resolution first.
    pub up_block_types: Vec<UpDecoderBlockType>,
    /// Channels per block, highest resolution first.
    pub block_out_channels: Vec<i64>,
    /// Resnets per encoder block (one more per decoder block).
    #[serde(default = "one")]
    pub layers_per_block: i64,
    /// The activation.
    #[serde(default = "silu")]
    pub act_fn: ActFn,
    /// Latent channels (4).
    #[serde(default = "four")]
    pub latent_channels: i64,
    /// Group-norm groups.
    #[serde(default = "groups")]
    pub norm_num_groups: i64,
    /// Image size the VAE was trained at (the default tile size).
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    /// Latents are `scaling_factor * (z - shift_factor)`; never hard-coded.
    #[serde(default = "scaling")]
    pub scaling_factor: f64,
    /// Subtracted from latents before scaling (0 in SD).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent mean, where the model has one.
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent std, where the model has one.
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// Run in f32 even when f16 is asked for (SDXL's VAE overflows in f16).
    #[serde(default = "yes")]
    pub force_upcast: bool,
    /// Whether there is a `quant_conv` after the encoder.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// Whether there is a `post_quant_conv` before the decoder.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have attention.
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

impl VaeConfig {
    /// Reads and checks a `config.json`; errors name the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        VaeError::read_config(path.as_ref(), Self::from_json_str)
    }

    /// Parses and checks config JSON text; errors name the field.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| VaeError::config(&e.path().to_string(), e.into_inner().to_string()))?;
        let n = config.block_out_channels.len();
        if n == 0 || config.down_block_types.len() != n || config.up_block_types.len() != n {
            return Err(VaeError::config(
                "block_out_channels",
                format!(
                    "{n} widths for {} down and {} up blocks",
                    config.down_block_types.len(),
                    config.up_block_types.len()
                ),
            ));
        }
        if let Some(bad) = config
            .block_out_channels
            .iter()
            .find(|&&c| c % config.norm_num_groups != 0)
        {
            return Err(VaeError::config(
                "norm_num_groups",
                format!(
                    "{} does not divide a block width of {bad}",
                    config.norm_num_groups
                ),
            ));
        }
        for (field, list) in [
            ("latents_mean", &config.latents_mean),
            ("latents_std", &config.latents_std),
        ] {
            if list
                .as_ref()
                .is_some_and(|l| l.len() as i64 != config.latent_channels)
            {
                return Err(VaeError::config(
                    field,
                    "needs one value per latent channel",
                ));
            }
        }
        Ok(config)
    }

    /// Pixels per latent along each side: 2^(blocks - 1) (8 for SD).
    pub fn downscale(&self) -> i64 {
        1 << (self.block_out_channels.len() - 1)
    }

    /// The tile edge in pixels for tiled encode/decode (diffusers uses `sample_size`).
    pub fn tile_sample_size(&self) -> i64 {
        match &self.sample_size {
            Some(SampleSize::Square(s)) => *s,
            Some(SampleSize::Pair(p)) if !p.is_empty() => p[0],
            _ => 512,
        }
    }
}
