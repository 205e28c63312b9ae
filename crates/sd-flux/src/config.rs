//! `transformer/config.json`: diffusers' `FluxTransformer2DModel` config.

use std::path::Path;

use serde::Deserialize;

use crate::error::{FluxError, Result};

/// diffusers' `FluxTransformer2DModel` config, field for field (defaults as
/// diffusers': FLUX.1's full size).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FluxConfig {
    /// Latent pixels per patch side inside the model (1: the pipeline packs
    /// 2x2 patches itself).
    #[serde(default = "one")]
    pub patch_size: i64,
    /// Channels of a packed latent token (64 = 16 x 2 x 2).
    #[serde(default = "sixty_four")]
    pub in_channels: i64,
    /// Output channels (`in_channels` when absent).
    #[serde(default)]
    pub out_channels: Option<i64>,
    /// Double-stream blocks (19).
    #[serde(default = "nineteen")]
    pub num_layers: i64,
    /// Single-stream blocks (38).
    #[serde(default = "thirty_eight")]
    pub num_single_layers: i64,
    /// Width of each head (128).
    #[serde(default = "head_dim")]
    pub attention_head_dim: i64,
    /// Heads (24); heads x head dim is the model's width.
    #[serde(default = "heads")]
    pub num_attention_heads: i64,
    /// Width of the text states (T5's 4096).
    #[serde(default = "t5_width")]
    pub joint_attention_dim: i64,
    /// Width of the pooled CLIP-L embedding (768).
    #[serde(default = "clip_width")]
    pub pooled_projection_dim: i64,
    /// Distilled guidance as an input (FLUX.1-dev); absent in FLUX.1-schnell.
    #[serde(default)]
    pub guidance_embeds: bool,
    /// Rotary widths of the three position axes (16, 56, 56); they sum to
    /// the head width.
    #[serde(default = "axes")]
    pub axes_dims_rope: Vec<i64>,
}

fn one() -> i64 {
    1
}
fn sixty_four() -> i64 {
    64
}
fn nineteen() -> i64 {
    19
}
fn thirty_eight() -> i64 {
    38
}
fn head_dim() -> i64 {
    128
}
fn heads() -> i64 {
    24
}
fn t5_width() -> i64 {
    4096
}
fn clip_width() -> i64 {
    768
}
fn axes() -> Vec<i64> {
    vec![16, 56, 56]
}

impl FluxConfig {
    /// Reads and checks a `config.json`; errors name the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| sd_core::CoreError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses `config.json` text; errors name `path` and the field.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let fail = |field: &str, message: String| FluxError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let config: FluxConfig = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| fail(&e.path().to_string(), e.into_inner().to_string()))?;
        let rope: i64 = config.axes_dims_rope.iter().sum();
        if rope != config.attention_head_dim || config.axes_dims_rope.iter().any(|d| d % 2 != 0) {
            return Err(fail(
                "axes_dims_rope",
                format!(
                    "{:?}: even widths summing to attention_head_dim {}",
                    config.axes_dims_rope, config.attention_head_dim
                ),
            ));
        }
        if config.patch_size != 1 {
            return Err(fail(
                "patch_size",
                format!("{}: FLUX.1 models have 1", config.patch_size),
            ));
        }
        Ok(config)
    }

    /// The model's width.
    pub fn inner_dim(&self) -> i64 {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output channels.
    pub fn out_channels(&self) -> i64 {
        self.out_channels.unwrap_or(self.in_channels)
    }
}
