//! The generation parameters a PNG carries in its text chunks: one
//! `parameters` chunk in AUTOMATIC1111's layout (which A1111's "PNG Info",
//! ComfyUI and civitai read back), plus one chunk per field for scripts.

use image::RgbImage;

use crate::error::{PipelineError, Result};
use crate::front::Field;
use sd_scheduler::SamplerKind;

/// What made an image.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParameters {
    /// The prompt as given.
    pub prompt: String,
    /// The negative prompt ("" for none).
    pub negative_prompt: String,
    /// Denoising steps.
    pub steps: usize,
    /// The sampler: A1111's name in the infotext ("Euler a"), the CLI's in
    /// its own chunk ("euler-a"), whichever frontend wrote the file.
    pub sampler: SamplerKind,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// This image's seed.
    pub seed: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The model (its folder, file or name).
    pub model: String,
    /// Hires fix's keys as A1111 writes them (`Denoising strength: 0.7,
    /// Hires upscale: 2, Hires steps: 20, Hires upscaler: Latent`); with
    /// them, `Size` is the first pass's size, as in A1111.
    pub hires: Option<String>,
}

impl GenerationParameters {
    /// A1111's infotext: prompt, `Negative prompt: ...`, then `Key: value` pairs.
    pub fn infotext(&self) -> String {
        format!(
            "{}\nNegative prompt: {}\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            self.prompt,
            self.negative_prompt,
            self.steps,
            self.sampler.a1111_name(),
            self.guidance,
            self.seed,
            self.width,
            self.height,
            self.model
        ) + &self.hires.as_ref().map(|h| format!(", {h}")).unwrap_or_default()
    }

    /// The text chunks, in the order they are written.
    pub fn chunks(&self) -> Vec<(&'static str, String)> {
        vec![
            ("prompt", self.prompt.clone()),
            ("negative_prompt", self.negative_prompt.clone()),
            ("steps", self.steps.to_string()),
            ("sampler", self.sampler.to_string()),
            ("guidance", self.guidance.to_string()),
            ("seed", self.seed.to_string()),
            ("size", format!("{}x{}", self.width, self.height)),
            ("model", self.model.clone()),
            ("parameters", self.infotext()),
        ]
    }
}

impl GenerationParameters {
    /// With hires fix's keys, and `Size` taken back to the first pass's
    /// (the image is the second's); `steps` is the first pass's.
    pub fn with_hires(mut self, hires: Option<&crate::HiresFix>, steps: usize) -> Self {
        let Some(hires) = hires else {
            return self;
        };
        let upscaler = match &hires.upscaler {
            crate::HiresUpscaler::Model(path) => path.file_stem().map_or_else(
                || path.display().to_string(),
                |s| s.to_string_lossy().into_owned(),
            ),
            other => crate::generate::hires_name(other).to_string(),
        };
        let size = match hires.size {
            crate::HiresSize::Scale(s) => {
                (self.width, self.height) = (
                    (self.width as f64 / s) as u32,
                    (self.height as f64 / s) as u32,
                );
                format!("Hires upscale: {s}")
            }
            crate::HiresSize::Size(w, h) => format!("Hires resize: {w}x{h}"),
        };
        let steps = hires.steps.unwrap_or(steps);
        self.hires = Some(format!(
            "Denoising strength: {}, {size}, Hires steps: {steps}, Hires upscaler: {upscaler}",
            hires.strength
        ));
        self
    }
}

/// `image` as PNG bytes with `parameters` in international text chunks.
pub fn encode_png(image: &RgbImage, parameters: &GenerationParameters) -> Result<Vec<u8>> {
    let fail = |e: png::EncodingError| PipelineError::request(Field::Output, e.to_string());
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, image.width(), image.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    for (key, text) in parameters.chunks() {
        encoder
            .add_itxt_chunk(key.to_string(), text)
            .map_err(fail)?;
    }
    let mut writer = encoder.write_header().map_err(fail)?;
    writer.write_image_data(image.as_raw()).map_err(fail)?;
    writer.finish().map_err(fail)?;
    Ok(bytes)
}
