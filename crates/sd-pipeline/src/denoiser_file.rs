//! Files that hold a denoiser alone: a UNet (LDM layout), an SD3
//! transformer (Stability's layout) or a FLUX transformer (Black Forest
//! Labs'), with or without the checkpoint's `model.diffusion_model.` prefix. ComfyUI-GGUF's converters write them
//! without it (city96's `*-Q4_K_M.gguf` files), ComfyUI's "UNet loader"
//! users keep safetensors the same way. The other parts (text encoders,
//! VAE, tokenizers, scheduler) come from a diffusers folder, as diffusers'
//! `from_pretrained(folder, unet=...)` takes them.

use std::collections::BTreeMap;
use std::path::Path;

use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use sd_flux::{FluxConfig, FluxTransformer2DModel};
use sd_unet::{ldm::LdmUNetKeys, UNet2DConditionModel, UNetConfig};

use crate::components::{Components, Devices};
use crate::denoiser::Denoiser;
use crate::encoder_files::EncoderFiles;
use crate::error::{PipelineError, Result};
use crate::model::ModelFamily;
use crate::t5::T5Loading;

/// The checkpoint prefix every denoiser key has in a whole checkpoint.
pub(crate) const PREFIX: &str = "model.diffusion_model.";

/// Roots of a denoiser's keys without the prefix: a UNet's, SD3's, FLUX's.
const ROOTS: [&str; 3] = ["input_blocks.", "joint_blocks.", "double_blocks."];

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

/// The diffusers folder that supplies what a denoiser-only file lacks.
fn folder_for<'a>(path: &Path, config_dir: Option<&'a Path>, what: &str) -> Result<&'a Path> {
    config_dir
        .filter(|dir| dir.join("model_index.json").is_file())
        .ok_or_else(|| {
            let message = format!(
                "holds {what} alone (no text encoder, no VAE): give config_dir (--config-dir), \
                 a diffusers folder of the same family, for the other parts"
            );
            PipelineError::model(path, message)
        })
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
    let folder = folder_for(path, config_dir, "a UNet")?;
    let unet = |family: ModelFamily| -> Result<Denoiser> {
        if family.is_flow_matching() {
            let message = format!(
                "holds a UNet, and {} is a transformer model's folder",
                folder.display()
            );
            return Err(PipelineError::model(path, message));
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

/// A pipeline from a FLUX transformer in Black Forest Labs' layout
/// (`flux1-dev.safetensors`, its fp8 and GGUF forms) and the rest of
/// `config_dir`'s FLUX folder; the transformer's config from the folder.
pub(crate) fn load_flux_transformer(
    path: &Path,
    config_dir: Option<&Path>,
    (devices, dtype): (Devices, tch::Kind),
    encoders: (T5Loading, &EncoderFiles),
) -> Result<Components> {
    let folder = folder_for(path, config_dir, "a FLUX transformer")?;
    let transformer = |family: ModelFamily| -> Result<Denoiser> {
        if family != ModelFamily::Flux {
            let message = format!(
                "holds a FLUX transformer, and {} is not a FLUX folder",
                folder.display()
            );
            return Err(PipelineError::model(path, message));
        }
        let config = FluxConfig::from_file(folder.join("transformer/config.json"))?;
        let model = FluxTransformer2DModel::from_files(
            &config,
            &[path.to_path_buf()],
            devices.unet,
            dtype,
            &|k| sd_flux::bfl::map(k, &config),
        )?;
        Ok(Denoiser::Flux(Frozen::new(model)))
    };
    let mut components =
        Components::from_folder_parts(folder, devices, dtype, None, encoders, &transformer)?;
    components.source = path.to_path_buf();
    Ok(components)
}
