//! Single-file checkpoints in the CompVis/LDM layout (`model.diffusion_model.*`,
//! `first_stage_model.*`, `cond_stage_model.*` / `conditioner.embedders.*`):
//! the family is recognised from keys and shapes, configs come from the
//! built-in presets (or a diffusers folder you name), and keys are remapped
//! at load time.

use sd_core::DiffusersModel;
use std::path::Path;

use sd_clip::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use sd_core::shared::Frozen;
use sd_core::weights::{KeyMap, MappedFile};
use sd_scheduler::SchedulerConfig;
use sd_unet::{ldm::LdmUNetKeys, UNet2DConditionModel, UNetConfig};
use sd_vae::{AutoencoderKL, VaeConfig};
use serde_json::Value;
use tch::Kind;

use crate::components::{Components, Devices};
use crate::encoder_files::EncoderFiles;
use crate::error::{PipelineError, Result};
use crate::model::{ModelFamily, ModelIndex};

/// What a checkpoint holds, from its keys and shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// SD1.x: OpenAI CLIP-L under `cond_stage_model.transformer.`.
    Sd1,
    /// SD2.x: OpenCLIP-H under `cond_stage_model.model.`.
    Sd2,
    /// SDXL base: CLIP-L and OpenCLIP-bigG under `conditioner.embedders.{0,1}.`.
    Sdxl,
}

/// What a checkpoint holds, from its keys and shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    /// SD1, SD2 or SDXL.
    pub kind: CheckpointKind,
    /// A 9-channel (inpainting) UNet.
    pub inpainting: bool,
}

const SD1_TEXT: &str = "cond_stage_model.transformer.";
const SD2_TEXT: &str = "cond_stage_model.model.";
const XL_TEXT_1: &str = "conditioner.embedders.0.transformer.";
const XL_TEXT_2: &str = "conditioner.embedders.1.model.";

/// Recognises the checkpoint family; an error names what is missing.
pub fn detect(file: &MappedFile) -> Result<Detected> {
    let shapes = file.shapes()?;
    let has = |prefix: &str| shapes.keys().any(|k| k.starts_with(prefix));
    if !has(sd_unet::ldm::PREFIX) {
        let encoders_only = ["text_encoders.", "text_model.", "encoder.block.", "shared."];
        let message = match encoders_only.iter().any(|p| has(p)) {
            true => {
                "only text encoders (CLIP or T5), no model.diffusion_model.*: give the model's \
                     own file (or folder) as the model"
            }
            false => {
                "no model.diffusion_model.* tensors: not a Stable Diffusion single-file \
                      checkpoint"
            }
        };
        return Err(PipelineError::model(file.path(), message));
    }
    let kind = if has(XL_TEXT_2) {
        CheckpointKind::Sdxl
    } else if has(SD2_TEXT) {
        CheckpointKind::Sd2
    } else if has(SD1_TEXT) {
        CheckpointKind::Sd1
    } else {
        return Err(PipelineError::model(
            file.path(),
            "no text encoder (cond_stage_model.* or conditioner.embedders.*)",
        ));
    };
    let inpainting = shapes
        .get("model.diffusion_model.input_blocks.0.0.weight")
        .is_some_and(|s| s.len() == 4 && s[1] == 9);
    Ok(Detected { kind, inpainting })
}

/// The configs of one family: from a diffusers folder, or the built-in presets.
pub struct Configs {
    /// The UNet's config.
    pub unet: UNetConfig,
    /// The VAE's config.
    pub vae: VaeConfig,
    /// The (first) text encoder's config.
    pub text: ClipTextConfig,
    /// SDXL's second text encoder's config.
    pub text_2: Option<ClipTextConfig>,
    /// The scheduler's config.
    pub scheduler: SchedulerConfig,
}

/// The model a checkpoint key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// `cond_stage_model.*` or `conditioner.embedders.0.*`.
    TextEncoder,
    /// SDXL's `conditioner.embedders.1.*`.
    TextEncoder2,
    /// `model.diffusion_model.*`.
    UNet,
    /// `first_stage_model.*`.
    Vae,
}

/// How every key of a checkpoint of one family is loaded.
pub struct Plan {
    /// The checkpoint's family.
    pub detected: Detected,
    /// The configs the components are built from.
    pub configs: Configs,
    unet_keys: LdmUNetKeys,
}

impl Plan {
    /// The plan for a checkpoint of `detected`'s family, with configs from
    /// `config_dir` or the built-in presets.
    pub fn new(detected: Detected, config_dir: Option<&Path>) -> Result<Self> {
        let configs = configs(detected, config_dir)?;
        let unet_keys = LdmUNetKeys::new(&configs.unet)?;
        Ok(Plan {
            detected,
            configs,
            unet_keys,
        })
    }

    /// The key's target in `component` (Skip when it belongs elsewhere).
    pub fn map(&self, component: Component, key: &str) -> KeyMap {
        match (component, self.detected.kind) {
            (Component::UNet, _) => self.unet_keys.map(key),
            (Component::Vae, _) => sd_vae::ldm::map(key, self.configs.vae.block_out_channels.len()),
            (Component::TextEncoder, CheckpointKind::Sd1) => sd_clip::ldm::map_hf(key, SD1_TEXT),
            (Component::TextEncoder, CheckpointKind::Sd2) => {
                sd_clip::ldm::map_open_clip(key, SD2_TEXT, &self.configs.text)
            }
            (Component::TextEncoder, CheckpointKind::Sdxl) => sd_clip::ldm::map_hf(key, XL_TEXT_1),
            (Component::TextEncoder2, CheckpointKind::Sdxl) => match &self.configs.text_2 {
                Some(config) => sd_clip::ldm::map_open_clip(key, XL_TEXT_2, config),
                None => KeyMap::Skip,
            },
            (Component::TextEncoder2, _) => KeyMap::Skip,
        }
    }
}

/// The built-in diffusers configs of a family's full-size model, keyed by
/// component (`unet`, `vae`, `text_encoder`[, `text_encoder_2`], `scheduler`).
/// They are the configs of the repos diffusers' `from_single_file` falls back
/// to for a file without a config (its `DIFFUSERS_DEFAULT_PIPELINE_PATHS`):
/// SD1 -> stable-diffusion-v1-5 (inpainting: its 9-channel UNet), SD2 ->
/// stable-diffusion-2-1 (768 pixels, v-prediction, whether the file is the
/// 512 base or the 768-v model: name a config folder for the base), SD2
/// inpainting -> stable-diffusion-2-inpainting (512, epsilon), SDXL -> the
/// SDXL base.
pub fn preset(detected: Detected) -> Value {
    let text = match (detected.kind, detected.inpainting) {
        (CheckpointKind::Sd1, _) => include_str!("presets/sd15.json"),
        (CheckpointKind::Sd2, false) => include_str!("presets/sd21.json"),
        (CheckpointKind::Sd2, true) => include_str!("presets/sd2_inpainting.json"),
        (CheckpointKind::Sdxl, _) => include_str!("presets/sdxl.json"),
    };
    serde_json::from_str(text).expect("the embedded presets are valid JSON")
}

fn configs(detected: Detected, config_dir: Option<&Path>) -> Result<Configs> {
    let text_config = |value: &Value| -> Result<ClipTextConfig> {
        Ok(ClipTextConfig::from_json_str(&value.to_string())?)
    };
    let xl = detected.kind == CheckpointKind::Sdxl;
    let mut configs = match config_dir {
        Some(dir) => Configs {
            unet: UNetConfig::from_file(dir.join("unet/config.json"))?,
            vae: VaeConfig::from_file(dir.join("vae/config.json"))?,
            text: ClipTextConfig::from_file(dir.join("text_encoder/config.json"))?,
            text_2: if xl {
                Some(ClipTextConfig::from_file(
                    dir.join("text_encoder_2/config.json"),
                )?)
            } else {
                None
            },
            scheduler: SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))?,
        },
        None => {
            let p = preset(detected);
            Configs {
                unet: UNetConfig::from_json_str(&p["unet"].to_string())?,
                vae: VaeConfig::from_json_str(&p["vae"].to_string())?,
                text: text_config(&p["text_encoder"])?,
                text_2: if xl {
                    Some(text_config(&p["text_encoder_2"])?)
                } else {
                    None
                },
                scheduler: SchedulerConfig::from_json_str(&p["scheduler"].to_string())?,
            }
        }
    };
    if detected.inpainting {
        configs.unet.in_channels = 9;
    }
    Ok(configs)
}

/// Loads every component of a single-file checkpoint (SD3's through
/// `single_file_sd3`, with T5 and the encoders of their own files as
/// `encoders` says).
pub(crate) fn load(
    path: &Path,
    config_dir: Option<&Path>,
    devices: Devices,
    dtype: Kind,
    encoders: (crate::t5::T5Loading, &EncoderFiles),
) -> Result<Components> {
    let file = MappedFile::open(path)?;
    let (shapes, prefix) = crate::denoiser_file::with_prefix(file.shapes()?);
    if crate::single_file_sd3::is_sd3(&shapes) {
        drop(file);
        let (shapes, placement) = ((shapes, prefix), (devices, dtype));
        return crate::single_file_sd3::load(path, shapes, config_dir, placement, encoders);
    }
    if sd_flux::bfl::is_flux(shapes.keys()) {
        drop(file);
        let placement = (devices, dtype);
        return crate::denoiser_file::load_flux_transformer(path, config_dir, placement, encoders);
    }
    if crate::denoiser_file::is_unet_only(&shapes) {
        drop(file);
        let placement = (devices, dtype);
        return crate::denoiser_file::load_unet_only(path, prefix, config_dir, placement, encoders);
    }
    let own = encoders.1;
    if own.clip_l.is_some() || own.clip_g.is_some() || own.t5.is_some() {
        return Err(PipelineError::model(
            path,
            "text encoders from files of their own (--clip-l, --clip-g, --t5) are read for SD3 \
             single files, UNet-only files and diffusers folders; this checkpoint has its own",
        ));
    }
    let detected = detect(&file)?;
    drop(file);
    let plan = Plan::new(detected, config_dir)?;
    let configs = &plan.configs;
    let files = [path.to_path_buf()];
    let tokenizer = |sub: &str, pad: &str| -> Result<ClipTokenizer> {
        match config_dir {
            Some(dir) => Ok(ClipTokenizer::from_folder(
                dir.join(format!("tokenizer{sub}")),
            )?),
            None => Ok(ClipTokenizer::builtin(pad)?),
        }
    };
    let text = |config: &ClipTextConfig, component: Component| -> Result<Frozen<ClipTextModel>> {
        let model = ClipTextModel::from_files(config, &files, devices.text_encoder, dtype, &|k| {
            plan.map(component, k)
        })?;
        Ok(Frozen::new(model))
    };
    let pad = if detected.kind == CheckpointKind::Sd2 {
        "!"
    } else {
        sd_clip::tokenizer::EOS
    };
    let tokenizer_1 = tokenizer("", pad)?;
    let text_encoder = text(&configs.text, Component::TextEncoder)?;
    let second = match &configs.text_2 {
        Some(config) if detected.kind == CheckpointKind::Sdxl => Some((
            tokenizer("_2", "!")?,
            text(config, Component::TextEncoder2)?,
        )),
        _ => None,
    };
    let unet =
        UNet2DConditionModel::from_files(&configs.unet, &files, devices.unet, dtype, &|k| {
            plan.map(Component::UNet, k)
        })?;
    let vae = match &own.vae {
        Some(file) => crate::encoder_files::load_vae(file, &configs.vae, (devices.vae, dtype))?,
        None => AutoencoderKL::from_files(&configs.vae, &files, devices.vae, dtype, &|k| {
            plan.map(Component::Vae, k)
        })?,
    };
    let family = match detected.kind {
        CheckpointKind::Sdxl => ModelFamily::StableDiffusionXl,
        _ => ModelFamily::StableDiffusion,
    };
    Ok(Components {
        source: path.to_path_buf(),
        index: ModelIndex {
            class_name: format!(
                "single-file {:?}{}",
                detected.kind,
                if detected.inpainting {
                    " inpainting"
                } else {
                    ""
                }
            ),
            family,
            force_zeros_for_empty_prompt: family == ModelFamily::StableDiffusionXl,
        },
        text: (tokenizer_1, text_encoder),
        text_2: second,
        t5: None,
        denoiser: crate::denoiser::Denoiser::UNet(sd_core::shared::Frozen::new(unet)),
        vae,
        scheduler: plan.configs.scheduler.clone(),
    })
}
