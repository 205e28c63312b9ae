//! `config.json` of diffusers' `AutoencoderTiny` (TAESD, TAESDXL), with
//! diffusers' field names and defaults (the original TAESD layout).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, VaeError};

/// The tiny autoencoder's activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TinyActFn {
    /// ReLU (every TAESD release).
    Relu,
    /// SiLU.
    Silu,
}

/// How the decoder upsamples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpsampleFn {
    /// Nearest neighbour.
    Nearest,
}

/// diffusers' `AutoencoderTiny` config.
#[derive(Debug, Clone, Deserialize)]
pub struct TinyVaeConfig {
    /// Image channels in (3).
    #[serde(default = "three")]
    pub in_channels: i64,
    /// Image channels out (3).
    #[serde(default = "three")]
    pub out_channels: i64,
    /// Encoder widths, one per stage.
    #[serde(default = "widths")]
    pub encoder_block_out_channels: Vec<i64>,
    /// Decoder widths, one per stage.
    #[serde(default = "widths")]
    pub decoder_block_out_channels: Vec<i64>,
    /// The activation.
    #[serde(default = "relu")]
    pub act_fn: TinyActFn,
    /// The decoder's upsampling.
    #[serde(default = "nearest")]
    pub upsample_fn: UpsampleFn,
    /// Latent channels (4 for SD and SDXL).
    #[serde(default = "four")]
    pub latent_channels: i64,
    /// The decoder's upsampling factor per stage.
    #[serde(default = "two")]
    pub upsampling_scaling_factor: i64,
    /// Blocks per encoder stage.
    #[serde(default = "encoder_blocks")]
    pub num_encoder_blocks: Vec<i64>,
    /// Blocks per decoder stage.
    #[serde(default = "decoder_blocks")]
    pub num_decoder_blocks: Vec<i64>,
    /// Pipelines divide latents by this before decoding (1.0: TAESD works
    /// on the latents the UNet sees).
    #[serde(default = "unit")]
    pub scaling_factor: f64,
}

fn three() -> i64 {
    3
}
fn four() -> i64 {
    4
}
fn two() -> i64 {
    2
}
fn unit() -> f64 {
    1.0
}
fn widths() -> Vec<i64> {
    vec![64; 4]
}
fn encoder_blocks() -> Vec<i64> {
    vec![1, 3, 3, 3]
}
fn decoder_blocks() -> Vec<i64> {
    vec![3, 3, 3, 1]
}
fn relu() -> TinyActFn {
    TinyActFn::Relu
}
fn nearest() -> UpsampleFn {
    UpsampleFn::Nearest
}

impl Default for TinyVaeConfig {
    /// The original TAESD / TAESDXL architecture.
    fn default() -> Self {
        Self::from_json_str("{}").expect("the defaults are valid")
    }
}

impl TinyVaeConfig {
    /// Reads and checks a `config.json`; errors name the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        VaeError::read_config(path.as_ref(), Self::from_json_str)
    }

    /// Parses and checks config JSON text; errors name the field.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| VaeError::config(&e.path().to_string(), e.into_inner().to_string()))?;
        let pairs = [
            (
                "num_encoder_blocks",
                &config.encoder_block_out_channels,
                &config.num_encoder_blocks,
            ),
            (
                "num_decoder_blocks",
                &config.decoder_block_out_channels,
                &config.num_decoder_blocks,
            ),
        ];
        for (field, widths, blocks) in pairs {
            if widths.is_empty() || widths.len() != blocks.len() {
                return Err(VaeError::config(
                    field,
                    format!("{} stages for {} widths", blocks.len(), widths.len()),
                ));
            }
        }
        if config.scaling_factor == 0.0 || !config.scaling_factor.is_finite() {
            return Err(VaeError::config(
                "scaling_factor",
                "must be a non-zero number",
            ));
        }
        Ok(config)
    }

    /// Pixels per latent: the decoder's upsampling over its stages.
    pub fn downscale(&self) -> i64 {
        self.upsampling_scaling_factor
            .pow(self.num_decoder_blocks.len() as u32 - 1)
    }
}
