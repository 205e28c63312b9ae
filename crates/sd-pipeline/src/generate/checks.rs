//! Stage 0, request checks: everything a run can be refused for is refused
//! here, before any weights run, with the field named.

use crate::error::{PipelineError, Result};
use crate::front::Field;
use crate::generate::request::{Request, Seed, Task};
use crate::model::ModelFamily;
use crate::pipeline::StableDiffusion;
use sd_core::DiffusersModel;

/// The shape of one run, once its request is known to be usable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunShape {
    pub width: u32,
    pub height: u32,
    /// Images in the batch.
    pub n: usize,
    /// Whether classifier-free guidance doubles the UNet batch.
    pub cfg: bool,
    /// (batch, latent channels, height / factor, width / factor).
    pub latent_shape: [i64; 4],
}

impl StableDiffusion {
    pub(crate) fn check(&self, request: &Request) -> Result<RunShape> {
        let (width, height) = self.output_size(request)?;
        let n = request.num_images;
        if n == 0 {
            return Err(PipelineError::request(Field::BatchSize, "at least 1 image"));
        }
        if request.steps == 0 {
            return Err(PipelineError::request(
                Field::Steps,
                "at least 1 step is needed",
            ));
        }
        PipelineError::require_finite(&[
            (Field::Guidance, request.guidance_scale),
            (Field::GuidanceRescale, request.guidance_rescale),
            (Field::Eta, request.eta),
        ])?;
        if let Seed::PerImage(seeds) = &request.seed {
            if seeds.len() != n {
                return Err(PipelineError::request(
                    Field::Seed,
                    format!("{} seeds for {n} images", seeds.len()),
                ));
            }
        }
        if let Some(embeddings) = &request.embeddings {
            check_embedding_batch(embeddings, n)?;
        }
        if let Some(strength) = request.task.strength() {
            if !(strength > 0.0 && strength <= 1.0) {
                return Err(PipelineError::request(
                    Field::Strength,
                    format!("{strength} is outside (0, 1]"),
                ));
            }
        }
        self.check_control(request.control.as_ref())?;
        self.check_family_options(request)?;
        if let Task::Inpaint { image, mask, .. } = &request.task {
            if mask.dimensions() != image.dimensions() {
                return Err(PipelineError::request(
                    Field::Mask,
                    format!(
                        "mask is {}x{}, the image {}x{}",
                        mask.width(),
                        mask.height(),
                        image.width(),
                        image.height()
                    ),
                ));
            }
        } else if self.is_inpainting_unet() {
            return Err(PipelineError::request(
                Field::Mask,
                "this is an inpainting model: give an image and a mask",
            ));
        }
        let factor = self.vae_scale_factor();
        let shape = RunShape {
            width,
            height,
            n,
            cfg: match self.family() {
                ModelFamily::Flux => {
                    request.true_cfg_scale > 1.0 && request.negative_prompt.is_some()
                }
                _ => request.guidance_scale > 1.0,
            },
            latent_shape: [
                n as i64,
                self.vae.config().latent_channels,
                height as i64 / factor,
                width as i64 / factor,
            ],
        };
        self.check_memory(&shape)?;
        Ok(shape)
    }

    fn output_size(&self, request: &Request) -> Result<(u32, u32)> {
        let (default_w, default_h) = match request.task.image() {
            Some(image) => image.dimensions(),
            None => self.default_size(),
        };
        let (w, h) = (
            request.width.unwrap_or(default_w),
            request.height.unwrap_or(default_h),
        );
        // diffusers' rule: any multiple of 8 (and of the VAE's factor) for
        // a UNet, which upsamples to each skip connection's size, so latents
        // need not be multiples of its own downsampling (1920x1080 works);
        // times the patch for SD3's transformer (16).
        let unit = self.size_unit();
        for (field, value) in [(Field::Width, w), (Field::Height, h)] {
            if value == 0 || value % unit != 0 {
                return Err(PipelineError::request(
                    field,
                    format!("{value} is not a positive multiple of {unit}"),
                ));
            }
        }
        if let Some(image) = request.task.image() {
            if image.dimensions() != (w, h) {
                return Err(PipelineError::request(
                    Field::InitImage,
                    format!(
                        "image is {}x{}, the request asks for {w}x{h}",
                        image.width(),
                        image.height()
                    ),
                ));
            }
        }
        Ok((w, h))
    }

    /// Refuses a size whose largest activations cannot fit where they would
    /// be made, instead of letting libtorch fail (or abort) mid-run. The
    /// estimate is a lower bound: three tensors of the first UNet block's
    /// width over the CFG-doubled batch, and three of the VAE's last decoder
    /// block over one decoded slice (or tile).
    fn check_memory(&self, shape: &RunShape) -> Result<()> {
        let bytes = |device| sd_core::device::available_memory(device).unwrap_or(u64::MAX);
        let element = self.denoiser.dtype().elt_size_in_bytes() as u64;
        let [_, _, h, w] = shape.latent_shape.map(|v| v as u64);
        let unet_batch = shape.n as u64 * if shape.cfg { 2 } else { 1 };
        let unet_channels = self.denoiser.activation_width() as u64;
        let unet_need = 3 * unet_batch * unet_channels * h * w * element;
        let vae = self.vae.config();
        let full = shape.width as u64 * shape.height as u64;
        let pixels = match self.vae.tiling() {
            Some(tiles) => full.min((tiles.sample_size as u64).pow(2)),
            None => full,
        };
        let vae_batch = if self.vae.slicing() {
            1
        } else {
            shape.n as u64
        };
        let vae_element = self.vae.dtype().elt_size_in_bytes() as u64;
        let vae_need = 3 * vae_batch * vae.block_out_channels[0] as u64 * pixels * vae_element;
        for (what, need, device) in [
            ("UNet", unet_need, self.devices().unet),
            ("VAE decode", vae_need, self.devices().vae),
        ] {
            let have = bytes(device);
            if need > have {
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                return Err(PipelineError::request(
                    Field::Size,
                    format!(
                        "{}x{} needs at least {:.1} GiB for the {what} on {}, which has \
                         {:.1} GiB free: ask for a smaller size{}",
                        shape.width,
                        shape.height,
                        gib(need),
                        match device {
                            tch::Device::Cuda(i) => format!("cuda:{i}"),
                            _ => "the cpu".to_string(),
                        },
                        gib(have),
                        if what == "VAE decode" {
                            " or tile the VAE"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl StableDiffusion {
    /// Options one family has and the others do not.
    fn check_family_options(&self, request: &Request) -> Result<()> {
        let refuse = |field, message: String| Err(PipelineError::request(field, message));
        if self.family() == ModelFamily::Flux {
            return self.check_flux_options(request);
        }
        let Some(transformer) = self.transformer() else {
            if request.skip_layer_guidance.is_some() {
                return refuse(
                    Field::SkipLayerGuidance,
                    "skip-layer guidance is for SD3 transformers, this model has a UNet".into(),
                );
            }
            return Ok(());
        };
        if request.guidance_rescale != 0.0 {
            return refuse(
                Field::GuidanceRescale,
                "SD3 has no guidance rescale (diffusers' SD3 pipelines take none)".into(),
            );
        }
        let tokens = self.max_sequence_length(request);
        if !(1..=512).contains(&tokens) {
            return refuse(
                Field::MaxSequenceLength,
                format!("{tokens} is outside 1..=512 (T5's positions)"),
            );
        }
        let Some(slg) = &request.skip_layer_guidance else {
            return Ok(());
        };
        let blocks = transformer.config().num_layers as usize;
        PipelineError::require_finite(&[(Field::SkipLayerGuidance, slg.scale)])?;
        if let Some(layer) = slg.layers.iter().find(|&&l| l >= blocks) {
            return refuse(
                Field::SkipLayerGuidance,
                format!("layer {layer}: the transformer has blocks 0..{blocks}"),
            );
        }
        if !(0.0..=1.0).contains(&slg.start) || !(slg.start..=1.0).contains(&slg.stop) {
            return refuse(
                Field::SkipLayerGuidance,
                format!(
                    "window {}..{} is not within 0..1 in order",
                    slg.start, slg.stop
                ),
            );
        }
        Ok(())
    }
}

impl StableDiffusion {
    /// What FLUX runs take: distilled guidance, up to 512 T5 tokens.
    fn check_flux_options(&self, request: &Request) -> Result<()> {
        let refuse = |field, message: &str| Err(PipelineError::request(field, message));
        if request.skip_layer_guidance.is_some() {
            return refuse(
                Field::SkipLayerGuidance,
                "skip-layer guidance is for SD3 transformers",
            );
        }
        if request.guidance_rescale != 0.0 {
            return refuse(Field::GuidanceRescale, "FLUX has no guidance rescale");
        }
        let tokens = self.max_sequence_length(request);
        if !(1..=512).contains(&tokens) {
            return refuse(Field::MaxSequenceLength, "outside 1..=512 (T5's positions)");
        }
        Ok(())
    }
}

/// Precomputed embeddings are for one prompt (batch 1, repeated for every
/// image) or for each image (batch `num_images`).
fn check_embedding_batch(embeddings: &crate::PromptEmbeddings, n: usize) -> Result<()> {
    let parts = [
        Some(&embeddings.positive.hidden),
        Some(&embeddings.negative.hidden),
        embeddings.positive.pooled.as_ref(),
        embeddings.negative.pooled.as_ref(),
    ];
    for tensor in parts.into_iter().flatten() {
        let batch = tensor.size().first().copied().unwrap_or(0);
        if batch != 1 && batch != n as i64 {
            return Err(PipelineError::request(
                Field::Embeddings,
                format!("batch {batch}: give 1 (one prompt) or num_images = {n} (one per image)"),
            ));
        }
    }
    Ok(())
}
