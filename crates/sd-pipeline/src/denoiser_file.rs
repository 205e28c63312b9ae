//! Files that hold a denoiser alone: a UNet (LDM layout) or an SD3
//! transformer (Stability's layout), with or without the checkpoint's
//! `model.diffusion_model.` prefix. ComfyUI-GGUF's converters write them
//! without it (city96's `*-Q4_K_M.gguf` files), ComfyUI's "UNet loader"
//! users keep safetensors the same way. The other parts (text encoders,
//! VAE, tokenizers, scheduler) come from a diffusers folder, as diffusers'
//! `from_pretrained(folder, unet=...)` takes them.

use std::collections::BTreeMap;
use std::path::Path;

use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use sd_unet::{ldm::LdmUNetKeys, UNet2DConditionModel, UNetConfig};

use crate::components::{Components, Devices};
use crate::denoiser::Denoiser;
use crate::encoder_files::EncoderFiles;
use crate::error::{PipelineError, Result};
use crate::model::ModelFamily;
use crate::t5::T5Loading;

/// The checkpoint prefix every denoiser key has in a whole checkpoint.
pub(crate) const PREFIX: &str = "model.diffusion_model.";

/// Roots of a denoiser's keys without the prefix: a UNet's, SD3's.
const ROOTS: [&str; 2] = ["input_blocks.", "joint_blocks."];

/// Whether the file's keys are a denoiser's without [`PREFIX`].
pub(crate) fn is_unprefixed(shapes: &BTreeMap<String, Vec<i64>>) -> bool {
    let has = |root: &str| shapes.keys().any(|k| k.starts_with(root));
    !has(PREFIX) && ROOTS.iter().any(|root| has(root))
}

/// The shapes as a whole checkpoint would name them (unchanged where the
/// prefix is there), and the prefix that makes a file key such a name.
pub(crate) fn with_prefix(
    shapes: BTreeMap<String, Vec<i64>>,
) -> (BTreeMap<String, Vec<i64>>, &'static str) {
    match is_unprefixed(&shapes) {
        true => (
            shapes
                .into_iter()
                .map(|(k, v)| (format!("{PREFIX}{k}"), v))
                .collect(),
            PREFIX,
        ),
        false => (shapes, ""),
    }
}

/// Whether a checkpoint's (prefixed) keys hold a UNet and nothing else.
pub(crate) fn is_unet_only(shapes: &BTreeMap<String, Vec<i64>>) -> bool {
    shapes.keys().all(|k| k.starts_with(PREFIX))
        && shapes.contains_key(&format!("{PREFIX}input_blocks.0.0.weight"))
}

/// A pipeline from a UNet-only file and the rest of `config_dir`'s
/// diffusers folder; `prefix` makes the file's keys checkpoint keys.
pub(crate) fn load_unet_only(
    path: &Path,
    prefix: &'static str,
    config_dir: Option<&Path>,
    (devices, dtype): (Devices, tch::Kind),
    encoders: (T5Loading, &EncoderFiles),
) -> Result<Components> {
    let folder = config_dir
        .filter(|dir| dir.join("model_index.json").is_file())
        .ok_or_else(|| {
            PipelineError::model(
                path,
                "holds a UNet alone (no text encoder, no VAE): give config_dir (--config-dir), \
                 a diffusers folder of the same family, for the other parts",
            )
        })?;
    let unet = |family: ModelFamily| -> Result<Denoiser> {
        if family == ModelFamily::StableDiffusion3 {
            return Err(PipelineError::model(
                path,
                format!(
                    "holds a UNet, and {} is an SD3 folder (a transformer model)",
                    folder.display()
                ),
            ));
        }
        let config = UNetConfig::from_file(folder.join("unet/config.json"))?;
        let keys = LdmUNetKeys::new(&config)?;
        let model = UNet2DConditionModel::from_files(
            &config,
            &[path.to_path_buf()],
            devices.unet,
            dtype,
            &|k| keys.map(&format!("{prefix}{k}")),
        )?;
        Ok(Denoiser::UNet(Frozen::new(model)))
    };
    let mut components =
        Components::from_folder_parts(folder, devices, dtype, None, encoders, &unet)?;
    components.source = path.to_path_buf();
    Ok(components)
}
