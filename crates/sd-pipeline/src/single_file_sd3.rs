//! Stability's SD3/SD3.5 single files (`sd3.5_medium.safetensors`, ...):
//! the transformer under `model.diffusion_model.*` (Stability's names,
//! mapped at load time by `sd_mmdit::sai`), the VAE under
//! `first_stage_model.*` (the LDM layout), and the text encoders under
//! `text_encoders.{clip_l,clip_g,t5xxl}.transformer.*` (transformers'
//! names) when the file has them. Configs come from `config_dir` (a
//! diffusers SD3 folder) or the built-in SD3.5 presets, the transformer's
//! from the file's shapes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sd_clip::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use sd_mmdit::{sai, MmditConfig, SD3Transformer2DModel};
use sd_scheduler::SchedulerConfig;
use sd_t5::{T5Config, T5Keys, T5Tokenizer};
use sd_vae::{AutoencoderKL, VaeConfig};
use serde_json::Value;
use tch::Kind;

use crate::components::{Components, Devices, TextTower};
use crate::denoiser::Denoiser;
use crate::encoder_files::{self, EncoderFiles};
use crate::error::{PipelineError, Result};
use crate::model::{ModelFamily, ModelIndex};
use crate::t5::{load_t5, T5Encoder, T5Loading, T5Tower};

const CLIP_L: &str = "text_encoders.clip_l.transformer.";
const CLIP_G: &str = "text_encoders.clip_g.transformer.";
const T5: &str = "text_encoders.t5xxl.transformer.";
const VAE: &str = "first_stage_model.";

/// Whether the file's tensors are an SD3/SD3.5 checkpoint in Stability's layout.
pub(crate) fn is_sd3(shapes: &BTreeMap<String, Vec<i64>>) -> bool {
    sai::is_sd3(shapes.keys())
}

/// Where the configs come from, and the one error for a missing part.
struct Source<'a> {
    path: &'a Path,
    files: [PathBuf; 1],
    shapes: BTreeMap<String, Vec<i64>>,
    config_dir: Option<&'a Path>,
    preset: Value,
}

impl Source<'_> {
    fn has(&self, prefix: &str) -> bool {
        self.shapes.keys().any(|k| k.starts_with(prefix))
    }

    /// `config_dir/{sub}/config.json`, or the preset's `sub`.
    fn config_text(&self, sub: &str) -> Result<String> {
        match self.config_dir {
            Some(dir) => {
                let path = dir.join(sub).join("config.json");
                std::fs::read_to_string(&path)
                    .map_err(|e| PipelineError::model(&path, format!("cannot read ({e})")))
            }
            None => Ok(self.preset[sub].to_string()),
        }
    }

    /// A part the file lacks and no `config_dir` supplies.
    fn missing(&self, what: &str) -> PipelineError {
        PipelineError::model(
            self.path,
            format!(
                "an SD3 single file without {what}: give config_dir, a diffusers SD3 folder \
                 that has it"
            ),
        )
    }
}

/// Loads every component of an SD3 single file, T5 as `t5` says; `prefix`
/// makes a file key a checkpoint key (a transformer-only file may lack it).
pub(crate) fn load(
    path: &Path,
    (shapes, prefix): (BTreeMap<String, Vec<i64>>, &str),
    config_dir: Option<&Path>,
    (devices, dtype): (Devices, Kind),
    (t5, files): (T5Loading, &EncoderFiles),
) -> Result<Components> {
    let with_t5 = t5 != T5Loading::Skip;
    let source = Source {
        path,
        files: [path.to_path_buf()],
        shapes,
        config_dir,
        preset: serde_json::from_str(include_str!("presets/sd35.json"))
            .expect("the embedded preset is valid JSON"),
    };
    if with_t5 && (source.has(T5) || files.t5.is_some()) && config_dir.is_none() {
        return Err(PipelineError::model(
            path,
            "T5's tokenizer is not in single files: give config_dir (a diffusers SD3 folder \
             with tokenizer_3/), or leave T5 out (t5 false, --t5 none)",
        ));
    }
    let transformer_config = match config_dir {
        Some(dir) => MmditConfig::from_file(dir.join("transformer/config.json"))?,
        None => sai::config_from_shapes(&source.shapes)?,
    };
    let layers = transformer_config.num_layers;
    let transformer = SD3Transformer2DModel::from_files(
        &transformer_config,
        &source.files,
        devices.unet,
        dtype,
        &|k| sai::map(&format!("{prefix}{k}"), layers),
    )?;
    Ok(Components {
        source: path.to_path_buf(),
        index: ModelIndex {
            class_name: "single-file Sd3".into(),
            family: ModelFamily::StableDiffusion3,
            force_zeros_for_empty_prompt: false,
        },
        text: clip(
            &source,
            (CLIP_L, files.clip_l.as_deref()),
            "",
            devices,
            dtype,
        )?,
        text_2: Some(clip(
            &source,
            (CLIP_G, files.clip_g.as_deref()),
            "_2",
            devices,
            dtype,
        )?),
        t5: load_t5_part(&source, (t5, files.t5.as_deref()), devices, dtype)?,
        denoiser: Denoiser::Transformer(Frozen::new(transformer)),
        vae: vae(&source, files.vae.as_deref(), devices, dtype)?,
        scheduler: match config_dir {
            Some(dir) => SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))?,
            None => SchedulerConfig::from_json_str(&source.preset["scheduler"].to_string())?,
        },
    })
}

/// CLIP-L (`sub` "") or CLIP-G ("_2") from a file of its own, else from
/// the checkpoint, else from `config_dir`. Stability's files carry no
/// CLIP-L projection: an identity takes its place, as in diffusers.
fn clip(
    source: &Source<'_>,
    (prefix, own_file): (&str, Option<&Path>),
    sub: &str,
    devices: Devices,
    dtype: Kind,
) -> Result<TextTower> {
    let tokenizer = match source.config_dir {
        Some(dir) => ClipTokenizer::from_folder(dir.join(format!("tokenizer{sub}")))?,
        // SD3's CLIP-G pads with "!" (as SDXL's), CLIP-L with its end token
        None if sub.is_empty() => ClipTokenizer::builtin(sd_clip::tokenizer::EOS)?,
        None => ClipTokenizer::builtin("!")?,
    };
    let folder = format!("text_encoder{sub}");
    if let Some(file) = own_file {
        let config = ClipTextConfig::from_json_str(&source.config_text(&folder)?)?;
        let encoder = (devices.text_encoder, dtype);
        let model = encoder_files::load_clip(file, config, sub.is_empty(), encoder)?;
        return Ok((tokenizer, Frozen::new(model)));
    }
    if !source.has(prefix) {
        let dir = source.config_dir.ok_or_else(|| source.missing(prefix))?;
        let model =
            ClipTextModel::from_folder(dir.join(&folder), devices.text_encoder, dtype, None)?;
        return Ok((tokenizer, Frozen::new(model)));
    }
    let mut config = ClipTextConfig::from_json_str(&source.config_text(&folder)?)?;
    let projected = source
        .shapes
        .contains_key(&format!("{prefix}text_projection.weight"));
    if !projected {
        config.architectures = Some(vec!["CLIPTextModel".into()]);
    }
    let mut model =
        ClipTextModel::from_files(&config, &source.files, devices.text_encoder, dtype, &|k| {
            sd_clip::ldm::map_hf(k, prefix)
        })?;
    if !projected {
        model.add_identity_projection();
    }
    Ok((tokenizer, Frozen::new(model)))
}

/// T5 from a file of its own or the checkpoint (its tokenizer from
/// `config_dir`: the files carry none), else from `config_dir`, else none
/// (zeros in its place).
fn load_t5_part(
    source: &Source<'_>,
    (loading, own_file): (T5Loading, Option<&Path>),
    devices: Devices,
    dtype: Kind,
) -> Result<Option<T5Tower>> {
    if loading == T5Loading::Skip {
        return Ok(None);
    }
    if !source.has(T5) && own_file.is_none() {
        return match source.config_dir {
            Some(dir) if dir.join("text_encoder_3").is_dir() => load_t5(
                (dir, "_3"),
                loading,
                (devices.text_encoder, dtype),
                None,
                None,
            ),
            _ => Ok(None),
        };
    }
    // (checked first thing in `load`)
    let dir = source
        .config_dir
        .ok_or_else(|| source.missing("T5's tokenizer"))?;
    let tokenizer_dir = dir.join("tokenizer_3");
    let tokenizer = T5Tokenizer::from_folder(&tokenizer_dir)
        .map_err(|e| PipelineError::model(&tokenizer_dir, e.to_string()))?;
    let config = T5Config::parse(&source.config_text("text_encoder_3")?, source.path)?;
    let (files, keys) = match own_file {
        Some(file) => (vec![file.to_path_buf()], encoder_files::t5_keys(file)?),
        None => (source.files.to_vec(), T5Keys::Prefixed(T5.into())),
    };
    let encoder = T5Encoder::load(loading, &config, files, keys, (devices.text_encoder, dtype))?;
    Ok(encoder.map(|e| (tokenizer, e)))
}

/// The VAE from a file of its own, else the file's `first_stage_model.*`, else
/// `config_dir`'s.
fn vae(
    source: &Source<'_>,
    own: Option<&Path>,
    devices: Devices,
    dtype: Kind,
) -> Result<AutoencoderKL> {
    if let Some(file) = own {
        let config = VaeConfig::from_json_str(&source.config_text("vae")?)?;
        return crate::encoder_files::load_vae(file, &config, (devices.vae, dtype));
    }
    if !source.has(VAE) {
        let dir = source.config_dir.ok_or_else(|| source.missing(VAE))?;
        return Ok(AutoencoderKL::from_folder(
            dir.join("vae"),
            devices.vae,
            dtype,
            None,
        )?);
    }
    let config = VaeConfig::from_json_str(&source.config_text("vae")?)?;
    let blocks = config.block_out_channels.len();
    Ok(AutoencoderKL::from_files(
        &config,
        &source.files,
        devices.vae,
        dtype,
        &|k| sd_vae::ldm::map(k, blocks),
    )?)
}
