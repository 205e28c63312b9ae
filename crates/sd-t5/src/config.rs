//! `text_encoder_3/config.json`: transformers' `T5Config`, the fields an
//! encoder reads.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, T5Error};

/// The feed-forward block: T5 v1.1 (SD3's T5-XXL) is gated GELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum FeedForward {
    /// `gelu_new(wi_0 x) * wi_1 x`, then `wo` (T5 v1.1, flan-T5).
    #[serde(rename = "gated-gelu")]
    GatedGelu,
    /// `relu(wi x)`, then `wo` (the original T5).
    #[serde(rename = "relu")]
    Relu,
}

/// transformers' `T5Config`, as an encoder uses it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct T5Config {
    /// Token embedding rows (`shared`).
    pub vocab_size: i64,
    /// Width of the hidden states (4096 for T5-XXL).
    pub d_model: i64,
    /// Width of each attention head.
    pub d_kv: i64,
    /// Width of the feed-forward block.
    pub d_ff: i64,
    /// Encoder blocks.
    pub num_layers: i64,
    /// Attention heads.
    pub num_heads: i64,
    /// Relative-position buckets (32).
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: i64,
    /// Distance beyond which positions share a bucket (128).
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: i64,
    /// The RMS norms' epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// The feed-forward kind.
    #[serde(default = "default_feed_forward")]
    pub feed_forward_proj: FeedForward,
}

fn default_buckets() -> i64 {
    32
}

fn default_max_distance() -> i64 {
    128
}

fn default_eps() -> f64 {
    1e-6
}

fn default_feed_forward() -> FeedForward {
    FeedForward::Relu
}

impl T5Config {
    /// Reads and checks a `config.json`; errors name the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| sd_core::CoreError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses `config.json` text; errors name `path` and the field.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let config: T5Config =
            serde_path_to_error::deserialize(deserializer).map_err(|e| T5Error::Config {
                path: path.to_path_buf(),
                field: e.path().to_string(),
                message: e.into_inner().to_string(),
            })?;
        for (field, value) in [
            ("d_model", config.d_model),
            ("d_kv", config.d_kv),
            ("d_ff", config.d_ff),
            ("num_layers", config.num_layers),
            ("num_heads", config.num_heads),
            (
                "relative_attention_num_buckets",
                config.relative_attention_num_buckets,
            ),
        ] {
            if value < 1 {
                return Err(T5Error::Config {
                    path: path.to_path_buf(),
                    field: field.into(),
                    message: format!("{value}: at least 1"),
                });
            }
        }
        Ok(config)
    }
}
