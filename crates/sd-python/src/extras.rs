//! What the constructor loads besides the model, and the Python arguments
//! that become the request's images.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;
use sd_pipeline::front::Source;
use sd_pipeline::{ImagePrompt, LoraSpec, Result, StableDiffusion as Pipeline, TinyVaeUse};

use crate::pil;

/// Options of the constructor that load more than the model.
pub(crate) struct Extras {
    pub loras: Vec<LoraSpec>,
    pub embeddings: Vec<PathBuf>,
    pub controlnets: Vec<(PathBuf, f64)>,
    pub tiny_vae: Option<PathBuf>,
    /// (file, scale); all with `image_encoder`.
    pub ip_adapters: Vec<(PathBuf, f64)>,
    pub image_encoder: Option<PathBuf>,
    /// The UNet and decoder through `sd compile`'s packages, looked up once the LoRAs
    /// are merged (a package holds the weights it was compiled with).
    pub compiled: bool,
}

/// Loads what the constructor names besides the model.
pub(crate) fn load_extras(mut pipeline: Pipeline, extras: &Extras) -> Result<Pipeline> {
    if let Some(dir) = &extras.tiny_vae {
        pipeline.load_tiny_vae(dir, TinyVaeUse::PreviewsAndDecode)?;
    }
    for (path, _) in &extras.controlnets {
        pipeline.load_controlnet(path)?;
    }
    if !extras.ip_adapters.is_empty() {
        let Some(encoder) = &extras.image_encoder else {
            let message =
                "ip_adapters: give image_encoder too (the adapters' CLIP image encoder folder)";
            return Err(sd_pipeline::PipelineError::InvalidInput {
                field: sd_pipeline::front::Field::IpAdapter,
                message: message.into(),
            });
        };
        for (path, _) in &extras.ip_adapters {
            pipeline.load_ip_adapter(path, encoder)?;
        }
    }
    for path in &extras.embeddings {
        pipeline.load_embedding(path, None)?;
    }
    pipeline.set_loras(&extras.loras)?;
    if extras.compiled {
        pipeline.use_compiled_in(&sd_pipeline::compiled::default_cache_dir())?;
    }
    Ok(pipeline)
}

/// The Python arguments' init image, mask and strength.
pub(crate) fn source(
    init_image: Option<&Bound<'_, PyAny>>,
    mask: Option<&Bound<'_, PyAny>>,
    strength: f64,
) -> PyResult<Source> {
    Ok(match (init_image, mask) {
        (None, None) => Source::Noise,
        (None, Some(_)) => return Err(PyValueError::new_err("mask: give init_image too")),
        (Some(image), mask) => Source::Image {
            image: pil::to_rgb(image, "init_image")?,
            mask: mask.map(|m| pil::to_gray(m, "mask")).transpose()?,
            strength,
        },
    })
}

/// `ip_adapter_images`: one entry per loaded adapter, a PIL image or a list
/// of them, at the constructor's scales.
pub(crate) fn image_prompts(
    images: &[Bound<'_, PyAny>],
    scales: &[f64],
) -> PyResult<Vec<ImagePrompt>> {
    if images.len() != scales.len() {
        return Err(PyValueError::new_err(format!(
            "ip_adapter_images: {} entries for {} loaded IP-Adapters (one each, in order)",
            images.len(),
            scales.len()
        )));
    }
    let one = |entry: &Bound<'_, PyAny>| -> PyResult<Vec<image::RgbImage>> {
        match entry.cast::<PyList>() {
            Ok(list) => list
                .iter()
                .map(|i| pil::to_rgb(&i, "ip_adapter_images"))
                .collect(),
            Err(_) => Ok(vec![pil::to_rgb(entry, "ip_adapter_images")?]),
        }
    };
    let pairs = images.iter().zip(scales);
    pairs
        .map(|(entry, scale)| Ok(ImagePrompt::new(one(entry)?).with_scale(*scale)))
        .collect()
}
