//! AUTOMATIC1111's request and response bodies (`/sdapi/v1/txt2img`,
//! `/sdapi/v1/img2img`), checked into a job. Fields A1111 has and
//! this server does not use (`restore_faces`, `alwayson_scripts`, ...) are
//! accepted and ignored, so existing clients work unchanged.

use base64::Engine;
use std::path::Path;

use sd_pipeline::{LoraSpec, SamplerKind};
use serde::{Deserialize, Serialize};

use crate::config::Limits;
use crate::error::ApiError;
use crate::job::{JobSpec, Source};

/// A1111's txt2img/img2img body (img2img adds the image fields).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct GenerateRequest {
    /// The prompt; `<lora:NAME:SCALE>` tags merge LoRAs from `--lora-dir`.
    pub prompt: String,
    /// The negative prompt ("" for none).
    pub negative_prompt: String,
    /// Denoising steps (default 20).
    pub steps: usize,
    /// Classifier-free guidance (default 7).
    pub cfg_scale: f64,
    /// -1: a random seed.
    pub seed: i64,
    /// `None`: the model's native size.
    pub width: Option<u32>,
    /// As `width`.
    pub height: Option<u32>,
    /// A1111 names ("Euler a", "DPM++ 2M", ...) or this project's CLI names.
    pub sampler_name: Option<String>,
    /// "Automatic" or "Karras" (with DPM++ 2M).
    pub scheduler: Option<String>,
    /// Images per run (one UNet batch).
    pub batch_size: usize,
    /// Runs, one after another.
    pub n_iter: usize,
    /// A1111's "Clip skip": 1 (or 0) uses the last layer, 2 the one before.
    pub clip_skip: Option<usize>,
    /// A1111 sets clip skip here (`CLIP_stop_at_last_layers`).
    pub override_settings: serde_json::Map<String, serde_json::Value>,
    /// img2img: how much of the schedule runs, in (0, 1] (default 0.75).
    pub denoising_strength: f64,
    /// img2img: the image (base64, optionally as a data URL).
    pub init_images: Vec<String>,
    /// img2img: an inpainting mask (base64; white is repainted).
    pub mask: Option<String>,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        GenerateRequest {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 20,
            cfg_scale: 7.0,
            seed: -1,
            width: None,
            height: None,
            sampler_name: None,
            scheduler: None,
            batch_size: 1,
            n_iter: 1,
            clip_skip: None,
            override_settings: Default::default(),
            denoising_strength: 0.75,
            init_images: Vec::new(),
            mask: None,
        }
    }
}

/// A1111's response: base64 PNGs, the parameters as understood, and `info`
/// (a JSON string, as A1111 sends it) with the seeds used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateResponse {
    /// Base64 PNGs, with the parameters in their text chunks.
    pub images: Vec<String>,
    /// The request's parameters as the server understood them.
    pub parameters: serde_json::Value,
    /// A JSON object as a string: `seed`, `all_seeds`, `infotexts`, `job_id`, ...
    pub info: String,
}

/// `sampler_name` + `scheduler` to a sampler; `None`: the model's own.
fn sampler(name: Option<&str>, scheduler: Option<&str>) -> Result<Option<SamplerKind>, ApiError> {
    let kind = match name.map(str::trim).filter(|n| !n.is_empty()) {
        None => None,
        Some(name) => Some(SamplerKind::from_any_name(name).map_err(|_| {
            let known: Vec<&str> = SamplerKind::A1111_NAMES.iter().map(|(n, _)| *n).collect();
            ApiError::field(
                "sampler_name",
                format!("unknown sampler {name:?}; known: {}", known.join(", ")),
            )
        })?),
    };
    match scheduler.map(str::trim) {
        None | Some("") => Ok(kind),
        Some(s) if s.eq_ignore_ascii_case("automatic") => Ok(kind),
        Some(s) if s.eq_ignore_ascii_case("karras") => match kind {
            Some(SamplerKind::DpmPlusPlus2M | SamplerKind::DpmPlusPlus2MKarras) => {
                Ok(Some(SamplerKind::DpmPlusPlus2MKarras))
            }
            _ => Err(ApiError::field(
                "scheduler",
                "Karras sigmas are available with sampler_name \"DPM++ 2M\"",
            )),
        },
        Some(other) => Err(ApiError::field(
            "scheduler",
            format!("unknown scheduler {other:?}; use \"Automatic\" or \"Karras\""),
        )),
    }
}

/// `image` at `size` (Lanczos), or as it is when it has that size.
fn fit(image: image::DynamicImage, (width, height): (u32, u32)) -> image::DynamicImage {
    if image.width() == width && image.height() == height {
        return image;
    }
    image.resize_exact(
        width.max(1),
        height.max(1),
        image::imageops::FilterType::Lanczos3,
    )
}

/// A base64 image (a `data:image/...;base64,` prefix allowed).
fn decode_image(field: &str, text: &str) -> Result<image::DynamicImage, ApiError> {
    let data = match text.split_once(";base64,") {
        Some((prefix, data)) if prefix.starts_with("data:") => data,
        _ => text,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiError::field(field, format!("not base64: {e}")))?;
    image::load_from_memory(&bytes)
        .map_err(|e| ApiError::field(field, format!("not an image this server reads: {e}")))
}

impl GenerateRequest {
    /// Checks every field against `limits`, finds the prompt's LoRA files
    /// in `lora_dir` and decodes the images; `img2img` says which endpoint
    /// the body came to.
    pub(crate) fn to_spec(
        &self,
        limits: &Limits,
        lora_dir: Option<&Path>,
        img2img: bool,
    ) -> Result<JobSpec, ApiError> {
        if self.steps == 0 || self.steps > limits.max_steps {
            return Err(ApiError::field(
                "steps",
                format!("{} is outside 1..={}", self.steps, limits.max_steps),
            ));
        }
        if !self.cfg_scale.is_finite() || self.cfg_scale < 0.0 || self.cfg_scale > 100.0 {
            return Err(ApiError::field(
                "cfg_scale",
                format!("{} is outside 0..=100", self.cfg_scale),
            ));
        }
        for (field, value) in [("width", self.width), ("height", self.height)] {
            if let Some(v) = value {
                if v == 0 || v % 8 != 0 || v > limits.max_size {
                    return Err(ApiError::field(
                        field,
                        format!("{v} is not a multiple of 8 in 8..={}", limits.max_size),
                    ));
                }
            }
        }
        for (field, value) in [("batch_size", self.batch_size), ("n_iter", self.n_iter)] {
            if value == 0 {
                return Err(ApiError::field(field, "at least 1"));
            }
        }
        let images = self.batch_size.saturating_mul(self.n_iter);
        if images > limits.max_images {
            return Err(ApiError::field(
                "batch_size",
                format!(
                    "batch_size {} x n_iter {} = {images} images, over the limit {}",
                    self.batch_size, self.n_iter, limits.max_images
                ),
            ));
        }
        if self.seed < -1 {
            return Err(ApiError::field(
                "seed",
                format!("{}: use -1 (random) or a seed >= 0", self.seed),
            ));
        }
        let sampler = sampler(self.sampler_name.as_deref(), self.scheduler.as_deref())?;
        let (text_prompt, loras) = loras(&self.prompt, lora_dir)?;
        let source = if img2img {
            let [init] = self.init_images.as_slice() else {
                return Err(ApiError::field(
                    "init_images",
                    format!("give exactly one image ({} given)", self.init_images.len()),
                ));
            };
            let strength = self.denoising_strength;
            if !(strength > 0.0 && strength <= 1.0) {
                return Err(ApiError::field(
                    "denoising_strength",
                    format!("{strength} is outside (0, 1]"),
                ));
            }
            let image = decode_image("init_images", init)?;
            let mask = match &self.mask {
                Some(mask) => Some(decode_image("mask", mask)?),
                None => None,
            };
            // A1111's "Just resize": the image (and mask) to the requested
            // size; without one, to the image's own size in whole units of 8.
            let size = (
                self.width.unwrap_or(image.width() / 8 * 8),
                self.height.unwrap_or(image.height() / 8 * 8),
            );
            let image = fit(image, size).to_rgb8();
            let mask = mask.map(|m| fit(m, size).to_luma8());
            Source::Image {
                image,
                mask,
                strength,
            }
        } else {
            Source::Noise
        };
        let (width, height) = match &source {
            Source::Image { image, .. } => (Some(image.width()), Some(image.height())),
            Source::Noise => (self.width, self.height),
        };
        Ok(JobSpec {
            prompt: self.prompt.clone(),
            text_prompt,
            loras,
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            seed: (self.seed >= 0).then_some(self.seed as u64),
            width,
            height,
            sampler,
            batch_size: self.batch_size,
            n_iter: self.n_iter,
            clip_skip: self.clip_skip()?,
            source,
        })
    }

    /// Layers to skip from the last: A1111's setting minus one.
    fn clip_skip(&self) -> Result<usize, ApiError> {
        let from_settings = self.override_settings.get("CLIP_stop_at_last_layers");
        let value = match (self.clip_skip, from_settings) {
            (Some(v), _) => v,
            (None, Some(v)) => v.as_u64().ok_or_else(|| {
                ApiError::field(
                    "override_settings.CLIP_stop_at_last_layers",
                    format!("{v} is not a whole number"),
                )
            })? as usize,
            (None, None) => 1,
        };
        if value > 12 {
            return Err(ApiError::field(
                "clip_skip",
                format!("{value} is outside 1..=12"),
            ));
        }
        Ok(value.saturating_sub(1))
    }
}

/// The prompt without its `<lora:NAME:SCALE>` tags, and their files.
fn loras(prompt: &str, lora_dir: Option<&Path>) -> Result<(String, Vec<LoraSpec>), ApiError> {
    let (text, tags) =
        sd_lora::tags::take_tags(prompt).map_err(|e| ApiError::field("prompt", e.to_string()))?;
    if tags.is_empty() {
        return Ok((text, Vec::new()));
    }
    let Some(dir) = lora_dir else {
        return Err(ApiError::field(
            "prompt",
            "has <lora:...> tags, but this server was started without --lora-dir",
        ));
    };
    let specs = tags
        .iter()
        .map(|tag| {
            sd_lora::tags::find_in(dir, &tag.name)
                .map(|path| LoraSpec::new(path, tag.scale))
                .map_err(|e| ApiError::field("prompt", e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    Ok((text, specs))
}

/// Parses a JSON body; a wrong type names the field (`steps`, `width`, ...).
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            ApiError {
                status: 400,
                ..ApiError::field("body", format!("malformed JSON: {inner}"))
            }
        } else {
            ApiError::field(path, inner.to_string())
        }
    })
}
