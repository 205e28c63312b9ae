//! Stage 3, latent preparation: the initial latents in diffusers' order of
//! generator draws (pure noise, a noised init image, or inpainting's
//! masked-image channels and blend targets).

use sd_core::rng::NoiseSource;
use sd_core::DiffusersModel;
use sd_scheduler::Scheduler;
use tch::Tensor;

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
        let (shape, cfg) = (&run.latent_shape, run.cfg);
        let n = shape[0];
        // Drawn in the pipeline's dtype, as diffusers does: torch's f16/bf16
        // draws are other numbers than f32 ones, not their rounding.
        let kind = self.unet.var_store().kind();
        let Some(init) = request.task.image() else {
            // txt2img: pure noise at the first sigma
            let latents = noise.randn_as(shape, kind)? * scheduler.init_noise_sigma();
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
            .to_device(self.devices.vae)
            .to_kind(kind)
            .to_kind(encoder.dtype());
        // Latents in the pipeline's dtype, cast before scaling as diffusers;
        // they stay on the VAE's device, so the noise joins them there.
        let encode = |x: &Tensor, noise: &mut BatchNoise| -> Result<Tensor> {
            let sample = encoder.encode(x)?.sample(noise.first())?;
            Ok(sample.to_kind(kind) * encoder.config().scaling_factor)
        };
        // Batch copies as diffusers makes them: img2img concatenates (keeping
        // the encoder's channels-last layout), inpainting repeats (contiguous);
        // the UNet's first convolution rounds differently on the two layouts.
        let repeat = |t: Tensor| t.repeat([n, 1, 1, 1]);
        let Task::Inpaint {
            mask: mask_image,
            strength,
            ..
        } = &request.task
        else {
            // img2img: the image's latents noised to the start timestep
            let one = encode(&image, noise)?;
            let copies: Vec<Tensor> = (0..n).map(|_| one.shallow_clone()).collect();
            let image_latents = Tensor::cat(&copies, 0);
            let fresh = noise.randn_as(shape, kind)?.to_device(self.devices.vae);
            let latents = scheduler.add_noise(&image_latents, &fresh, start)?;
            return Ok(Prepared {
                latents,
                inpaint_channels: None,
                blend: None,
            });
        };
        // inpainting (diffusers' StableDiffusionInpaintPipeline)
        let full_strength = *strength >= 1.0;
        let plain_unet = !self.is_inpainting_unet();
        let image_latents = if plain_unet || !full_strength {
            Some(repeat(encode(&image, noise)?))
        } else {
            None
        };
        let fresh = noise.randn_as(shape, kind)?.to_device(self.devices.vae);
        let latents = match (&image_latents, full_strength) {
            (Some(image_latents), false) => scheduler.add_noise(image_latents, &fresh, start)?,
            _ => &fresh * scheduler.init_noise_sigma(),
        };
        let mask = mask_to_tensor(mask_image);
        let masked_image = &image * mask.lt(0.5).to_kind(image.kind()).to_device(image.device());
        let masked_latents = repeat(encode(&masked_image, noise)?);
        let small_mask = mask
            .upsample_nearest2d([shape[2], shape[3]], None, None)
            .repeat([n, 1, 1, 1]);
        let device = self.devices.unet;
        let double = |t: &Tensor| {
            if cfg {
                Tensor::cat(&[t, t], 0)
            } else {
                t.shallow_clone()
            }
            .to_device(device)
            .to_kind(kind)
        };
        if plain_unet {
            let image_latents = image_latents.expect("encoded above for plain UNets");
            Ok(Prepared {
                latents,
                inpaint_channels: None,
                blend: Some(Blend {
                    image_latents: image_latents.to_device(device).to_kind(kind),
                    noise: fresh.to_device(device).to_kind(kind),
                    mask: small_mask.to_device(device).to_kind(kind),
                }),
            })
        } else {
            Ok(Prepared {
                latents,
                inpaint_channels: Some((double(&small_mask), double(&masked_latents))),
                blend: None,
            })
        }
    }
}
