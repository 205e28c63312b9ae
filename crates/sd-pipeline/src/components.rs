//! The loaded components of a pipeline, however they were found (a
//! diffusers folder, a single-file checkpoint, the hub cache), and where
//! each runs.

use std::path::{Path, PathBuf};

use sd_clip::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use sd_flux::FluxTransformer2DModel;
use sd_mmdit::SD3Transformer2DModel;
use sd_scheduler::SchedulerConfig;
use sd_unet::UNet2DConditionModel;
use sd_vae::{AutoencoderKL, VaeConfig};
use tch::{Device, Kind};

use crate::denoiser::Denoiser;
use crate::encoder_files::EncoderFiles;
use crate::error::{PipelineError, Result};
use crate::front::Field;
use crate::model::{ModelFamily, ModelIndex};
use crate::t5::{load_t5, T5Loading, T5Tower};

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
/// (`sub`: "" or "_2"); the encoder's weights from `file` when given.
pub(crate) fn load_tower(
    dir: &Path,
    sub: &str,
    (device, dtype): (Device, Kind),
    variant: Option<&str>,
    file: Option<&Path>,
) -> Result<TextTower> {
    let tokenizer = ClipTokenizer::from_folder(dir.join(format!("tokenizer{sub}")))?;
    let folder = dir.join(format!("text_encoder{sub}"));
    let model = match file {
        Some(file) => {
            let config = ClipTextConfig::from_file(folder.join("config.json"))?;
            crate::encoder_files::load_clip(file, config, sub.is_empty(), (device, dtype))?
        }
        None => ClipTextModel::from_folder(folder, device, dtype, variant)?,
    };
    Ok((tokenizer, Frozen::new(model)))
}

/// Everything a pipeline holds, as loaded (before the builder's settings).
#[non_exhaustive]
pub struct Components {
    /// The folder or file they came from.
    pub source: PathBuf,
    /// model_index.json (or what a single file implies).
    pub index: ModelIndex,
    /// The first (SD) or CLIP-L (SDXL, SD3) tokenizer and text encoder.
    pub text: TextTower,
    /// SDXL's and SD3's second tokenizer and OpenCLIP-bigG text encoder.
    pub text_2: Option<TextTower>,
    /// SD3's T5 (None: left out, or not in the folder).
    pub t5: Option<T5Tower>,
    /// The UNet or SD3's transformer.
    pub denoiser: Denoiser,
    /// The autoencoder.
    pub vae: AutoencoderKL,
    /// The scheduler config the model came with.
    pub scheduler: SchedulerConfig,
}

impl Components {
    /// Loads a diffusers folder (model_index.json, tokenizer/, text_encoder/,
    /// unet/, vae/, scheduler/; SDXL's tokenizer_2/, text_encoder_2/; SD3's
    /// transformer/ instead of unet/, and T5 when the folder has it).
    pub fn from_folder(
        dir: &Path,
        devices: Devices,
        dtype: Kind,
        variant: Option<&str>,
    ) -> Result<Self> {
        let files = EncoderFiles::new();
        Self::from_folder_with(dir, devices, dtype, variant, (T5Loading::Resident, &files))
    }

    /// As [`Components::from_folder`], with an SD3 folder's T5 loaded as
    /// `t5` says (left out, its states are zeros, as diffusers' when
    /// `text_encoder_3` is None), and text encoders from `files` where given.
    pub fn from_folder_with(
        dir: &Path,
        devices: Devices,
        dtype: Kind,
        variant: Option<&str>,
        (t5, files): (T5Loading, &EncoderFiles),
    ) -> Result<Self> {
        let denoiser = |family: ModelFamily| -> Result<Denoiser> {
            Ok(match family {
                ModelFamily::StableDiffusion3 => {
                    Denoiser::Transformer(Frozen::new(SD3Transformer2DModel::from_folder(
                        dir.join("transformer"),
                        devices.unet,
                        dtype,
                        variant,
                    )?))
                }
                ModelFamily::Flux => {
                    Denoiser::Flux(Frozen::new(FluxTransformer2DModel::from_folder(
                        dir.join("transformer"),
                        devices.unet,
                        dtype,
                        variant,
                    )?))
                }
                _ => Denoiser::UNet(Frozen::new(UNet2DConditionModel::from_folder(
                    dir.join("unet"),
                    devices.unet,
                    dtype,
                    variant,
                )?)),
            })
        };
        Self::from_folder_parts(dir, devices, dtype, variant, (t5, files), &denoiser)
    }

    /// As [`Components::from_folder_with`], with the denoiser made by
    /// `denoiser` for the folder's family (from a file of its own).
    pub(crate) fn from_folder_parts(
        dir: &Path,
        devices: Devices,
        dtype: Kind,
        variant: Option<&str>,
        (t5, files): (T5Loading, &EncoderFiles),
        denoiser: &dyn Fn(ModelFamily) -> Result<Denoiser>,
    ) -> Result<Self> {
        let index = ModelIndex::read(dir)?;
        let encoder = (devices.text_encoder, dtype);
        let tower = |sub: &str, file: &Option<PathBuf>| {
            load_tower(dir, sub, encoder, variant, file.as_deref())
        };
        let family = index.family;
        let denoiser = denoiser(family)?;
        let t5_suffix = family.t5_suffix();
        let has_t5 = t5_suffix.is_some_and(|s| dir.join(format!("text_encoder{s}")).is_dir());
        Ok(Components {
            source: dir.to_path_buf(),
            text: tower("", &files.clip_l)?,
            text_2: match family {
                // (FLUX's `_2` is T5)
                ModelFamily::StableDiffusion | ModelFamily::Flux => None,
                _ => Some(tower("_2", &files.clip_g)?),
            },
            t5: match t5_suffix {
                Some(suffix) if has_t5 || files.t5.is_some() => {
                    load_t5((dir, suffix), t5, encoder, variant, files.t5.as_deref())?
                }
                _ => None,
            },
            denoiser,
            vae: match &files.vae {
                Some(file) => {
                    let config = VaeConfig::from_file(dir.join("vae/config.json"))?;
                    crate::encoder_files::load_vae(file, &config, (devices.vae, dtype))?
                }
                None => AutoencoderKL::from_folder(dir.join("vae"), devices.vae, dtype, variant)?,
            },
            scheduler: SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))?,
            index,
        })
    }
}

impl Components {
    /// The text encoders' widths against what a FLUX or SD3 transformer takes:
    /// a T5 or CLIP-L of another width would fail inside the first step.
    pub(crate) fn check_text_widths(&self) -> Result<()> {
        // (T5's width; FLUX's pooled vector is CLIP-L's alone, SD3's two CLIPs')
        let (text_width, pooled) = match &self.denoiser {
            Denoiser::Flux(flux) => {
                let config = flux.config();
                (
                    config.joint_attention_dim,
                    Some(config.pooled_projection_dim),
                )
            }
            Denoiser::Transformer(sd3) => (sd3.config().joint_attention_dim, None),
            Denoiser::UNet(_) => return Ok(()),
        };
        if let Some(width) = (self.t5.as_ref()).map(|(_, t5)| t5.width()) {
            if width != text_width {
                let message = format!(
                    "a T5 of width {width}; this transformer takes text states of width \
                     {text_width} (FLUX.1 and SD3 use T5-XXL, 4096)"
                );
                return Err(PipelineError::request(Field::T5, message));
            }
        }
        let clip_width = self.text.1.config().hidden_size;
        if let Some(pooled) = pooled.filter(|&p| p != clip_width) {
            let message = format!(
                "a CLIP-L of width {clip_width}; this transformer takes a pooled text vector of \
                 width {pooled}"
            );
            return Err(PipelineError::request(Field::ClipL, message));
        }
        Ok(())
    }
}
