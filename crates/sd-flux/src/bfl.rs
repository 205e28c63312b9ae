//! Black Forest Labs' single files (`flux1-dev.safetensors`,
//! `flux1-schnell.safetensors`, the fp8 and GGUF files made from them):
//! their names mapped to diffusers', as diffusers'
//! `convert_flux_transformer_checkpoint_to_diffusers` maps them (fused
//! q/k/v and single-block inputs split by rows, the output norm's
//! (shift, scale) swapped), and the config read from the shapes. Keys may
//! carry ComfyUI's `model.diffusion_model.` prefix.

use std::collections::BTreeMap;

use sd_core::weights::KeyMap;

use crate::config::FluxConfig;
use crate::error::{FluxError, Result};

/// The checkpoint prefix some files put before every key.
pub const PREFIX: &str = "model.diffusion_model.";

fn strip(key: &str) -> &str {
    key.strip_prefix(PREFIX).unwrap_or(key)
}

/// Whether a file's tensor names hold a FLUX transformer in BFL's layout.
pub fn is_flux<'a>(mut names: impl Iterator<Item = &'a String>) -> bool {
    names.any(|k| strip(k).starts_with("double_blocks.0.img_attn.qkv."))
}

/// The diffusers name (and transform) of the file's `key` for a model of
/// `config`; keys outside the transformer (a VAE, text encoders) are
/// skipped, unknown ones keep a name to be reported as unexpected.
pub fn map(key: &str, config: &FluxConfig) -> KeyMap {
    let key = strip(key);
    let to = |name: String| KeyMap::To(name);
    let (module, param) = match key.rsplit_once('.') {
        Some(split) => split,
        None => return to(format!("(bfl) {key}")),
    };
    let fixed = [
        ("img_in", "x_embedder"),
        ("txt_in", "context_embedder"),
        (
            "time_in.in_layer",
            "time_text_embed.timestep_embedder.linear_1",
        ),
        (
            "time_in.out_layer",
            "time_text_embed.timestep_embedder.linear_2",
        ),
        (
            "vector_in.in_layer",
            "time_text_embed.text_embedder.linear_1",
        ),
        (
            "vector_in.out_layer",
            "time_text_embed.text_embedder.linear_2",
        ),
        (
            "guidance_in.in_layer",
            "time_text_embed.guidance_embedder.linear_1",
        ),
        (
            "guidance_in.out_layer",
            "time_text_embed.guidance_embedder.linear_2",
        ),
        ("final_layer.linear", "proj_out"),
    ];
    if let Some((_, name)) = fixed.iter().find(|(bfl, _)| *bfl == module) {
        return to(format!("{name}.{param}"));
    }
    if module == "final_layer.adaLN_modulation.1" {
        return KeyMap::SwapHalves(format!("norm_out.linear.{param}"));
    }
    if let Some(rest) = module.strip_prefix("double_blocks.") {
        if let Some(mapped) = double(rest, param) {
            return mapped;
        }
    }
    if let Some(rest) = module.strip_prefix("single_blocks.") {
        if let Some(mapped) = single(rest, param, config) {
            return mapped;
        }
    }
    match key.starts_with("vae.") || key.starts_with("text_encoders.") {
        true => KeyMap::Skip,
        false => to(format!("(bfl) {key}")),
    }
}

/// A double block's module `{i}.{part}` (diffusers' `transformer_blocks`).
fn double(rest: &str, param: &str) -> Option<KeyMap> {
    let (i, part) = rest.split_once('.')?;
    let b = format!("transformer_blocks.{i}");
    let one = |name: &str| Some(KeyMap::To(format!("{b}.{name}")));
    let scale = param == "scale";
    match part {
        "img_mod.lin" => one(&format!("norm1.linear.{param}")),
        "txt_mod.lin" => one(&format!("norm1_context.linear.{param}")),
        "img_attn.qkv" => Some(KeyMap::SplitRows(
            ["to_q", "to_k", "to_v"]
                .map(|n| format!("{b}.attn.{n}.{param}"))
                .to_vec(),
        )),
        "txt_attn.qkv" => Some(KeyMap::SplitRows(
            ["add_q_proj", "add_k_proj", "add_v_proj"]
                .map(|n| format!("{b}.attn.{n}.{param}"))
                .to_vec(),
        )),
        "img_attn.proj" => one(&format!("attn.to_out.0.{param}")),
        "txt_attn.proj" => one(&format!("attn.to_add_out.{param}")),
        "img_mlp.0" => one(&format!("ff.net.0.proj.{param}")),
        "img_mlp.2" => one(&format!("ff.net.2.{param}")),
        "txt_mlp.0" => one(&format!("ff_context.net.0.proj.{param}")),
        "txt_mlp.2" => one(&format!("ff_context.net.2.{param}")),
        "img_attn.norm.query_norm" if scale => one("attn.norm_q.weight"),
        "img_attn.norm.key_norm" if scale => one("attn.norm_k.weight"),
        "txt_attn.norm.query_norm" if scale => one("attn.norm_added_q.weight"),
        "txt_attn.norm.key_norm" if scale => one("attn.norm_added_k.weight"),
        _ => None,
    }
}

/// A single block's module `{i}.{part}` (`single_transformer_blocks`):
/// `linear1` holds q, k, v and the MLP's input, stacked by rows.
fn single(rest: &str, param: &str, config: &FluxConfig) -> Option<KeyMap> {
    let (i, part) = rest.split_once('.')?;
    let b = format!("single_transformer_blocks.{i}");
    let one = |name: &str| Some(KeyMap::To(format!("{b}.{name}")));
    let dim = config.inner_dim();
    match part {
        "linear1" => Some(KeyMap::SplitRowsBy(vec![
            (format!("{b}.attn.to_q.{param}"), dim),
            (format!("{b}.attn.to_k.{param}"), dim),
            (format!("{b}.attn.to_v.{param}"), dim),
            (format!("{b}.proj_mlp.{param}"), 4 * dim),
        ])),
        "linear2" => one(&format!("proj_out.{param}")),
        "modulation.lin" => one(&format!("norm.linear.{param}")),
        "norm.query_norm" if param == "scale" => one("attn.norm_q.weight"),
        "norm.key_norm" if param == "scale" => one("attn.norm_k.weight"),
        _ => None,
    }
}

/// The config of the transformer in a BFL file, from its shapes: blocks
/// counted, widths read from the embedders, heads of 128 (every FLUX.1
/// model's; 24 at full size), guidance from `guidance_in`.
pub fn config_from_shapes(shapes: &BTreeMap<String, Vec<i64>>) -> Result<FluxConfig> {
    let get = |name: &str| {
        (shapes.iter())
            .find(|(k, _)| strip(k) == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| FluxError::Input(format!("a FLUX file needs {name}")))
    };
    let count = |prefix: &str| {
        let blocks = shapes.keys().filter_map(|k| {
            let rest = strip(k).strip_prefix(prefix)?;
            rest.split('.').next()?.parse::<i64>().ok()
        });
        blocks.max().map_or(0, |m| m + 1)
    };
    let img_in = get("img_in.weight")?;
    let (inner, in_channels) = (img_in[0], img_in[1]);
    let head_dim = get("double_blocks.0.img_attn.norm.query_norm.scale")?[0];
    let axes = match head_dim {
        128 => vec![16, 56, 56],
        other => {
            return Err(FluxError::Input(format!(
                "heads of {other}: FLUX.1 files have 128 (give config_dir for another model)"
            )))
        }
    };
    Ok(FluxConfig {
        patch_size: 1,
        in_channels,
        out_channels: Some(get("final_layer.linear.weight")?[0]).filter(|&o| o != in_channels),
        num_layers: count("double_blocks."),
        num_single_layers: count("single_blocks."),
        attention_head_dim: head_dim,
        num_attention_heads: inner / head_dim,
        joint_attention_dim: get("txt_in.weight")?[1],
        pooled_projection_dim: get("vector_in.in_layer.weight")?[1],
        guidance_embeds: shapes.keys().any(|k| strip(k).starts_with("guidance_in.")),
        axes_dims_rope: axes,
    })
}
