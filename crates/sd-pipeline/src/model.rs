//! What a diffusers model folder holds, from its `model_index.json`.

use std::path::Path;

use serde_json::Value;

use crate::error::{PipelineError, Result};

/// The families this pipeline runs; the conditioning and the denoiser
/// differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelFamily {
    /// SD1.x and SD2.x: one CLIP encoder, last layer (after the final norm).
    StableDiffusion,
    /// SDXL: two encoders' penultimate layers, pooled text and size conditioning.
    StableDiffusionXl,
    /// SD3 / SD3.5: CLIP-L, CLIP-G and (optional) T5 into a multimodal
    /// diffusion transformer, sampled by flow matching.
    StableDiffusion3,
    /// FLUX.1 (dev, schnell): CLIP-L's pooled output and T5 into a
    /// rectified-flow transformer over packed 2x2 latent patches.
    Flux,
}

impl ModelFamily {
    /// Whether the denoiser is a transformer sampled by flow matching
    /// (velocity) rather than a UNet (noise or v on a beta schedule).
    pub fn is_flow_matching(self) -> bool {
        matches!(self, ModelFamily::StableDiffusion3 | ModelFamily::Flux)
    }

    /// The suffix of T5's folders (`tokenizer_3`/`text_encoder_3` in SD3,
    /// `_2` in FLUX); `None` for families without T5.
    pub fn t5_suffix(self) -> Option<&'static str> {
        match self {
            ModelFamily::StableDiffusion3 => Some("_3"),
            ModelFamily::Flux => Some("_2"),
            _ => None,
        }
    }
}

/// What a folder's model_index.json says the pipeline is.
#[derive(Debug, Clone)]
pub struct ModelIndex {
    /// The pipeline class (`StableDiffusionPipeline`, ...).
    pub class_name: String,
    /// SD (1.x, 2.x) or SDXL.
    pub family: ModelFamily,
    /// SDXL: negative embeddings are zeros when no negative prompt is given.
    pub force_zeros_for_empty_prompt: bool,
}

/// The components every supported folder must have.
pub const REQUIRED: [&str; 5] = ["tokenizer", "text_encoder", "unet", "vae", "scheduler"];
/// The components SDXL folders have on top of SD ones.
pub const REQUIRED_XL: [&str; 2] = ["tokenizer_2", "text_encoder_2"];
/// The components every SD3 folder must have (T5's `tokenizer_3` and
/// `text_encoder_3` are optional, as in diffusers).
pub const REQUIRED_SD3: [&str; 7] = [
    "tokenizer",
    "text_encoder",
    "tokenizer_2",
    "text_encoder_2",
    "transformer",
    "vae",
    "scheduler",
];

/// The components every FLUX folder must have: SD3's folder names (with
/// T5 as `text_encoder_2`, and no third encoder).
pub const REQUIRED_FLUX: [&str; 7] = REQUIRED_SD3;

impl ModelIndex {
    /// Reads `dir/model_index.json`; errors name a missing component.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("model_index.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            PipelineError::model(
                &path,
                format!("cannot read ({e}); is this a diffusers model folder?"),
            )
        })?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| PipelineError::model(&path, e.to_string()))?;
        let class_name = value["_class_name"]
            .as_str()
            .ok_or_else(|| PipelineError::model(&path, "no \"_class_name\""))?
            .to_string();
        let family = match class_name.as_str() {
            "StableDiffusionPipeline"
            | "StableDiffusionImg2ImgPipeline"
            | "StableDiffusionInpaintPipeline" => ModelFamily::StableDiffusion,
            "StableDiffusionXLPipeline"
            | "StableDiffusionXLImg2ImgPipeline"
            | "StableDiffusionXLInpaintPipeline" => ModelFamily::StableDiffusionXl,
            "StableDiffusion3Pipeline"
            | "StableDiffusion3Img2ImgPipeline"
            | "StableDiffusion3InpaintPipeline" => ModelFamily::StableDiffusion3,
            "FluxPipeline" => ModelFamily::Flux,
            other => {
                return Err(PipelineError::model(
                    &path,
                    format!(
                    "\"_class_name\" {other} is not a Stable Diffusion 1/2/XL/3 or FLUX pipeline"
                ),
                ))
            }
        };
        let needed: Vec<&str> = match family {
            ModelFamily::StableDiffusion => REQUIRED.to_vec(),
            ModelFamily::StableDiffusionXl => [&REQUIRED[..], &REQUIRED_XL[..]].concat(),
            ModelFamily::StableDiffusion3 => REQUIRED_SD3.to_vec(),
            ModelFamily::Flux => REQUIRED_FLUX.to_vec(),
        };
        for component in needed {
            if !dir.join(component).is_dir() {
                return Err(PipelineError::model(
                    dir.join(component),
                    "missing component folder",
                ));
            }
        }
        Ok(ModelIndex {
            class_name,
            family,
            force_zeros_for_empty_prompt: value["force_zeros_for_empty_prompt"]
                .as_bool()
                .unwrap_or(false),
        })
    }
}
