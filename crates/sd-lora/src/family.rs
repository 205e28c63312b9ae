//! Which model family an adapter file seems made for, for error messages.

use crate::adapter::Adapter;
use crate::file::LoraFile;
use crate::keys::Component;

/// A guess from the file's names and the width of its cross-attention
/// keys (768: SD 1.x, 1024: SD 2.x, 2048: SDXL).
pub fn guess(lora: &LoraFile) -> String {
    let width = lora.modules.iter().find_map(|m| {
        let name = m.name.as_str();
        let key_or_value =
            name.contains("attn2") && (name.ends_with("to_k") || name.ends_with("to_v"));
        match &m.adapter {
            Adapter::Lora { down, .. } if key_or_value && down.dim() == 2 => Some(down.size()[1]),
            _ => None,
        }
    });
    let has = |c: Component| lora.modules.iter().any(|m| m.component == c);
    let kohya_sd3 = lora
        .modules
        .iter()
        .any(|m| m.name.as_str().starts_with("joint_blocks"));
    let unknown_like = |needle: &str| lora.unknown.iter().any(|(k, _)| k.contains(needle));
    let flux = lora
        .modules
        .iter()
        .any(|m| m.name.as_str().starts_with("single_transformer_blocks"));
    match width {
        Some(w) => sd_core::family::describe_cross_attention(w),
        None if flux => "FLUX.1 (it has single-stream blocks)".into(),
        None if kohya_sd3 => "SD3 (kohya's names for its transformer), not a UNet".into(),
        None if has(Component::Transformer) => {
            "a transformer model (SD3 or similar: diffusers' transformer.* names), not a UNet"
                .into()
        }
        None if has(Component::TextEncoder2) => "SDXL (it has a second text encoder)".into(),
        None if unknown_like("transformer") || unknown_like("double_blocks") => {
            "a transformer model (Flux, SD3 or similar), not a UNet".into()
        }
        None => "an unknown model".into(),
    }
}

/// The kind of denoiser a file's modules change: SD3's transformer for
/// diffusers' `transformer.` names and for kohya's Stability-named blocks
/// (`lora_unet_joint_blocks_*`), else a UNet.
pub fn denoiser(lora: &LoraFile) -> Component {
    let transformer = lora.modules.iter().any(|m| {
        m.component == Component::Transformer || m.name.as_str().starts_with("joint_blocks")
    });
    match transformer {
        true => Component::Transformer,
        false => Component::Unet,
    }
}
