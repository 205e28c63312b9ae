//! AUTOMATIC1111's request body (`/sdapi/v1/txt2img`, `/sdapi/v1/img2img`)
//! as [`Parameters`]: the syntax `sd serve` and the Ray Serve app both
//! speak, mapped in one place. Fields A1111 has and this project does not
//! use (`restore_faces`, `alwayson_scripts`, ...) are accepted and ignored,
//! so existing clients work unchanged.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};
use crate::front::{parse_sampler, BatchSeeds, Field, Parameters, Source};

/// A1111's txt2img/img2img body (img2img adds the image fields).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
#[non_exhaustive]
pub struct GenerateRequest {
    /// The prompt; `<lora:NAME:SCALE>` tags merge LoRAs from the LoRA folder.
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
    /// SD3 (this project's, not A1111's): T5's token count (default 256).
    pub max_sequence_length: Option<usize>,
    /// SD3.5 (this project's): skip-layer guidance on these transformer
    /// blocks at diffusers' defaults (scale 2.8, 1% to 20% of the steps).
    pub skip_layer_guidance: Vec<usize>,
    /// FLUX.1-dev's distilled guidance (Forge's name); when given it is the
    /// guidance the run uses, in place of `cfg_scale` (FLUX takes no CFG).
    pub distilled_cfg_scale: Option<f64>,
    /// FLUX (diffusers' name): true CFG with the negative prompt.
    pub true_cfg_scale: Option<f64>,
    /// txt2img: hires fix (a second pass at a larger size; its strength is
    /// `denoising_strength`).
    pub enable_hr: bool,
    /// Hires fix: the factor (default 2), unless `hr_resize_x`/`_y` are set.
    pub hr_scale: f64,
    /// Hires fix: the width (0: from `hr_scale`, or from the height's ratio).
    pub hr_resize_x: u32,
    /// Hires fix: the height (0: as `hr_resize_x`).
    pub hr_resize_y: u32,
    /// Hires fix: `Latent` (default), `Latent (nearest-exact)`, ...,
    /// `Lanczos`, `Nearest`, or a model of `/sdapi/v1/upscalers`.
    pub hr_upscaler: String,
    /// Hires fix: the second pass's steps (0: `steps`).
    pub hr_second_pass_steps: usize,
    /// Hires fix: the second pass's prompt ("": the prompt).
    pub hr_prompt: String,
    /// Hires fix: the second pass's negative prompt ("": the negative prompt).
    pub hr_negative_prompt: String,
    /// Hires fix: the second pass's sampler (none: the run's).
    pub hr_sampler_name: Option<String>,
    /// This project's: one image prompt per IP-Adapter the server loaded
    /// (`sd serve --ip-adapter`), in their order; none: the adapters are off.
    pub ip_adapter: Vec<IpAdapterPrompt>,
}

/// An image prompt for one of the server's IP-Adapters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[non_exhaustive]
pub struct IpAdapterPrompt {
    /// Its reference image(s), base64 (data URLs allowed).
    pub images: Vec<String>,
    /// The adapter's scale: a number (default 1.0; 0 turns it off) or
    /// diffusers' per-block dict (`{"up": {"block_0": [0.0, 1.0, 0.0]}}`).
    #[serde(default = "one")]
    pub scale: serde_json::Value,
}

fn one() -> serde_json::Value {
    1.0.into()
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
            max_sequence_length: None,
            skip_layer_guidance: Vec::new(),
            distilled_cfg_scale: None,
            true_cfg_scale: None,
            enable_hr: false,
            hr_scale: 2.0,
            hr_resize_x: 0,
            hr_resize_y: 0,
            hr_upscaler: "Latent".into(),
            hr_second_pass_steps: 0,
            hr_prompt: String::new(),
            hr_negative_prompt: String::new(),
            hr_sampler_name: None,
            ip_adapter: Vec::new(),
        }
    }
}

/// The JSON field of A1111's body that sets `field` (what a 422 names).
pub fn json_field(field: Field) -> &'static str {
    match field {
        Field::Guidance => "cfg_scale",
        Field::Strength => "denoising_strength",
        Field::BatchSize => "batch_size",
        Field::Iterations => "n_iter",
        Field::InitImage | Field::Image => "init_images",
        Field::Sampler => "sampler_name",
        Field::SamplerSchedule => "scheduler",
        Field::Lora => "prompt",
        Field::Model => "sd_model_checkpoint",
        other => other.name(),
    }
}

impl GenerateRequest {
    /// The body as parameters (images decoded and, as A1111's "Just
    /// resize", fitted to the requested size); `img2img` says which
    /// endpoint it came to. Each image its own seed, A1111's way.
    pub fn parameters(&self, img2img: bool) -> Result<Parameters> {
        self.parameters_with_upscalers(img2img, &|_| None)
    }

    /// [`parameters`](Self::parameters), with `upscaler` finding the model
    /// file of an `hr_upscaler` name (a server's listed upscalers; a name is
    /// never joined to a path here).
    pub fn parameters_with_upscalers(
        &self,
        img2img: bool,
        upscaler: &dyn Fn(&str) -> Option<std::path::PathBuf>,
    ) -> Result<Parameters> {
        let mut p = Parameters::new(&self.prompt);
        if self.enable_hr && !img2img {
            p.hires = Some(self.hires(upscaler)?);
        }
        p.negative_prompt = self.negative_prompt.clone();
        p.steps = self.steps;
        p.guidance = self.distilled_cfg_scale.unwrap_or(self.cfg_scale);
        p.seed = match self.seed {
            -1 => None,
            seed if seed >= 0 => Some(seed as u64),
            seed => {
                return Err(PipelineError::request(
                    Field::Seed,
                    format!("{seed}: use -1 (random) or a seed >= 0"),
                ))
            }
        };
        p.width = self.width;
        p.height = self.height;
        p.sampler = parse_sampler(self.sampler_name.as_deref(), self.scheduler.as_deref())?;
        p.batch_size = self.batch_size;
        p.n_iter = self.n_iter;
        p.batch_seeds = BatchSeeds::Consecutive;
        p.prompt_options.clip_skip = self.clip_skip()?;
        p.max_sequence_length = self.max_sequence_length;
        p.true_cfg_scale = self.true_cfg_scale;
        p.image_prompts = self.image_prompts()?;
        if !self.skip_layer_guidance.is_empty() {
            p.skip_layer_guidance = Some(crate::SkipLayerGuidance::new(
                self.skip_layer_guidance.clone(),
            ));
        }
        if img2img {
            p.source = self.image_source()?;
            if let Source::Image { image, .. } = &p.source {
                (p.width, p.height) = (Some(image.width()), Some(image.height()));
            }
        }
        Ok(p)
    }

    /// Hires fix as A1111's fields describe it.
    fn hires(
        &self,
        upscaler: &dyn Fn(&str) -> Option<std::path::PathBuf>,
    ) -> Result<crate::HiresFix> {
        use crate::{HiresFix, HiresSize, HiresUpscaler};
        let name = self.hr_upscaler.as_str();
        let kind = HiresUpscaler::parse(name)
            .or_else(|| upscaler(name).map(HiresUpscaler::Model))
            .ok_or_else(|| {
                let message = format!(
                    "{name:?} is neither a Latent mode, Lanczos, Nearest nor a listed upscaler"
                );
                PipelineError::request(Field::Hires, message)
            })?;
        let size = match (
            self.hr_resize_x,
            self.hr_resize_y,
            self.width.zip(self.height),
        ) {
            (0, 0, _) => HiresSize::Scale(self.hr_scale),
            (x, y, _) if x > 0 && y > 0 => HiresSize::Size(x, y),
            // one side given: the other from the first pass's ratio, as A1111
            (x, 0, Some((w, h))) => HiresSize::Size(x, (x as f64 * h as f64 / w as f64) as u32),
            (0, y, Some((w, h))) => HiresSize::Size((y as f64 * w as f64 / h as f64) as u32, y),
            _ => {
                let message = "hr_resize_x or _y alone needs width and height".to_string();
                return Err(PipelineError::request(Field::Hires, message));
            }
        };
        let mut hires = HiresFix::new(size, kind);
        hires.strength = self.denoising_strength;
        hires.steps = Some(self.hr_second_pass_steps).filter(|&s| s > 0);
        hires.prompt = Some(self.hr_prompt.clone()).filter(|p| !p.is_empty());
        hires.negative_prompt = Some(self.hr_negative_prompt.clone()).filter(|p| !p.is_empty());
        hires.sampler = parse_sampler(self.hr_sampler_name.as_deref(), None)?;
        Ok(hires)
    }

    /// Layers to skip from the last: A1111's setting minus one.
    fn clip_skip(&self) -> Result<usize> {
        let from_settings = self.override_settings.get("CLIP_stop_at_last_layers");
        let value = match (self.clip_skip, from_settings) {
            (Some(v), _) => v,
            (None, Some(v)) => v.as_u64().ok_or_else(|| {
                PipelineError::request(
                    Field::ClipSkip,
                    format!(
                        "override_settings.CLIP_stop_at_last_layers: {v} is not a whole number"
                    ),
                )
            })? as usize,
            (None, None) => 1,
        };
        Ok(value.saturating_sub(1))
    }

    /// The init image (and mask) at the requested size; without one, at
    /// the image's own size in whole units of 8.
    fn image_prompts(&self) -> Result<Vec<crate::ImagePrompt>> {
        let prompt = |p: &IpAdapterPrompt| {
            let images = p.images.iter().map(|i| decode_image(Field::IpAdapter, i));
            let images = images
                .map(|i| Ok(i?.to_rgb8()))
                .collect::<Result<Vec<_>>>()?;
            let prompt = crate::ImagePrompt::new(images);
            Ok(match p.scale.as_f64() {
                Some(scale) => prompt.with_scale(scale),
                None => prompt.with_block_scales(crate::BlockScales::from_json(&p.scale)?),
            })
        };
        self.ip_adapter.iter().map(prompt).collect()
    }

    fn image_source(&self) -> Result<Source> {
        let [init] = self.init_images.as_slice() else {
            return Err(PipelineError::request(
                Field::InitImage,
                format!("give exactly one image ({} given)", self.init_images.len()),
            ));
        };
        let image = decode_image(Field::InitImage, init)?;
        let mask = match &self.mask {
            Some(mask) => Some(decode_image(Field::Mask, mask)?),
            None => None,
        };
        let size = (
            self.width.unwrap_or(image.width() / 8 * 8),
            self.height.unwrap_or(image.height() / 8 * 8),
        );
        Ok(Source::Image {
            image: fit(image, size).to_rgb8(),
            mask: mask.map(|m| fit(m, size).to_luma8()),
            strength: self.denoising_strength,
        })
    }
}

/// `image` at `size` (Pillow's Lanczos, as A1111's "Just resize"), or as it
/// is when it has that size. A gray mask is resized as Pillow resizes an `L`
/// image: the same arithmetic on its one band.
fn fit(image: image::DynamicImage, (width, height): (u32, u32)) -> image::DynamicImage {
    if image.width() == width && image.height() == height {
        return image;
    }
    let (w, h) = (width.max(1), height.max(1));
    let resized = crate::resample::resize_lanczos(&image.to_rgb8(), w, h);
    match image.color().channel_count() {
        1 | 2 => image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| {
            image::Luma([resized.get_pixel(x, y).0[0]])
        })),
        _ => image::DynamicImage::ImageRgb8(resized),
    }
}

/// A base64 image (a `data:image/...;base64,` prefix allowed).
pub(crate) fn decode_image(field: Field, text: &str) -> Result<image::DynamicImage> {
    let data = match text.split_once(";base64,") {
        Some((prefix, data)) if prefix.starts_with("data:") => data,
        _ => text,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| PipelineError::request(field, format!("not base64: {e}")))?;
    image::load_from_memory(&bytes)
        .map_err(|e| PipelineError::request(field, format!("not an image this server reads: {e}")))
}
