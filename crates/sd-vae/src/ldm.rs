//! Single-file (CompVis/LDM) VAE keys, `first_stage_model.*`, mapped to
//! diffusers names. LDM numbers the decoder's up blocks from the bottom, and
//! stores the mid-block attention as 1x1 convolutions.

use sd_core::weights::KeyMap;

/// Where single-file checkpoints keep the VAE.
pub const PREFIX: &str = "first_stage_model.";

/// The diffusers key for a checkpoint key of a VAE with `blocks` levels.
pub fn map(key: &str, blocks: usize) -> KeyMap {
    let Some(rest) = key.strip_prefix(PREFIX) else {
        return KeyMap::Skip;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    let tail = |from: usize| parts[from.min(parts.len())..].join(".");
    let resnet = |name: String| name.replace(".nin_shortcut.", ".conv_shortcut.");
    let name = match parts.as_slice() {
        [side, "down", b, "block", l, ..] => {
            resnet(format!("{side}.down_blocks.{b}.resnets.{l}.{}", tail(5)))
        }
        [side, "down", b, "downsample", ..] => {
            format!("{side}.down_blocks.{b}.downsamplers.0.{}", tail(4))
        }
        [side, "up", b, kind, ..] => {
            let Ok(b) = b.parse::<usize>() else {
                return KeyMap::To(format!("(ldm) {rest}"));
            };
            let up = blocks.saturating_sub(1 + b);
            match *kind {
                "block" => resnet(format!(
                    "{side}.up_blocks.{up}.resnets.{}.{}",
                    parts[4],
                    tail(5)
                )),
                "upsample" => format!("{side}.up_blocks.{up}.upsamplers.0.{}", tail(4)),
                _ => format!("(ldm) {rest}"),
            }
        }
        [side, "mid", "block_1", ..] => resnet(format!("{side}.mid_block.resnets.0.{}", tail(3))),
        [side, "mid", "block_2", ..] => resnet(format!("{side}.mid_block.resnets.1.{}", tail(3))),
        [side, "mid", "attn_1", layer, param] => {
            let layer = match *layer {
                "norm" => "group_norm",
                "q" => "to_q",
                "k" => "to_k",
                "v" => "to_v",
                "proj_out" => "to_out.0",
                other => other,
            };
            let name = format!("{side}.mid_block.attentions.0.{layer}.{param}");
            return if layer == "group_norm" {
                KeyMap::To(name)
            } else {
                KeyMap::Squeeze(name)
            };
        }
        [side, "norm_out", param] => format!("{side}.conv_norm_out.{param}"),
        _ => rest.to_string(),
    };
    KeyMap::To(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldm_names_map_to_diffusers() {
        let to = |k: &str| map(&format!("{PREFIX}{k}"), 4);
        assert_eq!(
            to("decoder.up.0.block.2.nin_shortcut.weight"),
            KeyMap::To("decoder.up_blocks.3.resnets.2.conv_shortcut.weight".into())
        );
        assert_eq!(
            to("decoder.up.3.upsample.conv.bias"),
            KeyMap::To("decoder.up_blocks.0.upsamplers.0.conv.bias".into())
        );
        assert_eq!(
            to("encoder.down.1.downsample.conv.weight"),
            KeyMap::To("encoder.down_blocks.1.downsamplers.0.conv.weight".into())
        );
        assert_eq!(
            to("encoder.mid.attn_1.q.weight"),
            KeyMap::Squeeze("encoder.mid_block.attentions.0.to_q.weight".into())
        );
        assert_eq!(
            to("encoder.mid.attn_1.norm.bias"),
            KeyMap::To("encoder.mid_block.attentions.0.group_norm.bias".into())
        );
        assert_eq!(
            to("decoder.norm_out.weight"),
            KeyMap::To("decoder.conv_norm_out.weight".into())
        );
        assert_eq!(
            to("quant_conv.weight"),
            KeyMap::To("quant_conv.weight".into())
        );
        assert_eq!(map("model.diffusion_model.out.0.weight", 4), KeyMap::Skip);
    }
}
