//! `text_encoder/config.json` (transformers' `CLIPTextConfig`).

use std::path::Path;

use serde::Deserialize;

use crate::error::{ClipError, Result};

/// The MLP activation: `quick_gelu` (OpenAI CLIP) or `gelu` (OpenCLIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// x * sigmoid(1.702 x): OpenAI CLIP (SD1.x, SDXL's first encoder).
    QuickGelu,
    /// Exact (erf) GELU: OpenCLIP (SD2.x, SDXL's bigG).
    Gelu,
}

/// transformers' `CLIPTextConfig`, field for field (text_encoder/config.json).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    /// Token embedding rows.
    pub vocab_size: i64,
    /// Width of the hidden states.
    pub hidden_size: i64,
    /// Width of each MLP.
    pub intermediate_size: i64,
    /// Encoder layers.
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    pub num_attention_heads: i64,
    /// Positions (77).
    pub max_position_embeddings: i64,
    /// The MLP activation.
    pub hidden_act: HiddenAct,
    /// The layer norms' epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Width of `text_projection` (CLIPTextModelWithProjection).
    #[serde(default)]
    pub projection_dim: Option<i64>,
    /// 2 in configs saved by old transformers: the pooled token is then the
    /// highest id (EOS, 49407) rather than the first `eos_token_id`.
    #[serde(default)]
    pub eos_token_id: Option<i64>,
    /// `CLIPTextModel` or `CLIPTextModelWithProjection`.
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
}

fn default_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    /// Reads and checks a `config.json`; errors name the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| sd_core::CoreError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// A config given as JSON text (built-in presets).
    pub fn from_json_str(text: &str) -> Result<Self> {
        Self::parse(text, Path::new("(config text)"))
    }

    fn parse(text: &str, path: &Path) -> Result<Self> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let config: Self =
            serde_path_to_error::deserialize(deserializer).map_err(|e| ClipError::Config {
                path: path.to_path_buf(),
                field: e.path().to_string(),
                message: e.into_inner().to_string(),
            })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, message: String| ClipError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        if self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(bad(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if self.with_projection() && self.projection_dim.is_none() {
            return Err(bad(
                "projection_dim",
                "missing for CLIPTextModelWithProjection".into(),
            ));
        }
        Ok(())
    }

    /// Whether the folder holds `CLIPTextModelWithProjection` (SDXL's second encoder).
    pub fn with_projection(&self) -> bool {
        self.architectures
            .as_ref()
            .is_some_and(|a| a.iter().any(|n| n == "CLIPTextModelWithProjection"))
    }
}
