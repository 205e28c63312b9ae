//! The loaded components of a pipeline, however they were found (a
//! diffusers folder, a single-file checkpoint, the hub cache), and where
//! each runs.

use std::path::{Path, PathBuf};

use sd_clip::{ClipTextModel, ClipTokenizer};
use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use sd_scheduler::SchedulerConfig;
use sd_unet::UNet2DConditionModel;
use sd_vae::AutoencoderKL;
use tch::{Device, Kind};

use crate::error::Result;
use crate::model::{ModelFamily, ModelIndex};

/// Where each component runs. Text encoders may stay on the CPU while the
/// UNet and VAE use a GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Devices {
    /// Where the text encoders run.
    pub text_encoder: Device,
    /// Where the UNet and the denoising loop run.
    pub unet: Device,
    /// Where the VAE encodes and decodes.
    pub vae: Device,
}

impl Devices {
    /// Every component on `device`.
    pub fn all(device: Device) -> Self {
        Devices {
            text_encoder: device,
            unet: device,
            vae: device,
        }
    }
}

/// A tokenizer with its text encoder.
pub type TextTower = (ClipTokenizer, Frozen<ClipTextModel>);

/// `tokenizer{sub}/` and `text_encoder{sub}/` of the pipeline folder `dir`
/// (`sub`: "" or "_2").
pub(crate) fn load_tower(
    dir: &Path,
    sub: &str,
    device: Device,
    dtype: Kind,
    variant: Option<&str>,
) -> Result<TextTower> {
    let tokenizer = ClipTokenizer::from_folder(dir.join(format!("tokenizer{sub}")))?;
    let folder = dir.join(format!("text_encoder{sub}"));
    let model = ClipTextModel::from_folder(folder, device, dtype, variant)?;
    Ok((tokenizer, Frozen::new(model)))
}

/// Everything a pipeline holds, as loaded (before the builder's settings).
#[non_exhaustive]
pub struct Components {
    /// The folder or file they came from.
    pub source: PathBuf,
    /// model_index.json (or what a single file implies).
    pub index: ModelIndex,
    /// The first (SD) or CLIP-L (SDXL) tokenizer and text encoder.
    pub text: TextTower,
    /// SDXL's second tokenizer and OpenCLIP-bigG text encoder.
    pub text_2: Option<TextTower>,
    /// The denoiser.
    pub unet: UNet2DConditionModel,
    /// The autoencoder.
    pub vae: AutoencoderKL,
    /// The scheduler config the model came with.
    pub scheduler: SchedulerConfig,
}

impl Components {
    /// Loads a diffusers folder (model_index.json, tokenizer/, text_encoder/,
    /// unet/, vae/, scheduler/, and SDXL's tokenizer_2/, text_encoder_2/).
    pub fn from_folder(
        dir: &Path,
        devices: Devices,
        dtype: Kind,
        variant: Option<&str>,
    ) -> Result<Self> {
        let index = ModelIndex::read(dir)?;
        let tower = |sub: &str| load_tower(dir, sub, devices.text_encoder, dtype, variant);
        Ok(Components {
            source: dir.to_path_buf(),
            text: tower("")?,
            text_2: match index.family {
                ModelFamily::StableDiffusionXl => Some(tower("_2")?),
                ModelFamily::StableDiffusion => None,
            },
            unet: UNet2DConditionModel::from_folder(
                dir.join("unet"),
                devices.unet,
                dtype,
                variant,
            )?,
            vae: AutoencoderKL::from_folder(dir.join("vae"), devices.vae, dtype, variant)?,
            scheduler: SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))?,
            index,
        })
    }
}
