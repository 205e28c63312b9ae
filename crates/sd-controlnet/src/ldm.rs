//! The original ControlNet releases' names (lllyasviel's `cldm` layout, as
//! in `control_v11p_sd15_canny.safetensors`): the UNet copy under the UNet's
//! LDM names, the conditioning embedding as `input_hint_block.{0,2,..}`
//! (SiLUs between), the zero convolutions as `zero_convs.{i}.0` and
//! `middle_block_out.0`; all with or without a `control_model.` prefix.
//! The config is read off the shapes, on top of the UNet it was made for.

use std::collections::BTreeMap;

use sd_core::weights::KeyMap;
use sd_unet::{ldm::LdmUNetKeys, UNetConfig};

use crate::config::{ControlFields, ControlNetConfig};
use crate::error::{ControlNetError, Result};

/// The prefix the original training code saved under.
pub const PREFIX: &str = "control_model.";

const HINT: &str = "input_hint_block.";

/// Whether a file's tensor names are the original layout's.
pub fn is_ldm(shapes: &BTreeMap<String, Vec<i64>>) -> bool {
    shapes
        .keys()
        .any(|k| k.strip_prefix(PREFIX).unwrap_or(k).starts_with(HINT))
}

/// Original names to diffusers names, for one config.
pub struct LdmControlNetKeys {
    unet: LdmUNetKeys,
    /// Convolutions in the hint block (conv_in, the blocks, conv_out).
    convs: usize,
    /// Whether the file keeps the ControlNet under `control_model.`.
    prefixed: bool,
}

impl LdmControlNetKeys {
    /// The key map for a ControlNet of `config` stored in a file of these
    /// tensor names: when they use the `control_model.` prefix, every other
    /// key (the whole Stable Diffusion model that the first releases were
    /// saved with, the noise schedule's buffers) is skipped.
    pub fn new(config: &ControlNetConfig, shapes: &BTreeMap<String, Vec<i64>>) -> Result<Self> {
        let widths = config.control.conditioning_embedding_out_channels.len();
        Ok(LdmControlNetKeys {
            unet: LdmUNetKeys::new(&config.unet)?,
            convs: 2 * (widths - 1) + 2,
            prefixed: shapes.keys().any(|k| k.starts_with(PREFIX)),
        })
    }

    /// The diffusers name of an original one; unknown names are kept
    /// recognisable, so that loading reports them as unexpected.
    pub fn map(&self, key: &str) -> KeyMap {
        let rest = match key.strip_prefix(PREFIX) {
            Some(rest) => rest,
            None if self.prefixed => return KeyMap::Skip,
            None => key,
        };
        KeyMap::To(
            self.control_name(rest)
                .or_else(|| self.unet.to_diffusers(rest))
                .unwrap_or_else(|| format!("(ldm) {rest}")),
        )
    }

    fn control_name(&self, rest: &str) -> Option<String> {
        if let Some(tail) = rest.strip_prefix("middle_block_out.0.") {
            return Some(format!("controlnet_mid_block.{tail}"));
        }
        if let Some(tail) = rest.strip_prefix("zero_convs.") {
            let (index, tail) = tail.split_once(".0.")?;
            return Some(format!("controlnet_down_blocks.{index}.{tail}"));
        }
        let (index, tail) = rest.strip_prefix(HINT)?.split_once('.')?;
        let index: usize = index.parse().ok()?;
        // Even slots hold the convolutions (odd ones the SiLUs).
        if index % 2 == 1 {
            return None;
        }
        let conv = index / 2;
        let name = match conv {
            0 => "conv_in".to_string(),
            c if c + 1 == self.convs => "conv_out".to_string(),
            c if c < self.convs => format!("blocks.{}", c - 1),
            _ => return None,
        };
        Some(format!("controlnet_cond_embedding.{name}.{tail}"))
    }
}

/// The config of an original-layout ControlNet for a UNet of `base`: the
/// hint block's widths and the input channels come from the shapes.
pub fn config_from_shapes(
    shapes: &BTreeMap<String, Vec<i64>>,
    base: &UNetConfig,
) -> Result<ControlNetConfig> {
    let shape = |name: &str| {
        shapes
            .get(&format!("{PREFIX}{name}"))
            .or_else(|| shapes.get(name))
    };
    let mut convs = Vec::new();
    while let Some(s) = shape(&format!("{HINT}{}.weight", 2 * convs.len())) {
        if s.len() != 4 {
            return Err(ControlNetError::invalid(
                format!("{HINT}{}.weight", 2 * convs.len()),
                format!("{s:?} is not a convolution weight"),
            ));
        }
        convs.push((s[0], s[1]));
    }
    if convs.len() < 2 || convs.len() % 2 != 0 {
        return Err(ControlNetError::invalid(
            HINT,
            format!(
                "{} convolutions: expected conv_in, pairs of blocks and conv_out",
                convs.len()
            ),
        ));
    }
    // Widths: conv_in's output, then each stride-2 block's (every second one).
    let mut widths = vec![convs[0].0];
    widths.extend(
        convs[1..convs.len() - 1]
            .iter()
            .skip(1)
            .step_by(2)
            .map(|c| c.0),
    );
    let mut unet = base.clone();
    if let Some(s) = shape("input_blocks.0.0.weight") {
        unet.in_channels = s.get(1).copied().unwrap_or(unet.in_channels);
    }
    Ok(ControlNetConfig::from_unet(
        &unet,
        ControlFields {
            conditioning_channels: convs[0].1,
            conditioning_embedding_out_channels: widths,
            ..ControlFields::default()
        },
    ))
}
