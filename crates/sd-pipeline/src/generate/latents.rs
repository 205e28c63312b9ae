//! Stage 3, latent preparation: the initial latents in diffusers' order of
//! generator draws (pure noise, a noised init image, or inpainting's
//! masked-image channels and blend targets).

use sd_core::rng::NoiseSource;
use sd_core::DiffusersModel;
use sd_scheduler::Scheduler;
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::generate::checks::RunShape;
use crate::generate::request::{Request, Task};
use crate::images::{image_to_tensor, mask_to_tensor};
use crate::model::ModelFamily;
use crate::noise::BatchNoise;
use crate::pipeline::StableDiffusion;

/// Latents to start from, and what inpainting needs during the loop.
pub(crate) struct Prepared {
    pub latents: Tensor,
    /// 9-channel UNets: (mask, masked-image latents), CFG-doubled.
    pub inpaint_channels: Option<(Tensor, Tensor)>,
    /// 4-channel UNets inpainting: blend the unmasked area back each step.
    pub blend: Option<Blend>,
}

pub(crate) struct Blend {
    pub image_latents: Tensor,
    pub noise: Tensor,
    pub mask: Tensor,
}

/// The init image ready to encode: in the pipeline's dtype, then the
/// encoder's, on the VAE's device.
struct Encoding<'a> {
    encoder: &'a sd_vae::AutoencoderKL,
    image: Tensor,
    /// The pipeline's dtype.
    kind: Kind,
}

impl Encoding<'_> {
    /// Latents of `x` in the pipeline's dtype, cast before scaling as
    /// diffusers (SD3's VAE shifts first); they stay on the VAE's device,
    /// so the noise joins them there.
    fn encode(&self, x: &Tensor, noise: &mut BatchNoise) -> Result<Tensor> {
        let sample = self
            .encoder
            .encode(x)?
            .sample(noise.first())?
            .to_kind(self.kind);
        let config = self.encoder.config();
        Ok(match config.shift_factor {
            Some(shift) => (sample - shift) * config.scaling_factor,
            None => sample * config.scaling_factor,
        })
    }
}

impl StableDiffusion {
    /// Initial latents in diffusers' order of generator draws; `start` is
    /// where image-to-image and inpainting enter the schedule.
    pub(crate) fn prepare_latents(
        &self,
        request: &Request,
        run: &RunShape,
        vae: &sd_vae::AutoencoderKL,
        scheduler: &dyn Scheduler,
        start: usize,
        noise: &mut BatchNoise,
    ) -> Result<Prepared> {
        // Drawn in the pipeline's dtype, as diffusers does: torch's f16/bf16
        // draws are other numbers than f32 ones, not their rounding.
        let kind = self.denoiser.dtype();
        let Some(init) = request.task.image() else {
            // txt2img: pure noise at the first sigma
            let latents = noise.randn_as(&run.latent_shape, kind)? * scheduler.init_noise_sigma();
            return Ok(Prepared {
                latents,
                inpaint_channels: None,
                blend: None,
            });
        };
        // diffusers casts the image to the pipeline's dtype first; its SDXL
        // pipelines then encode with an f32 VAE when the config says
        // force_upcast (in bf16 too), its SD ones in the pipeline's dtype.
        let xl_upcast =
            self.index.family == ModelFamily::StableDiffusionXl && vae.config().force_upcast;
        let encoder = if xl_upcast { vae.upcast()? } else { vae };
        let image = image_to_tensor(init)
            .to_device(self.devices().vae)
            .to_kind(kind)
            .to_kind(encoder.dtype());
        let encoding = Encoding {
            encoder,
            image,
            kind,
        };
        match &request.task {
            Task::Inpaint { mask, strength, .. } => {
                self.inpaint_latents(&encoding, mask, *strength, run, scheduler, start, noise)
            }
            _ => self.img2img_latents(&encoding, run, scheduler, start, noise),
        }
    }

    /// Given latents noised to the start timestep, as diffusers' img2img
    /// takes a 4-channel `image` (hires fix's second pass): no encoding, so
    /// the noise is the generator's first draw.
    pub(crate) fn noised_latents(
        &self,
        latents: &Tensor,
        run: &RunShape,
        scheduler: &dyn Scheduler,
        start: usize,
        noise: &mut BatchNoise,
    ) -> Result<Prepared> {
        let kind = self.denoiser.dtype();
        let device = self.devices().vae;
        let fresh = noise.randn_as(&run.latent_shape, kind)?.to_device(device);
        let latents = latents.to_device(device).to_kind(kind);
        Ok(Prepared {
            latents: scheduler.add_noise(&latents, &fresh, start)?,
            inpaint_channels: None,
            blend: None,
        })
    }

    /// img2img: the image's latents noised to the start timestep. Batch
    /// copies concatenated as diffusers makes them (keeping the encoder's
    /// channels-last layout: the UNet's first convolution rounds by layout).
    fn img2img_latents(
        &self,
        encoding: &Encoding<'_>,
        run: &RunShape,
        scheduler: &dyn Scheduler,
        start: usize,
        noise: &mut BatchNoise,
    ) -> Result<Prepared> {
        let one = encoding.encode(&encoding.image, noise)?;
        let copies: Vec<Tensor> = (0..run.latent_shape[0])
            .map(|_| one.shallow_clone())
            .collect();
        let image_latents = Tensor::cat(&copies, 0);
        let fresh = noise
            .randn_as(&run.latent_shape, encoding.kind)?
            .to_device(self.devices().vae);
        Ok(Prepared {
            latents: scheduler.add_noise(&image_latents, &fresh, start)?,
            inpaint_channels: None,
            blend: None,
        })
    }

    /// Inpainting as diffusers' StableDiffusionInpaintPipeline: 9-channel
    /// UNets get the mask and masked-image latents as channels, 4-channel
    /// ones blend the kept area back each step. Batch copies repeat
    /// (contiguous), as diffusers makes them.
    #[allow(clippy::too_many_arguments)]
    fn inpaint_latents(
        &self,
        encoding: &Encoding<'_>,
        mask_image: &image::GrayImage,
        strength: f64,
        run: &RunShape,
        scheduler: &dyn Scheduler,
        start: usize,
        noise: &mut BatchNoise,
    ) -> Result<Prepared> {
        let (shape, kind) = (&run.latent_shape, encoding.kind);
        let repeat = |t: Tensor| t.repeat([shape[0], 1, 1, 1]);
        let full_strength = strength >= 1.0;
        let plain_unet = !self.is_inpainting_unet();
        let image_latents = if plain_unet || !full_strength {
            Some(repeat(encoding.encode(&encoding.image, noise)?))
        } else {
            None
        };
        let fresh = noise.randn_as(shape, kind)?.to_device(self.devices().vae);
        let latents = match (&image_latents, full_strength) {
            (Some(image_latents), false) => scheduler.add_noise(image_latents, &fresh, start)?,
            _ => &fresh * scheduler.init_noise_sigma(),
        };
        let image = &encoding.image;
        let mask = mask_to_tensor(mask_image);
        let masked_image = image * mask.lt(0.5).to_kind(image.kind()).to_device(image.device());
        let masked_latents = repeat(encoding.encode(&masked_image, noise)?);
        let small_mask = mask
            .upsample_nearest2d([shape[2], shape[3]], None, None)
            .repeat([shape[0], 1, 1, 1]);
        let device = self.devices().unet;
        let on_unet = |t: &Tensor| t.to_device(device).to_kind(kind);
        let double = |t: &Tensor| match run.cfg {
            true => on_unet(&Tensor::cat(&[t, t], 0)),
            false => on_unet(t),
        };
        Ok(match image_latents {
            Some(image_latents) if plain_unet => Prepared {
                latents,
                inpaint_channels: None,
                blend: Some(Blend {
                    image_latents: on_unet(&image_latents),
                    noise: on_unet(&fresh),
                    mask: on_unet(&small_mask),
                }),
            },
            _ => Prepared {
                latents,
                inpaint_channels: Some((double(&small_mask), double(&masked_latents))),
                blend: None,
            },
        })
    }
}
