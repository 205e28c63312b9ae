//! `controlnet/config.json` (diffusers' `ControlNetModel`). Its UNet half
//! has a UNet config's fields and is read as one (with the up blocks
//! mirrored, since a ControlNet has none); the ControlNet's own fields are
//! typed here.

use std::path::Path;

use sd_unet::config::{DownBlockType, UNetConfig};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ControlNetError, Result};

/// The order of the control image's channels the model was trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue (every current release).
    #[default]
    Rgb,
    /// Blue, green, red: the image is flipped before the model sees it.
    Bgr,
}

/// The ControlNet's own fields, as diffusers names them.
#[derive(Debug, Clone, Deserialize)]
pub struct ControlFields {
    /// Channels of the control image (3).
    #[serde(default = "three")]
    pub conditioning_channels: i64,
    /// Channels of the conditioning embedding's convolutions.
    #[serde(default = "embedding_channels")]
    pub conditioning_embedding_out_channels: Vec<i64>,
    /// RGB or BGR control images.
    #[serde(default)]
    pub controlnet_conditioning_channel_order: ChannelOrder,
    /// Residuals averaged over space (shuffle-style models); implies guess mode.
    #[serde(default)]
    pub global_pool_conditions: bool,
}

impl Default for ControlFields {
    fn default() -> Self {
        ControlFields {
            conditioning_channels: three(),
            conditioning_embedding_out_channels: embedding_channels(),
            controlnet_conditioning_channel_order: ChannelOrder::Rgb,
            global_pool_conditions: false,
        }
    }
}

fn three() -> i64 {
    3
}
fn embedding_channels() -> Vec<i64> {
    vec![16, 32, 96, 256]
}

/// A ControlNet's config: the UNet half it copies, and its own fields.
#[derive(Debug, Clone)]
pub struct ControlNetConfig {
    /// The UNet encoder's config (`up_block_types` mirrored, unused).
    pub unet: UNetConfig,
    /// The ControlNet's own fields.
    pub control: ControlFields,
}

/// Keys of a ControlNet config that a UNet config does not have.
const CONTROL_KEYS: [&str; 5] = [
    "conditioning_channels",
    "conditioning_embedding_out_channels",
    "controlnet_conditioning_channel_order",
    "global_pool_conditions",
    "addition_embed_type_num_heads",
];

impl ControlNetConfig {
    /// Reads and checks a `config.json`; errors name the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| sd_core::CoreError::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| e.in_file(path))
    }

    /// Parses and checks config JSON text; errors name the field.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ControlNetError::config("(json)", e.to_string()))?;
        let Value::Object(mut map) = value else {
            return Err(ControlNetError::config("(json)", "not a JSON object"));
        };
        let mut own = serde_json::Map::new();
        for key in CONTROL_KEYS {
            if let Some(v) = map.remove(key) {
                own.insert(key.to_string(), v);
            }
        }
        let control: ControlFields =
            serde_path_to_error::deserialize(Value::Object(own)).map_err(|e| {
                ControlNetError::config(&e.path().to_string(), e.into_inner().to_string())
            })?;
        if control.conditioning_embedding_out_channels.is_empty() {
            return Err(ControlNetError::config(
                "conditioning_embedding_out_channels",
                "empty",
            ));
        }
        // The UNet parser wants up blocks; a ControlNet mirrors nothing, so
        // give it the mirror of the down path to satisfy its checks.
        if let Some(Value::Array(down)) = map.get("down_block_types") {
            let up: Vec<Value> = down
                .iter()
                .rev()
                .map(|kind| match kind.as_str() {
                    Some("CrossAttnDownBlock2D") => "CrossAttnUpBlock2D".into(),
                    _ => "UpBlock2D".into(),
                })
                .collect();
            map.insert("up_block_types".into(), Value::Array(up));
        }
        let unet = UNetConfig::from_json_str(&Value::Object(map).to_string())?;
        Ok(ControlNetConfig { unet, control })
    }

    /// The ControlNet of a UNet config (diffusers' `ControlNetModel.from_unet`),
    /// with the given ControlNet fields.
    pub fn from_unet(unet: &UNetConfig, control: ControlFields) -> Self {
        ControlNetConfig {
            unet: unet.clone(),
            control,
        }
    }

    /// The width of the text states the ControlNet attends to (768 for SD1,
    /// 1024 for SD2, 2048 for SDXL): which family it was made for.
    pub fn cross_attention_dim(&self) -> Result<i64> {
        let blocks = self.unet.blocks()?;
        let attended = self
            .unet
            .down_block_types
            .iter()
            .zip(&blocks)
            .find(|(kind, _)| **kind == DownBlockType::CrossAttnDownBlock2D)
            .map(|(_, b)| b.cross_attention_dim);
        Ok(attended.unwrap_or(blocks[blocks.len() - 1].cross_attention_dim))
    }
}
