//! `transformer/config.json`: diffusers' `SD3Transformer2DModel` config.

use std::path::Path;

use serde::Deserialize;

use crate::error::{MmditError, Result};

/// The query/key normalisation of SD3.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum QkNorm {
    /// RMS norm over each head, with a learned scale (SD3.5).
    #[serde(rename = "rms_norm")]
    RmsNorm,
}

/// diffusers' `SD3Transformer2DModel` config, field for field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MmditConfig {
    /// Latent size the model was trained at (128 for 1024 px).
    #[serde(default = "default_sample_size")]
    pub sample_size: i64,
    /// Latent pixels per patch side (2).
    #[serde(default = "default_patch")]
    pub patch_size: i64,
    /// Latent channels (16).
    #[serde(default = "default_channels")]
    pub in_channels: i64,
    /// Joint blocks.
    pub num_layers: i64,
    /// Width of each head.
    pub attention_head_dim: i64,
    /// Heads; `heads * head_dim` is the model's width.
    pub num_attention_heads: i64,
    /// Width of the text states (4096: T5's, and CLIP's padded to it).
    pub joint_attention_dim: i64,
    /// Width the text states are projected to (the model's width).
    pub caption_projection_dim: i64,
    /// Width of the pooled CLIP embedding (2048).
    pub pooled_projection_dim: i64,
    /// Output channels (16).
    #[serde(default = "default_channels")]
    pub out_channels: i64,
    /// Side of the position-embedding grid the latents' grid is cropped from.
    pub pos_embed_max_size: i64,
    /// Blocks with a second, image-only attention (SD3.5 Medium's MMDiT-X).
    #[serde(default)]
    pub dual_attention_layers: Vec<i64>,
    /// SD3.5's query/key normalisation.
    #[serde(default)]
    pub qk_norm: Option<QkNorm>,
}

fn default_sample_size() -> i64 {
    128
}

fn default_patch() -> i64 {
    2
}

fn default_channels() -> i64 {
    16
}

impl MmditConfig {
    /// Reads and checks a `config.json`; errors name the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| sd_core::CoreError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses `config.json` text; errors name `path` and the field.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let fail = |field: &str, message: String| MmditError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let config: MmditConfig = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| fail(&e.path().to_string(), e.into_inner().to_string()))?;
        let width = config.num_attention_heads * config.attention_head_dim;
        if config.caption_projection_dim != width {
            return Err(fail(
                "caption_projection_dim",
                format!(
                    "{}: must be heads x head dim = {width}",
                    config.caption_projection_dim
                ),
            ));
        }
        if let Some(&bad) = config
            .dual_attention_layers
            .iter()
            .find(|&&i| i < 0 || i >= config.num_layers)
        {
            return Err(fail(
                "dual_attention_layers",
                format!("{bad} is not a block"),
            ));
        }
        Ok(config)
    }

    /// The model's width.
    pub fn inner_dim(&self) -> i64 {
        self.num_attention_heads * self.attention_head_dim
    }
}
