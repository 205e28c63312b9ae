//! Stability AI's single-file layout of the SD3/SD3.5 transformer
//! (`model.diffusion_model.*` in `sd3.5_medium.safetensors` and friends):
//! each key mapped to diffusers' name at load time, with q/k/v fused into
//! `qkv` split back and the (shift, scale) AdaLN rows of the final layer and
//! of the last context block swapped, as diffusers'
//! `convert_sd3_transformer_checkpoint_to_diffusers` converts them; and the
//! config read from the tensors' names and shapes.

use std::collections::BTreeMap;

use sd_core::weights::KeyMap;

use crate::config::{MmditConfig, QkNorm};
use crate::error::{MmditError, Result};

/// The prefix of the transformer's keys in a single file.
pub const PREFIX: &str = "model.diffusion_model.";

/// Whether a file's tensor names hold an SD3 transformer in this layout.
pub fn is_sd3<'a>(mut names: impl Iterator<Item = &'a String>) -> bool {
    names.any(|k| k.starts_with("model.diffusion_model.joint_blocks."))
}

/// The diffusers name (and transform) of the file's `key`, for a model of
/// `num_layers` blocks; keys outside the transformer are skipped.
pub fn map(key: &str, num_layers: i64) -> KeyMap {
    let Some(rest) = key.strip_prefix(PREFIX) else {
        return KeyMap::Skip;
    };
    let to = |name: String| KeyMap::To(name);
    if let Some(name) = top_level(rest) {
        return name;
    }
    let Some(block) = rest.strip_prefix("joint_blocks.") else {
        return to(format!("(sd3) {rest}"));
    };
    let (index, tail) = block.split_once('.').unwrap_or((block, ""));
    let Ok(i) = index.parse::<i64>() else {
        return to(format!("(sd3) {rest}"));
    };
    block_key(i, tail, i == num_layers - 1).unwrap_or_else(|| to(format!("(sd3) {rest}")))
}

/// Every linear module of a transformer of `num_layers` blocks under
/// Stability's name (no prefix), with where its weight goes in diffusers'
/// names: the modules kohya's SD3 LoRAs name (`lora_unet_joint_blocks_0_
/// x_block_attn_qkv`, ...). Modules a model lacks (the second attention of
/// blocks without it) are in the list; their weights are not in the model.
pub fn linear_modules(num_layers: i64) -> Vec<(String, KeyMap)> {
    const TOP: [&str; 8] = [
        "x_embedder.proj",
        "t_embedder.mlp.0",
        "t_embedder.mlp.2",
        "y_embedder.mlp.0",
        "y_embedder.mlp.2",
        "context_embedder",
        "final_layer.linear",
        "final_layer.adaLN_modulation.1",
    ];
    const BLOCK: [&str; 12] = [
        "x_block.attn.qkv",
        "x_block.attn.proj",
        "x_block.attn2.qkv",
        "x_block.attn2.proj",
        "x_block.adaLN_modulation.1",
        "x_block.mlp.fc1",
        "x_block.mlp.fc2",
        "context_block.attn.qkv",
        "context_block.attn.proj",
        "context_block.adaLN_modulation.1",
        "context_block.mlp.fc1",
        "context_block.mlp.fc2",
    ];
    let blocks =
        (0..num_layers).flat_map(|i| BLOCK.iter().map(move |m| format!("joint_blocks.{i}.{m}")));
    TOP.iter()
        .map(|m| m.to_string())
        .chain(blocks)
        .map(|module| {
            let map = map(&format!("{PREFIX}{module}.weight"), num_layers);
            (module, map)
        })
        .collect()
}

/// Keys outside the blocks.
fn top_level(rest: &str) -> Option<KeyMap> {
    if rest == "pos_embed" {
        return Some(KeyMap::To("pos_embed.pos_embed".into()));
    }
    let (module, param) = rest.rsplit_once('.')?;
    let ours = match module {
        "x_embedder.proj" => "pos_embed.proj",
        "t_embedder.mlp.0" => "time_text_embed.timestep_embedder.linear_1",
        "t_embedder.mlp.2" => "time_text_embed.timestep_embedder.linear_2",
        "y_embedder.mlp.0" => "time_text_embed.text_embedder.linear_1",
        "y_embedder.mlp.2" => "time_text_embed.text_embedder.linear_2",
        "context_embedder" => "context_embedder",
        "final_layer.linear" => "proj_out",
        "final_layer.adaLN_modulation.1" => {
            return Some(KeyMap::SwapHalves(format!("norm_out.linear.{param}")))
        }
        _ => return None,
    };
    Some(KeyMap::To(format!("{ours}.{param}")))
}

/// A key inside `joint_blocks.{i}.` (`tail` after it).
fn block_key(i: i64, tail: &str, last: bool) -> Option<KeyMap> {
    let b = format!("transformer_blocks.{i}");
    let (module, param) = tail.rsplit_once('.')?;
    let split = |names: [&str; 3]| {
        KeyMap::SplitRows(names.iter().map(|n| format!("{b}.{n}.{param}")).collect())
    };
    let to = |name: &str| KeyMap::To(format!("{b}.{name}.{param}"));
    Some(match module {
        "x_block.attn.qkv" => split(["attn.to_q", "attn.to_k", "attn.to_v"]),
        "context_block.attn.qkv" => {
            split(["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"])
        }
        "x_block.attn2.qkv" => split(["attn2.to_q", "attn2.to_k", "attn2.to_v"]),
        "x_block.attn.proj" => to("attn.to_out.0"),
        "x_block.attn2.proj" => to("attn2.to_out.0"),
        "context_block.attn.proj" => to("attn.to_add_out"),
        "x_block.attn.ln_q" => to("attn.norm_q"),
        "x_block.attn.ln_k" => to("attn.norm_k"),
        "x_block.attn2.ln_q" => to("attn2.norm_q"),
        "x_block.attn2.ln_k" => to("attn2.norm_k"),
        "context_block.attn.ln_q" => to("attn.norm_added_q"),
        "context_block.attn.ln_k" => to("attn.norm_added_k"),
        "x_block.adaLN_modulation.1" => to("norm1.linear"),
        // The last block's context half only shifts and scales (no gate),
        // stored (shift, scale) like the final layer.
        "context_block.adaLN_modulation.1" if last => {
            KeyMap::SwapHalves(format!("{b}.norm1_context.linear.{param}"))
        }
        "context_block.adaLN_modulation.1" => to("norm1_context.linear"),
        "x_block.mlp.fc1" => to("ff.net.0.proj"),
        "x_block.mlp.fc2" => to("ff.net.2"),
        "context_block.mlp.fc1" => to("ff_context.net.0.proj"),
        "context_block.mlp.fc2" => to("ff_context.net.2"),
        _ => return None,
    })
}

/// The config of the transformer in a file with these tensor `shapes`, as
/// far as names and shapes tell: blocks, widths, the position table, dual
/// attention and qk norms. The head width is the qk norms' (64 when there
/// are none, as in every SD3 release); `sample_size` is 128 (SD3.5's; it
/// only sets the default image size).
pub fn config_from_shapes(shapes: &BTreeMap<String, Vec<i64>>) -> Result<MmditConfig> {
    let shape = |name: &str| -> Result<&Vec<i64>> {
        shapes
            .get(&format!("{PREFIX}{name}"))
            .ok_or_else(|| MmditError::Input(format!("no {PREFIX}{name} in the file")))
    };
    let blocks: Vec<i64> = shapes
        .keys()
        .filter_map(|k| k.strip_prefix("model.diffusion_model.joint_blocks."))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    let num_layers = blocks.iter().max().map_or(0, |m| m + 1);
    let mut dual: Vec<i64> = (0..num_layers)
        .filter(|i| {
            shapes.contains_key(&format!(
                "{PREFIX}joint_blocks.{i}.x_block.attn2.qkv.weight"
            ))
        })
        .collect();
    dual.sort_unstable();
    let patch = shape("x_embedder.proj.weight")?;
    let (inner, in_channels, patch_size) = (patch[0], patch[1], patch[2]);
    let ln_q = shapes.get(&format!("{PREFIX}joint_blocks.0.x_block.attn.ln_q.weight"));
    let head_dim = ln_q.map_or(64, |s| s[0]);
    if head_dim == 0 || inner % head_dim != 0 {
        return Err(MmditError::Input(format!(
            "a transformer {inner} wide is not made of {head_dim}-wide heads (every SD3 \
             release's): its config must come from a diffusers folder (config_dir)"
        )));
    }
    let positions = shape("pos_embed")?[1];
    let side = (positions as f64).sqrt().round() as i64;
    let final_rows = shape("final_layer.linear.weight")?[0];
    Ok(MmditConfig {
        sample_size: 128,
        patch_size,
        in_channels,
        num_layers,
        attention_head_dim: head_dim,
        num_attention_heads: inner / head_dim,
        joint_attention_dim: shape("context_embedder.weight")?[1],
        caption_projection_dim: inner,
        pooled_projection_dim: shape("y_embedder.mlp.0.weight")?[1],
        out_channels: final_rows / (patch_size * patch_size),
        pos_embed_max_size: side,
        dual_attention_layers: dual,
        qk_norm: ln_q.map(|_| QkNorm::RmsNorm),
    })
}
