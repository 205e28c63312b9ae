//! Single-file (CompVis/LDM) UNet keys, `model.diffusion_model.*`, mapped to
//! diffusers names: `input_blocks`/`middle_block`/`output_blocks` become
//! `down_blocks`/`mid_block`/`up_blocks` as this config lays them out.

use sd_core::weights::KeyMap;

use crate::config::{DownBlockType, UNetConfig, UpBlockType};
use crate::error::Result;

/// Where single-file checkpoints keep the UNet.
pub const PREFIX: &str = "model.diffusion_model.";

/// ResnetBlock2D's LDM names.
const RESNET: [(&str, &str); 6] = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
];

/// LDM block prefix -> (diffusers prefix, is a resnet), for one config.
pub struct LdmUNetKeys {
    blocks: Vec<(String, String, bool)>,
}

impl LdmUNetKeys {
    /// The key map for a UNet of `config`.
    pub fn new(config: &UNetConfig) -> Result<Self> {
        let settings = config.blocks()?;
        let mut blocks = vec![
            (
                "time_embed.0.".into(),
                "time_embedding.linear_1.".into(),
                false,
            ),
            (
                "time_embed.2.".into(),
                "time_embedding.linear_2.".into(),
                false,
            ),
            (
                "label_emb.0.0.".into(),
                "add_embedding.linear_1.".into(),
                false,
            ),
            (
                "label_emb.0.2.".into(),
                "add_embedding.linear_2.".into(),
                false,
            ),
            ("input_blocks.0.0.".into(), "conv_in.".into(), false),
            ("out.0.".into(), "conv_norm_out.".into(), false),
            ("out.2.".into(), "conv_out.".into(), false),
            (
                "middle_block.0.".into(),
                "mid_block.resnets.0.".into(),
                true,
            ),
            (
                "middle_block.1.".into(),
                "mid_block.attentions.0.".into(),
                false,
            ),
            (
                "middle_block.2.".into(),
                "mid_block.resnets.1.".into(),
                true,
            ),
        ];
        let n = settings.len();
        let mut input = 1;
        for (b, s) in settings.iter().enumerate() {
            for l in 0..s.layers {
                blocks.push((
                    format!("input_blocks.{input}.0."),
                    format!("down_blocks.{b}.resnets.{l}."),
                    true,
                ));
                if config.down_block_types[b] == DownBlockType::CrossAttnDownBlock2D {
                    blocks.push((
                        format!("input_blocks.{input}.1."),
                        format!("down_blocks.{b}.attentions.{l}."),
                        false,
                    ));
                }
                input += 1;
            }
            if b + 1 < n {
                blocks.push((
                    format!("input_blocks.{input}.0.op."),
                    format!("down_blocks.{b}.downsamplers.0.conv."),
                    false,
                ));
                input += 1;
            }
        }
        let mut output = 0;
        for (b, kind) in config.up_block_types.iter().enumerate() {
            let s = settings[n - 1 - b];
            let attention = *kind == UpBlockType::CrossAttnUpBlock2D;
            for l in 0..=s.layers {
                blocks.push((
                    format!("output_blocks.{output}.0."),
                    format!("up_blocks.{b}.resnets.{l}."),
                    true,
                ));
                if attention {
                    blocks.push((
                        format!("output_blocks.{output}.1."),
                        format!("up_blocks.{b}.attentions.{l}."),
                        false,
                    ));
                }
                if l == s.layers && b + 1 < n {
                    let slot = if attention { 2 } else { 1 };
                    blocks.push((
                        format!("output_blocks.{output}.{slot}.conv."),
                        format!("up_blocks.{b}.upsamplers.0.conv."),
                        false,
                    ));
                }
                output += 1;
            }
        }
        // Longest prefixes first, so "input_blocks.1.0." never shadows "input_blocks.10.0.".
        blocks.sort_by_key(|(ldm, _, _)| std::cmp::Reverse(ldm.len()));
        Ok(LdmUNetKeys { blocks })
    }

    /// The diffusers key for a checkpoint key; keys outside the UNet are skipped.
    pub fn map(&self, key: &str) -> KeyMap {
        let Some(rest) = key.strip_prefix(PREFIX) else {
            return KeyMap::Skip;
        };
        // Unknown keys keep a recognisable name, to be reported as unexpected.
        KeyMap::To(
            self.to_diffusers(rest)
                .unwrap_or_else(|| format!("(ldm) {rest}")),
        )
    }

    /// The diffusers name of an LDM name without [`PREFIX`] (a ControlNet's
    /// copy of the UNet keeps the same names under another prefix).
    pub fn to_diffusers(&self, rest: &str) -> Option<String> {
        self.blocks.iter().find_map(|(ldm, diffusers, resnet)| {
            let tail = rest.strip_prefix(ldm.as_str())?;
            Some(format!("{diffusers}{}", rename_tail(tail, *resnet, true)))
        })
    }

    /// The LDM name (without [`PREFIX`]) of a diffusers variable name: the
    /// inverse of [`LdmUNetKeys::map`], for adapter files that name the
    /// UNet's modules the original way (kohya's SDXL LoRAs).
    pub fn to_ldm(&self, key: &str) -> Option<String> {
        let (ldm, diffusers, resnet) = self
            .blocks
            .iter()
            .filter(|(_, d, _)| key.starts_with(d.as_str()))
            .max_by_key(|(_, d, _)| d.len())?;
        let tail = rename_tail(&key[diffusers.len()..], *resnet, false);
        Some(format!("{ldm}{tail}"))
    }
}

/// A resnet's layer names inside a block: LDM to diffusers (`to_diffusers`)
/// or back. Other blocks keep their tails.
fn rename_tail(tail: &str, resnet: bool, to_diffusers: bool) -> String {
    if !resnet {
        return tail.to_string();
    }
    RESNET
        .iter()
        .find_map(|&(ldm, diffusers)| {
            let (from, to) = if to_diffusers {
                (ldm, diffusers)
            } else {
                (diffusers, ldm)
            };
            tail.strip_prefix(from).map(|t| format!("{to}{t}"))
        })
        .unwrap_or_else(|| tail.to_string())
}
