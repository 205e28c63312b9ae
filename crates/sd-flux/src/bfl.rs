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

/// How a BFL module's output rows spread over diffusers' modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rows {
    /// One module, the same rows.
    Whole,
    /// One module, the two halves of its rows swapped (the output norm's
    /// (shift, scale) stored as (scale, shift)).
    SwappedHalves,
    /// Equal parts (a fused q/k/v).
    Equal,
    /// A single block's input: q, k and v of `dim` rows each, then the MLP's
    /// `4 * dim` (FLUX.1's MLP ratio).
    SingleInput,
}

impl Rows {
    /// Each part's rows, for a fused module of `total` rows.
    pub fn split(self, parts: usize, total: i64) -> Vec<i64> {
        match self {
            Rows::SingleInput => {
                let dim = total / 7;
                vec![dim, dim, dim, 4 * dim]
            }
            _ => vec![total / parts.max(1) as i64; parts],
        }
    }
}

/// The linear modules outside the blocks: BFL's name, diffusers'.
const TOP: [(&str, &str, Rows); 10] = [
    ("img_in", "x_embedder", Rows::Whole),
    ("txt_in", "context_embedder", Rows::Whole),
    (
        "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_1",
        Rows::Whole,
    ),
    (
        "time_in.out_layer",
        "time_text_embed.timestep_embedder.linear_2",
        Rows::Whole,
    ),
    (
        "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_1",
        Rows::Whole,
    ),
    (
        "vector_in.out_layer",
        "time_text_embed.text_embedder.linear_2",
        Rows::Whole,
    ),
    (
        "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_1",
        Rows::Whole,
    ),
    (
        "guidance_in.out_layer",
        "time_text_embed.guidance_embedder.linear_2",
        Rows::Whole,
    ),
    ("final_layer.linear", "proj_out", Rows::Whole),
    (
        "final_layer.adaLN_modulation.1",
        "norm_out.linear",
        Rows::SwappedHalves,
    ),
];

/// A double block's linear modules: BFL's part, diffusers' parts.
const DOUBLE: [(&str, &[&str], Rows); 10] = [
    (
        "img_attn.qkv",
        &["attn.to_q", "attn.to_k", "attn.to_v"],
        Rows::Equal,
    ),
    (
        "txt_attn.qkv",
        &["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
        Rows::Equal,
    ),
    ("img_attn.proj", &["attn.to_out.0"], Rows::Whole),
    ("txt_attn.proj", &["attn.to_add_out"], Rows::Whole),
    ("img_mlp.0", &["ff.net.0.proj"], Rows::Whole),
    ("img_mlp.2", &["ff.net.2"], Rows::Whole),
    ("txt_mlp.0", &["ff_context.net.0.proj"], Rows::Whole),
    ("txt_mlp.2", &["ff_context.net.2"], Rows::Whole),
    ("img_mod.lin", &["norm1.linear"], Rows::Whole),
    ("txt_mod.lin", &["norm1_context.linear"], Rows::Whole),
];

/// A single block's linear modules.
const SINGLE: [(&str, &[&str], Rows); 3] = [
    (
        "linear1",
        &["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
        Rows::SingleInput,
    ),
    ("linear2", &["proj_out"], Rows::Whole),
    ("modulation.lin", &["norm.linear"], Rows::Whole),
];

/// A BFL linear module (`double_blocks.0.img_attn.qkv`, `img_in`, ...,
/// without its parameter): the diffusers modules its rows go to, and how.
/// `None` for anything else. LoRA files name these modules too.
pub fn linear_module(module: &str) -> Option<(Vec<String>, Rows)> {
    if let Some((_, name, rows)) = TOP.iter().find(|(bfl, _, _)| *bfl == module) {
        return Some((vec![name.to_string()], *rows));
    }
    let (block, i, part) = block_part(module)?;
    let table: &[(&str, &[&str], Rows)] = match block {
        "transformer_blocks" => &DOUBLE,
        _ => &SINGLE,
    };
    let (_, parts, rows) = table.iter().find(|(bfl, _, _)| *bfl == part)?;
    Some((
        parts.iter().map(|p| format!("{block}.{i}.{p}")).collect(),
        *rows,
    ))
}

/// Every BFL linear module of a model of `double` and `single` blocks.
pub fn linear_modules(double: usize, single: usize) -> Vec<String> {
    let top = TOP.iter().map(|(bfl, _, _)| bfl.to_string());
    let double = (0..double).flat_map(|i| {
        DOUBLE
            .iter()
            .map(move |(p, _, _)| format!("double_blocks.{i}.{p}"))
    });
    let single = (0..single).flat_map(|i| {
        SINGLE
            .iter()
            .map(move |(p, _, _)| format!("single_blocks.{i}.{p}"))
    });
    top.chain(double).chain(single).collect()
}

/// `double_blocks.{i}.{part}` / `single_blocks.{i}.{part}`: diffusers'
/// block list, the index and the part.
fn block_part(module: &str) -> Option<(&'static str, &str, &str)> {
    let (block, rest) = if let Some(rest) = module.strip_prefix("double_blocks.") {
        ("transformer_blocks", rest)
    } else {
        (
            "single_transformer_blocks",
            module.strip_prefix("single_blocks.")?,
        )
    };
    let (i, part) = rest.split_once('.')?;
    Some((block, i, part))
}

/// The diffusers name (and transform) of the file's `key` for a model of
/// `config`; keys outside the transformer (a VAE, text encoders) are
/// skipped, unknown ones keep a name to be reported as unexpected.
pub fn map(key: &str, config: &FluxConfig) -> KeyMap {
    let key = strip(key);
    let Some((module, param)) = key.rsplit_once('.') else {
        return KeyMap::To(format!("(bfl) {key}"));
    };
    if let Some((names, rows)) = linear_module(module) {
        let mut names = names.into_iter().map(|n| format!("{n}.{param}"));
        return match rows {
            Rows::Whole => KeyMap::To(names.next().unwrap_or_default()),
            Rows::SwappedHalves => KeyMap::SwapHalves(names.next().unwrap_or_default()),
            Rows::Equal => KeyMap::SplitRows(names.collect()),
            Rows::SingleInput => {
                let dim = config.inner_dim();
                KeyMap::SplitRowsBy(names.zip(Rows::SingleInput.split(4, 7 * dim)).collect())
            }
        };
    }
    if let Some(norm) = norm_scale(module, param) {
        return KeyMap::To(norm);
    }
    match key.starts_with("vae.") || key.starts_with("text_encoders.") {
        true => KeyMap::Skip,
        false => KeyMap::To(format!("(bfl) {key}")),
    }
}

/// The per-head RMS norms' `scale` (diffusers' `norm_q`/`norm_k`/... `weight`).
fn norm_scale(module: &str, param: &str) -> Option<String> {
    let (block, i, part) = block_part(module)?;
    let name = match (part, block == "transformer_blocks") {
        _ if param != "scale" => return None,
        ("img_attn.norm.query_norm", true) | ("norm.query_norm", false) => "attn.norm_q",
        ("img_attn.norm.key_norm", true) | ("norm.key_norm", false) => "attn.norm_k",
        ("txt_attn.norm.query_norm", true) => "attn.norm_added_q",
        ("txt_attn.norm.key_norm", true) => "attn.norm_added_k",
        _ => return None,
    };
    Some(format!("{block}.{i}.{name}.weight"))
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
