//! Single-file checkpoint keys of the text encoders, mapped to this crate's
//! (transformers 4) names: OpenAI CLIP stored by transformers under a prefix
//! (`cond_stage_model.transformer.`, SDXL `conditioner.embedders.0.transformer.`),
//! and OpenCLIP's own layout (`cond_stage_model.model.`, SDXL
//! `conditioner.embedders.1.model.`) with fused q/k/v and a (width, dim)
//! text projection.

use sd_core::weights::KeyMap;

use crate::config::ClipTextConfig;
use crate::encoder::canonical_key;

/// transformers-layout CLIP under `prefix`.
pub fn map_hf(key: &str, prefix: &str) -> KeyMap {
    match key.strip_prefix(prefix) {
        Some(rest) => canonical_key(rest).map_or(KeyMap::Skip, KeyMap::To),
        None => KeyMap::Skip,
    }
}

/// OpenCLIP-layout text tower under `prefix`. Layers past the config's
/// `num_hidden_layers` are skipped (SD2 uses 23 of OpenCLIP-H's 24), and so
/// is the projection when the model has none.
pub fn map_open_clip(key: &str, prefix: &str, config: &ClipTextConfig) -> KeyMap {
    let Some(rest) = key.strip_prefix(prefix) else {
        return KeyMap::Skip;
    };
    let to = |name: &str| KeyMap::To(format!("text_model.{name}"));
    match rest {
        "token_embedding.weight" => return to("embeddings.token_embedding.weight"),
        "positional_embedding" => return to("embeddings.position_embedding.weight"),
        "logit_scale" => return KeyMap::Skip,
        "text_projection" if config.with_projection() => {
            return KeyMap::Transpose("text_projection.weight".into())
        }
        "text_projection" => return KeyMap::Skip,
        _ => {}
    }
    if let Some(param) = rest.strip_prefix("ln_final.") {
        return to(&format!("final_layer_norm.{param}"));
    }
    let Some(layer) = rest.strip_prefix("transformer.resblocks.") else {
        return KeyMap::To(format!("(open_clip) {rest}"));
    };
    let Some((index, tail)) = layer.split_once('.') else {
        return KeyMap::To(format!("(open_clip) {rest}"));
    };
    let Ok(i) = index.parse::<i64>() else {
        return KeyMap::To(format!("(open_clip) {rest}"));
    };
    if i >= config.num_hidden_layers {
        return KeyMap::Skip;
    }
    let base = format!("text_model.encoder.layers.{i}.");
    let name = |n: &str| format!("{base}{n}");
    match tail {
        "attn.in_proj_weight" => KeyMap::SplitRows(
            ["q", "k", "v"]
                .iter()
                .map(|x| name(&format!("self_attn.{x}_proj.weight")))
                .collect(),
        ),
        "attn.in_proj_bias" => KeyMap::SplitRows(
            ["q", "k", "v"]
                .iter()
                .map(|x| name(&format!("self_attn.{x}_proj.bias")))
                .collect(),
        ),
        _ => {
            let renamed = tail
                .replace("ln_1.", "layer_norm1.")
                .replace("ln_2.", "layer_norm2.")
                .replace("attn.out_proj.", "self_attn.out_proj.")
                .replace("mlp.c_fc.", "mlp.fc1.")
                .replace("mlp.c_proj.", "mlp.fc2.");
            KeyMap::To(name(&renamed))
        }
    }
}
