//! Text encoders and VAEs in files of their own, as ComfyUI and A1111 users
//! keep them beside a checkpoint that has none (Stability's
//! `sd3.5_large.safetensors` holds only the transformer and the VAE; Black
//! Forest Labs' `flux1-dev.safetensors` only the transformer):
//! `clip_l.safetensors`, `clip_g.safetensors`, `t5xxl_fp16.safetensors`,
//! `ae.safetensors`, `vae-ft-mse-840000-ema-pruned.safetensors`. Each file's
//! layout is found from its keys, under whatever prefix it uses:
//! transformers' CLIP or OpenCLIP's, transformers' T5 or llama.cpp's
//! (city96's GGUF T5 encoders), diffusers' VAE or the LDM one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sd_clip::{ClipTextConfig, ClipTextModel};
use sd_core::weights::{KeyMap, MappedFile};
use sd_core::DiffusersModel;
use sd_t5::T5Keys;
use sd_vae::{AutoencoderKL, VaeConfig};
use tch::{Device, Kind};

use crate::error::{PipelineError, Result};

/// Files that replace (or supply) a model's text encoders and VAE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncoderFiles {
    /// The VAE (its config still comes from the model).
    pub vae: Option<PathBuf>,
    /// CLIP-L (the first text encoder).
    pub clip_l: Option<PathBuf>,
    /// CLIP-G (SDXL's and SD3's second).
    pub clip_g: Option<PathBuf>,
    /// T5-XXL (SD3's third).
    pub t5: Option<PathBuf>,
}

impl EncoderFiles {
    /// None: every encoder comes from the model.
    pub fn new() -> Self {
        Self::default()
    }

    /// CLIP-L from `path`.
    pub fn clip_l(mut self, path: impl Into<PathBuf>) -> Self {
        self.clip_l = Some(path.into());
        self
    }

    /// CLIP-G from `path`.
    pub fn clip_g(mut self, path: impl Into<PathBuf>) -> Self {
        self.clip_g = Some(path.into());
        self
    }

    /// T5 from `path`.
    pub fn t5(mut self, path: impl Into<PathBuf>) -> Self {
        self.t5 = Some(path.into());
        self
    }

    /// The VAE from `path`.
    pub fn vae(mut self, path: impl Into<PathBuf>) -> Self {
        self.vae = Some(path.into());
        self
    }

    /// Whether any part comes from a file of its own.
    pub fn any(&self) -> bool {
        self.clip_l.is_some() || self.clip_g.is_some() || self.t5.is_some() || self.vae.is_some()
    }
}

/// The part of a key before `tail`, for the first key that ends so.
fn prefix_before(shapes: &BTreeMap<String, Vec<i64>>, tail: &str) -> Option<String> {
    shapes
        .keys()
        .find_map(|k| k.strip_suffix(tail).map(str::to_string))
}

/// A CLIP text tower of `config` from a file of its own. CLIP-L
/// (`is_clip_l`) without a projection in the file gets an identity in its
/// place (as in diffusers, for Stability's CLIP-L); CLIP-G needs its own.
pub(crate) fn load_clip(
    path: &Path,
    mut config: ClipTextConfig,
    is_clip_l: bool,
    (device, dtype): (Device, Kind),
) -> Result<ClipTextModel> {
    let shapes = MappedFile::open(path)?.shapes()?;
    // (transformers 5 saves CLIPTextModel without `text_model.`)
    let hf_prefix = prefix_before(&shapes, "embeddings.token_embedding.weight").map(|p| {
        p.strip_suffix("text_model.")
            .map(str::to_string)
            .unwrap_or(p)
    });
    let map: Box<dyn Fn(&str) -> KeyMap> = match hf_prefix {
        Some(prefix) => {
            let projected = shapes.contains_key(&format!("{prefix}text_projection.weight"));
            if !projected && is_clip_l {
                config.architectures = Some(vec!["CLIPTextModel".into()]);
            }
            Box::new(move |k| sd_clip::ldm::map_hf(k, &prefix))
        }
        None => {
            let prefix = prefix_before(&shapes, "transformer.resblocks.0.attn.in_proj_weight")
                    .ok_or_else(|| {
                        PipelineError::model(
                            path,
                            "not a CLIP text encoder: no text_model.embeddings.token_embedding.weight \
                             (transformers) nor transformer.resblocks.0.attn.in_proj_weight (OpenCLIP)",
                        )
                    })?;
            if !shapes.contains_key(&format!("{prefix}text_projection")) && is_clip_l {
                config.architectures = Some(vec!["CLIPTextModel".into()]);
            }
            let config = config.clone();
            Box::new(move |k| sd_clip::ldm::map_open_clip(k, &prefix, &config))
        }
    };
    let mut model =
        ClipTextModel::from_files(&config, &[path.to_path_buf()], device, dtype, &*map)?;
    model.add_identity_projection();
    Ok(model)
}

/// The key names of a T5 encoder file of its own.
pub(crate) fn t5_keys(path: &Path) -> Result<T5Keys> {
    let shapes = MappedFile::open(path)?.shapes()?;
    if shapes.contains_key("enc.blk.0.attn_q.weight") {
        return Ok(T5Keys::Llama);
    }
    match prefix_before(&shapes, "encoder.block.0.layer.0.SelfAttention.q.weight") {
        Some(prefix) if prefix.is_empty() => Ok(T5Keys::Transformers),
        Some(prefix) => Ok(T5Keys::Prefixed(prefix)),
        None => Err(PipelineError::model(
            path,
            "not a T5 encoder: no encoder.block.0.layer.0.SelfAttention.q.weight \
             (transformers) nor enc.blk.0.attn_q.weight (llama.cpp, GGUF)",
        )),
    }
}

/// A VAE of `config` from a file of its own: diffusers' names
/// (`decoder.up_blocks.…`) or the LDM ones A1111's VAE files and BFL's
/// `ae.safetensors` use (`decoder.up.…`), under any prefix
/// (`first_stage_model.`, `vae.`); keys outside the VAE (an EMA's decay, a
/// training loss's) are left out.
pub(crate) fn load_vae(
    path: &Path,
    config: &VaeConfig,
    (device, dtype): (Device, Kind),
) -> Result<AutoencoderKL> {
    let shapes = MappedFile::open(path)?.shapes()?;
    let prefix = prefix_before(&shapes, "decoder.conv_in.weight")
        .ok_or_else(|| PipelineError::model(path, "not a VAE: no decoder.conv_in.weight"))?;
    let ldm = !shapes.keys().any(|k| k.contains("decoder.up_blocks."));
    let blocks = config.block_out_channels.len();
    let map = move |key: &str| {
        let Some(rest) = key.strip_prefix(&prefix) else {
            return KeyMap::Skip;
        };
        let part = rest.split('.').next().unwrap_or_default();
        match (part, ldm) {
            ("encoder" | "decoder" | "quant_conv" | "post_quant_conv", true) => {
                sd_vae::ldm::map(&format!("{}{rest}", sd_vae::ldm::PREFIX), blocks)
            }
            ("encoder" | "decoder" | "quant_conv" | "post_quant_conv", false) => {
                KeyMap::To(rest.to_string())
            }
            _ => KeyMap::Skip,
        }
    };
    let files = [path.to_path_buf()];
    Ok(AutoencoderKL::from_files(
        config, &files, device, dtype, &map,
    )?)
}
