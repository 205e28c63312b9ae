//! `unet/config.json` (diffusers' `UNet2DConditionModel`), with diffusers'
//! field names. Values this crate does not implement fail at load with the
//! field named; per-block options accept a number or a list, as diffusers.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, UNetError};

/// Down block types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum DownBlockType {
    /// Resnets with transformers, then a downsampler.
    CrossAttnDownBlock2D,
    /// Resnets, then a downsampler.
    DownBlock2D,
}

/// Up block types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum UpBlockType {
    /// Resnets with transformers, then an upsampler.
    CrossAttnUpBlock2D,
    /// Resnets, then an upsampler.
    UpBlock2D,
}

/// Mid block types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum MidBlockType {
    /// Resnet, transformer, resnet.
    UNetMidBlock2DCrossAttn,
}

/// SDXL's extra conditioning on pooled text and size/crop ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdditionEmbedType {
    /// SDXL: pooled text and size/crop ids.
    TextTime,
}

/// A per-block option given as one value for all blocks or one per block.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// One value for every block.
    One(T),
    /// A value per block.
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

/// diffusers' `UNet2DConditionModel` config (unet/config.json), field for field.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct UNetConfig {
    /// Latent size the model was trained at.
    #[serde(default)]
    pub sample_size: Option<i64>,
    /// Input channels (4, or 9 for inpainting).
    #[serde(default = "four")]
    pub in_channels: i64,
    /// Output channels (4).
    #[serde(default = "four")]
    pub out_channels: i64,
    /// Whether inputs are mapped by `2x - 1` first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Cosine before sine in the timestep embedding.
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the timestep embedding.
    #[serde(default)]
    pub freq_shift: i64,
    /// Down blocks, highest resolution first.
    pub down_block_types: Vec<DownBlockType>,
    /// The mid block.
    #[serde(default = "mid_default")]
    pub mid_block_type: Option<MidBlockType>,
    /// Up blocks, lowest resolution first.
    pub up_block_types: Vec<UpBlockType>,
    /// Per block: attn1 as cross attention.
    #[serde(default = "false_per_block")]
    pub only_cross_attention: PerBlock<bool>,
    /// Channels per block, highest resolution first.
    pub block_out_channels: Vec<i64>,
    /// Resnets per down block (one more per up block).
    #[serde(default = "two_per_block")]
    pub layers_per_block: PerBlock<i64>,
    /// Padding of the downsamplers' convolutions.
    #[serde(default = "one")]
    pub downsample_padding: i64,
    /// The mid block's output scale.
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    /// Group-norm groups.
    #[serde(default = "groups")]
    pub norm_num_groups: i64,
    /// The group norms' epsilon.
    #[serde(default = "eps")]
    pub norm_eps: f64,
    /// Width of the text context (per block or for all).
    #[serde(default = "cross")]
    pub cross_attention_dim: PerBlock<i64>,
    /// Transformer layers per attention, per block.
    #[serde(default = "one_per_block")]
    pub transformer_layers_per_block: PerBlock<i64>,
    /// Per block: heads in SD1 configs, head width in SD2/SDXL ones (diffusers' naming).
    #[serde(default = "heads")]
    pub attention_head_dim: PerBlock<i64>,
    /// Heads per block (diffusers' misnamed `attention_head_dim` holds this in SD1).
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<i64>>,
    /// Linear (SD2, SDXL) rather than 1x1-conv transformer projections.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Compute attention in f32 (SD2.1).
    #[serde(default)]
    pub upcast_attention: bool,
    /// `text_time` for SDXL's added conditions.
    #[serde(default)]
    pub addition_embed_type: Option<AdditionEmbedType>,
    /// Width of each SDXL size/crop id's sinusoidal embedding.
    #[serde(default)]
    pub addition_time_embed_dim: Option<i64>,
    /// Input width of SDXL's added embedding (pooled text + time ids).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<i64>,
    /// Width of the time embedding (default 4x the first block).
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
    /// Reads and checks a `config.json`; errors name the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| sd_core::CoreError::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| e.in_file(path))
    }

    /// Parses and checks config JSON text; errors name the field.
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
    /// The block's output channels.
    pub out_channels: i64,
    /// Resnets in the block.
    pub layers: i64,
    /// Attention heads.
    pub heads: i64,
    /// Width of the text context.
    pub cross_attention_dim: i64,
    /// Transformer layers per attention.
    pub transformer_depth: i64,
    /// Whether attn1 is cross attention too.
    pub only_cross_attention: bool,
}
