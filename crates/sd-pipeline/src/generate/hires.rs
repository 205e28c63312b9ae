//! Hires fix, as AUTOMATIC1111 runs it: the image generated at the
//! request's size, enlarged, then denoised again at the large size from
//! `strength` of the schedule. The enlargement is A1111's `hr_upscaler`:
//! the latents resized by torch's `interpolate` ("Latent" modes), or the
//! decoded image resized (Lanczos, Nearest) or enlarged by an upscaler model
//! and encoded again. The second pass is diffusers' image-to-image given
//! those latents (`StableDiffusionImg2ImgPipeline` with a 4-channel `image`)
//! or that image, with the run's seed(s) drawn again at the new size.

use std::path::PathBuf;

use image::imageops::FilterType;
use tch::Tensor;

use crate::error::{PipelineError, Result};
use crate::front::Field;
use crate::generate::denoise::StepCallback;
use crate::generate::request::{Generation, Request, Task};
use crate::pipeline::StableDiffusion;
use sd_scheduler::SamplerKind;

/// How torch resizes latents in A1111's "Latent" upscalers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LatentResize {
    /// "Latent": bilinear.
    Bilinear,
    /// "Latent (antialiased)".
    BilinearAntialiased,
    /// "Latent (bicubic)".
    Bicubic,
    /// "Latent (bicubic antialiased)".
    BicubicAntialiased,
    /// "Latent (nearest)".
    Nearest,
    /// "Latent (nearest-exact)".
    NearestExact,
}

/// A1111's `hr_upscaler`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HiresUpscaler {
    /// The latents resized.
    Latent(LatentResize),
    /// The decoded image resized with Pillow's Lanczos (A1111 resizes with
    /// Pillow: `crate::resample`), then encoded.
    Lanczos,
    /// The decoded image resized to the nearest pixels, then encoded.
    Nearest,
    /// An upscaler model (`sd_upscale`) on the decoded image, then resized
    /// (Lanczos) to the target when its scale does not land on it.
    Model(PathBuf),
}

/// The modes that are no model, by A1111's names.
fn modes() -> [(&'static str, HiresUpscaler); 8] {
    use LatentResize::*;
    [
        ("Latent", HiresUpscaler::Latent(Bilinear)),
        (
            "Latent (antialiased)",
            HiresUpscaler::Latent(BilinearAntialiased),
        ),
        ("Latent (bicubic)", HiresUpscaler::Latent(Bicubic)),
        (
            "Latent (bicubic antialiased)",
            HiresUpscaler::Latent(BicubicAntialiased),
        ),
        ("Latent (nearest)", HiresUpscaler::Latent(Nearest)),
        (
            "Latent (nearest-exact)",
            HiresUpscaler::Latent(NearestExact),
        ),
        ("Lanczos", HiresUpscaler::Lanczos),
        ("Nearest", HiresUpscaler::Nearest),
    ]
}

/// The CLI's spelling of a name: `Latent (bicubic)` is `latent-bicubic`.
fn cli_name(name: &str) -> String {
    name.to_ascii_lowercase()
        .replace(" (", "-")
        .replace(')', "")
        .replace(' ', "-")
}

/// A1111's name of a mode that is no model (`Latent (bicubic)`, `Lanczos`).
pub(crate) fn hires_name(upscaler: &HiresUpscaler) -> &'static str {
    let found = modes().into_iter().find(|(_, mode)| mode == upscaler);
    found.map_or("(model)", |(name, _)| name)
}

impl HiresUpscaler {
    /// A mode's name ([`parse`](Self::parse)) or an upscaler model file, as
    /// the CLI's `--hires-upscaler` and `sd_rs`'s `hires_upscaler` take it;
    /// the error names both kinds.
    pub fn parse_or_file(name: &str) -> Result<Self> {
        match Self::parse(name) {
            Some(upscaler) => Ok(upscaler),
            None if std::path::Path::new(name).is_file() => Ok(HiresUpscaler::Model(name.into())),
            None => Err(PipelineError::request(
                Field::Hires,
                format!(
                    "{name:?} is neither a mode (latent, latent-bicubic, lanczos, ...) nor a file"
                ),
            )),
        }
    }

    /// A1111's name (`Latent`, `Latent (bicubic)`, `Lanczos`, ...) or the
    /// CLI's (`latent`, `latent-bicubic`, `lanczos`, ...); a model is named
    /// by its path elsewhere.
    pub fn parse(name: &str) -> Option<Self> {
        let wanted = cli_name(name);
        let found = modes().into_iter().find(|(n, _)| cli_name(n) == wanted);
        found.map(|(_, mode)| mode)
    }

    /// A1111's names of the latent modes (`/sdapi/v1/latent-upscale-modes`).
    pub fn latent_mode_names() -> Vec<&'static str> {
        let latent = modes().into_iter();
        latent
            .filter(|(_, mode)| matches!(mode, HiresUpscaler::Latent(_)))
            .map(|(name, _)| name)
            .collect()
    }
}

/// The size of the second pass.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum HiresSize {
    /// The first pass's size times this (A1111's `hr_scale`), truncated.
    Scale(f64),
    /// Width and height (A1111's `hr_resize_x`/`_y`).
    Size(u32, u32),
}

/// The second pass of a hires-fix run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HiresFix {
    /// The size of the result.
    pub size: HiresSize,
    /// How the first pass is enlarged.
    pub upscaler: HiresUpscaler,
    /// Steps of the second pass's schedule (`None`: the request's).
    pub steps: Option<usize>,
    /// How much of that schedule runs (A1111's `denoising_strength`, 0.7).
    pub strength: f64,
    /// The second pass's prompt (`None`: the request's; A1111's `hr_prompt`).
    pub prompt: Option<String>,
    /// The second pass's negative prompt (A1111's `hr_negative_prompt`).
    pub negative_prompt: Option<String>,
    /// The second pass's sampler (`None`: the request's; `hr_sampler_name`).
    pub sampler: Option<SamplerKind>,
}

impl HiresFix {
    /// To `size` with `upscaler`, A1111's default strength 0.7.
    pub fn new(size: HiresSize, upscaler: HiresUpscaler) -> Self {
        HiresFix {
            size,
            upscaler,
            steps: None,
            strength: 0.7,
            prompt: None,
            negative_prompt: None,
            sampler: None,
        }
    }

    /// The second pass's size after a first pass of `first`.
    pub fn size_after(&self, (w, h): (u32, u32)) -> (u32, u32) {
        match self.size {
            HiresSize::Scale(s) => ((w as f64 * s) as u32, (h as f64 * s) as u32),
            HiresSize::Size(x, y) => (x, y),
        }
    }
}

/// Latents `(n, c, h, w)` resized to `(h, w) = size` as torch's
/// `interpolate(size=..., mode=..., antialias=...)`.
fn resize_latents(latents: &Tensor, size: [i64; 2], mode: LatentResize) -> Tensor {
    use LatentResize::*;
    match mode {
        Bilinear => latents.upsample_bilinear2d(size, false, None, None),
        BilinearAntialiased => latents.internal_upsample_bilinear2d_aa(size, false, None, None),
        Bicubic => latents.upsample_bicubic2d(size, false, None, None),
        BicubicAntialiased => latents.internal_upsample_bicubic2d_aa(size, false, None, None),
        Nearest => latents.upsample_nearest2d(size, None, None),
        NearestExact => latents.internal_upsample_nearest_exact2d(size, None, None),
    }
}

impl StableDiffusion {
    /// Both passes of `request` (its `hires` set), the second with a fresh
    /// scheduler of the same kind; steps count on through the callback.
    pub(crate) fn run_hires(
        &self,
        request: &Request,
        hires: &HiresFix,
        scheduler: Box<dyn sd_scheduler::Scheduler>,
        callback: StepCallback<'_>,
    ) -> Result<Generation> {
        let refuse = |field, message: String| Err(PipelineError::request(field, message));
        if !matches!(request.task, Task::TextToImage) {
            return refuse(Field::Hires, "hires fix follows text-to-image only".into());
        }
        if !(hires.strength > 0.0 && hires.strength <= 1.0) {
            return refuse(
                Field::Hires,
                format!("strength {} is outside (0, 1]", hires.strength),
            );
        }
        let mut first = request.clone();
        first.hires = None;
        let generation = self.run(&first, scheduler, &mut *callback, None)?;
        let (width, height) = hires.size_after(generation.images[0].dimensions());
        let mut second = first.clone();
        (second.width, second.height) = (Some(width), Some(height));
        second.steps = hires.steps.unwrap_or(request.steps);
        second.sampler = hires.sampler.or(request.sampler);
        second.prompt = hires.prompt.clone().unwrap_or(second.prompt);
        if let Some(negative) = &hires.negative_prompt {
            second.negative_prompt = Some(negative.clone());
        }
        let scheduler = self.scheduler_for(&second)?;
        let factor = self.vae_scale_factor();
        let size = [height as i64 / factor, width as i64 / factor];
        let upscaled = match &hires.upscaler {
            HiresUpscaler::Latent(mode) => {
                let latents = resize_latents(&generation.latents, size, *mode);
                return self.run(
                    &second,
                    scheduler,
                    callback,
                    Some((&latents, hires.strength)),
                );
            }
            other => self.enlarge_images(&generation.images, (width, height), other)?,
        };
        let [image] = <[image::RgbImage; 1]>::try_from(upscaled).map_err(|_| {
            let message = "hires fix with an image upscaler takes one image a run".to_string();
            PipelineError::request(Field::BatchSize, message)
        })?;
        second.task = Task::ImageToImage {
            image,
            strength: hires.strength,
        };
        self.run(&second, scheduler, callback, None)
    }

    /// The first pass's images at the hires size.
    fn enlarge_images(
        &self,
        images: &[image::RgbImage],
        (w, h): (u32, u32),
        upscaler: &HiresUpscaler,
    ) -> Result<Vec<image::RgbImage>> {
        let lanczos = |image: &image::RgbImage| crate::resample::resize_lanczos(image, w, h);
        let model = match upscaler {
            HiresUpscaler::Model(path) => {
                let fail = |e: sd_upscale::UpscaleError| {
                    PipelineError::request(Field::Hires, format!("{}: {e}", path.display()))
                };
                let device = self.devices().vae;
                Some(sd_upscale::Upscaler::open(path, device, tch::Kind::Float).map_err(fail)?)
            }
            _ => None,
        };
        images
            .iter()
            .map(|image| {
                Ok(match (&model, upscaler) {
                    (Some(model), _) => crate::resample::upscale_to(model, image, (w, h))
                        .map_err(|e| PipelineError::request(Field::Hires, e.to_string()))?,
                    (None, HiresUpscaler::Nearest) => {
                        image::imageops::resize(image, w, h, FilterType::Nearest)
                    }
                    (None, _) => lanczos(image),
                })
            })
            .collect()
    }
}
