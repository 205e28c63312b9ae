//! What a diffusers model folder holds, from its `model_index.json`.

use std::path::Path;

use serde_json::Value;

use crate::error::{PipelineError, Result};

/// The families this pipeline runs; the conditioning differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// SD1.x and SD2.x: one CLIP encoder, last layer (after the final norm).
    StableDiffusion,
    /// SDXL: two encoders' penultimate layers, pooled text and size conditioning.
    StableDiffusionXl,
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
            // Its parts exist (sd-t5, sd-mmdit, flow matching); the pipeline not yet.
            sd3 if sd3.starts_with("StableDiffusion3") => {
                return Err(PipelineError::model(
                    &path,
                    format!("{sd3}: Stable Diffusion 3/3.5 cannot run here yet (see docs/sd3.md for what has landed)"),
                ))
            }
            other => {
                return Err(PipelineError::model(
                    &path,
                    format!("\"_class_name\" {other} is not a Stable Diffusion 1/2/XL pipeline"),
                ))
            }
        };
        let mut needed: Vec<&str> = REQUIRED.to_vec();
        if family == ModelFamily::StableDiffusionXl {
            needed.extend(REQUIRED_XL);
        }
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
