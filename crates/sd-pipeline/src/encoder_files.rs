//! Text encoders in files of their own, as ComfyUI users keep SD3's beside
//! a checkpoint that has none (Stability's `sd3.5_large.safetensors` and
//! `sd3.5_medium.safetensors` hold only the transformer and the VAE):
//! `clip_l.safetensors`, `clip_g.safetensors`, `t5xxl_fp16.safetensors`.
//! Each file's layout is found from its keys, under whatever prefix it
//! uses: transformers' CLIP or OpenCLIP's, transformers' T5 or llama.cpp's
//! (city96's GGUF T5 encoders).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sd_clip::{ClipTextConfig, ClipTextModel};
use sd_core::weights::{KeyMap, MappedFile};
use sd_core::DiffusersModel;
use sd_t5::T5Keys;
use tch::{Device, Kind};

use crate::error::{PipelineError, Result};

/// Files that replace (or supply) a model's text encoders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncoderFiles {
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

    /// Whether any encoder comes from a file of its own.
    pub fn any(&self) -> bool {
        self.clip_l.is_some() || self.clip_g.is_some() || self.t5.is_some()
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
    let map: Box<dyn Fn(&str) -> KeyMap> = match prefix_before(
        &shapes,
        "text_model.embeddings.token_embedding.weight",
    ) {
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
