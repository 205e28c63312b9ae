//! `unet/config.json` (diffusers' `UNet2DConditionModel`), with diffusers'
//! field names. Values this crate does not implement fail at load with the
//! field named; per-block options accept a number or a list, as diffusers.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Result, UNetError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DownBlockType {
    CrossAttnDownBlock2D,
    DownBlock2D,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UpBlockType {
    CrossAttnUpBlock2D,
    UpBlock2D,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MidBlockType {
    UNetMidBlock2DCrossAttn,
}

/// SDXL's extra conditioning on pooled text and size/crop ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdditionEmbedType {
    TextTime,
}

/// A per-block option given as one value for all blocks or one per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// One value per block, checking a list's length against `blocks`.
    pub fn expand(&self, field: &str, blocks: usize) -> Result<Vec<T>> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); blocks]),
            PerBlock::Many(list) if list.len() == blocks => Ok(list.clone()),
            PerBlock::Many(list) => Err(UNetError::config(
                field,
                format!("{} values for {blocks} down blocks", list.len()),
            )),
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default)]
    pub sample_size: Option<i64>,
    #[serde(default = "four")]
    pub in_channels: i64,
    #[serde(default = "four")]
    pub out_channels: i64,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: i64,
    pub down_block_types: Vec<DownBlockType>,
    #[serde(default = "mid_default")]
    pub mid_block_type: Option<MidBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    #[serde(default = "false_per_block")]
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<i64>,
    #[serde(default = "two_per_block")]
    pub layers_per_block: PerBlock<i64>,
    #[serde(default = "one")]
    pub downsample_padding: i64,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "groups")]
    pub norm_num_groups: i64,
    #[serde(default = "eps")]
    pub norm_eps: f64,
    #[serde(default = "cross")]
    pub cross_attention_dim: PerBlock<i64>,
    #[serde(default = "one_per_block")]
    pub transformer_layers_per_block: PerBlock<i64>,
    #[serde(default = "heads")]
    pub attention_head_dim: PerBlock<i64>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<i64>>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default)]
    pub addition_embed_type: Option<AdditionEmbedType>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<i64>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<i64>,
    #[serde(default)]
    pub time_embedding_dim: Option<i64>,
    /// Everything else, checked against the values this crate implements.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

fn four() -> i64 {
    4
}
fn one() -> i64 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn groups() -> i64 {
    32
}
fn eps() -> f64 {
    1e-5
}
fn cross() -> PerBlock<i64> {
    PerBlock::One(1280)
}
fn heads() -> PerBlock<i64> {
    PerBlock::One(8)
}
fn one_per_block() -> PerBlock<i64> {
    PerBlock::One(1)
}
fn two_per_block() -> PerBlock<i64> {
    PerBlock::One(2)
}
fn false_per_block() -> PerBlock<bool> {
    PerBlock::One(false)
}
fn mid_default() -> Option<MidBlockType> {
    Some(MidBlockType::UNetMidBlock2DCrossAttn)
}

/// Keys whose only implemented value is diffusers' default.
const DEFAULTS: &[(&str, &str)] = &[
    ("act_fn", "\"silu\""),
    ("class_embed_type", "null"),
    ("num_class_embeds", "null"),
    ("encoder_hid_dim", "null"),
    ("encoder_hid_dim_type", "null"),
    ("dual_cross_attention", "false"),
    ("resnet_time_scale_shift", "\"default\""),
    ("resnet_skip_time_act", "false"),
    ("resnet_out_scale_factor", "1.0"),
    ("time_embedding_type", "\"positional\""),
    ("time_embedding_act_fn", "null"),
    ("timestep_post_act", "null"),
    ("time_cond_proj_dim", "null"),
    ("conv_in_kernel", "3"),
    ("conv_out_kernel", "3"),
    ("attention_type", "\"default\""),
    ("class_embeddings_concat", "false"),
    ("mid_block_only_cross_attention", "null"),
    ("cross_attention_norm", "null"),
    ("reverse_transformer_layers_per_block", "null"),
    ("dropout", "0.0"),
];

impl UNetConfig {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| sd_core::CoreError::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| e.in_file(path))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| UNetError::config(&e.path().to_string(), e.into_inner().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        for (key, default) in DEFAULTS {
            let Some(value) = self.rest.get(*key) else {
                continue;
            };
            let expected: Value = serde_json::from_str(default).expect("valid JSON literal");
            let same = match (value, &expected) {
                (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                _ => value == &expected,
            };
            if !same {
                return Err(UNetError::config(
                    key,
                    format!("{value} is not implemented (only {default})"),
                ));
            }
        }
        let blocks = self.block_out_channels.len();
        if blocks == 0
            || self.down_block_types.len() != blocks
            || self.up_block_types.len() != blocks
        {
            return Err(UNetError::config(
                "down_block_types",
                format!(
                    "{} down and {} up block types for {blocks} block_out_channels",
                    self.down_block_types.len(),
                    self.up_block_types.len()
                ),
            ));
        }
        if self.mid_block_type.is_none() {
            return Err(UNetError::config(
                "mid_block_type",
                "null (no mid block) is not implemented",
            ));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c % self.norm_num_groups != 0 {
                return Err(UNetError::config(
                    "norm_num_groups",
                    format!(
                        "{} does not divide block_out_channels[{i}] = {c}",
                        self.norm_num_groups
                    ),
                ));
            }
        }
        if self.addition_embed_type.is_some()
            && (self.addition_time_embed_dim.is_none()
                || self.projection_class_embeddings_input_dim.is_none())
        {
            return Err(UNetError::config(
                "addition_time_embed_dim",
                "text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim",
            ));
        }
        let resolved = self.blocks()?;
        for (i, b) in resolved.iter().enumerate() {
            if b.out_channels % b.heads != 0 {
                return Err(UNetError::config(
                    "attention_head_dim",
                    format!(
                        "{} heads do not divide the {} channels of block {i}",
                        b.heads, b.out_channels
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The time embedding width (4x the first block's channels by default).
    pub fn time_embed_dim(&self) -> i64 {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels[0] * 4)
    }

    /// Per-block settings, in down-block order.
    pub fn blocks(&self) -> Result<Vec<BlockSettings>> {
        let n = self.block_out_channels.len();
        // diffusers' long-standing naming quirk: without num_attention_heads,
        // "attention_head_dim" holds the number of heads.
        let heads = match &self.num_attention_heads {
            Some(h) => h.expand("num_attention_heads", n)?,
            None => self.attention_head_dim.expand("attention_head_dim", n)?,
        };
        let layers = self.layers_per_block.expand("layers_per_block", n)?;
        let cross = self.cross_attention_dim.expand("cross_attention_dim", n)?;
        let depth = self
            .transformer_layers_per_block
            .expand("transformer_layers_per_block", n)?;
        let only_cross = self
            .only_cross_attention
            .expand("only_cross_attention", n)?;
        Ok((0..n)
            .map(|i| BlockSettings {
                out_channels: self.block_out_channels[i],
                layers: layers[i],
                heads: heads[i],
                cross_attention_dim: cross[i],
                transformer_depth: depth[i],
                only_cross_attention: only_cross[i],
            })
            .collect())
    }
}

/// One block's resolved settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSettings {
    pub out_channels: i64,
    pub layers: i64,
    pub heads: i64,
    pub cross_attention_dim: i64,
    pub transformer_depth: i64,
    pub only_cross_attention: bool,
}
