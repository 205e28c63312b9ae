//! One generation: prompts to conditioning, seeded latents, the denoising
//! loop with classifier-free guidance, and the VAE decode — numbered as
//! diffusers' `StableDiffusionPipeline.__call__` (and its img2img, inpaint
//! and XL siblings) so that the same seed gives the same latents.

use sd_core::DiffusersModel;
use std::ops::ControlFlow;

use image::{GrayImage, RgbImage};
use sd_clip::{encode, EmbeddingLayer, PromptOptions};
use sd_core::rng::{CpuGenerator, NoiseSource};
use sd_scheduler::{img2img_start_index, Scheduler};
use sd_unet::AddedConditions;
use sd_vae::AutoencoderKL;
use tch::Tensor;

use crate::error::{PipelineError, Result};
use crate::graph::{UNetExecution, UNetRunner};
use crate::images::{image_to_tensor, mask_to_tensor, tensor_to_images};
use crate::model::ModelFamily;
use crate::noise::BatchNoise;
use crate::pipeline::StableDiffusion;

/// What to generate. `Request::new(prompt)` gives diffusers' defaults.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    /// `None`: "" (SD) or zeros (SDXL with force_zeros_for_empty_prompt).
    pub negative_prompt: Option<String>,
    /// Precomputed conditioning instead of the prompts.
    pub embeddings: Option<PromptEmbeddings>,
    /// Multiples of 8; `None` is the model's native size.
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: usize,
    /// Classifier-free guidance; 1.0 (or less) skips the unconditional pass.
    pub guidance_scale: f64,
    /// diffusers' `guidance_rescale` (0 = off).
    pub guidance_rescale: f64,
    /// DDIM's eta (0 = deterministic); used when the pipeline's sampler is DDIM.
    pub eta: f64,
    pub prompt_options: PromptOptions,
    pub num_images: usize,
    /// One generator for the whole batch, as diffusers with one CPU generator.
    pub seed: u64,
    /// One generator per image instead (diffusers with a list of generators).
    pub seeds: Option<Vec<u64>>,
    /// img2img / inpainting source image (its size sets the output size).
    pub init_image: Option<RgbImage>,
    /// Inpainting mask, same size as the image: white is repainted.
    pub mask: Option<GrayImage>,
    /// How much of the schedule img2img/inpaint runs, in (0, 1].
    pub strength: f64,
    /// SDXL size conditioning: (original size, crop top-left, target size) as
    /// (height, width) pairs; defaults to the output size and (0, 0).
    pub sdxl_original_size: Option<(u32, u32)>,
    pub sdxl_crop_top_left: (u32, u32),
    pub sdxl_target_size: Option<(u32, u32)>,
}

impl Request {
    pub fn new(prompt: impl Into<String>) -> Self {
        Request {
            prompt: prompt.into(),
            negative_prompt: None,
            embeddings: None,
            width: None,
            height: None,
            steps: 50,
            guidance_scale: 7.5,
            guidance_rescale: 0.0,
            eta: 0.0,
            prompt_options: PromptOptions::default(),
            num_images: 1,
            seed: 0,
            seeds: None,
            init_image: None,
            mask: None,
            strength: 1.0,
            sdxl_original_size: None,
            sdxl_crop_top_left: (0, 0),
            sdxl_target_size: None,
        }
    }
}

/// Conditioning for one prompt: hidden states (1, tokens, width) and, for
/// SDXL, the pooled embedding (1, dim).
#[derive(Debug)]
pub struct Conditioning {
    pub hidden: Tensor,
    pub pooled: Option<Tensor>,
}

impl Clone for Conditioning {
    fn clone(&self) -> Self {
        Conditioning {
            hidden: self.hidden.shallow_clone(),
            pooled: self.pooled.as_ref().map(Tensor::shallow_clone),
        }
    }
}

/// Precomputed positive and negative conditioning.
#[derive(Debug, Clone)]
pub struct PromptEmbeddings {
    pub positive: Conditioning,
    pub negative: Conditioning,
}

/// Where a run is, for progress and previews.
#[derive(Debug)]
pub struct StepInfo<'a> {
    /// 0-based index among the steps this run makes.
    pub step: usize,
    pub total: usize,
    pub timestep: f64,
    pub latents: &'a Tensor,
}

/// The images and the final latents (before VAE decode).
#[derive(Debug)]
pub struct Generation {
    pub images: Vec<RgbImage>,
    pub latents: Tensor,
    /// Whether the UNet steps ran eagerly or as a replayed CUDA graph (and,
    /// if a capture was asked for but failed, why).
    pub unet_execution: UNetExecution,
}

impl StableDiffusion {
    /// Runs `request` with the pipeline's sampler.
    pub fn generate(&self, request: &Request) -> Result<Generation> {
        self.generate_with(request, self.scheduler_for(request)?, &mut |_| {
            ControlFlow::Continue(())
        })
    }

    /// The pipeline's sampler, with the request's DDIM eta applied.
    pub fn scheduler_for(&self, request: &Request) -> Result<Box<dyn Scheduler>> {
        if request.eta != 0.0 {
            if self.sampler != sd_scheduler::SamplerKind::Ddim {
                return Err(PipelineError::request(
                    "eta",
                    format!("eta applies to DDIM, the sampler is {}", self.sampler),
                ));
            }
            return Ok(Box::new(
                sd_scheduler::Ddim::new(&self.scheduler_config)?.with_eta(request.eta)?,
            ));
        }
        self.new_scheduler()
    }

    /// Runs `request` with your own scheduler and a per-step callback;
    /// `ControlFlow::Break` stops the run with [`PipelineError::Cancelled`].
    pub fn generate_with(
        &self,
        request: &Request,
        mut scheduler: Box<dyn Scheduler>,
        callback: &mut dyn FnMut(StepInfo<'_>) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let _guard = tch::no_grad_guard();
        let (width, height) = self.output_size(request)?;
        let n = request.num_images.max(1);
        let cfg = request.guidance_scale > 1.0;
        let device = self.devices.unet;
        let kind = self.unet.var_store().kind();
        let factor = self.vae_scale_factor();
        let latent_shape = [
            n as i64,
            self.vae.config().latent_channels,
            height as i64 / factor,
            width as i64 / factor,
        ];

        let unet = self.unet_for_run()?;
        let vae = self.vae_for_run()?;

        // 1. conditioning, [negative, positive] for one batched CFG pass
        let embeddings = match &request.embeddings {
            Some(e) => e.clone(),
            None => self.encode_prompts(request, cfg)?,
        };
        let repeat = |c: &Tensor| {
            c.repeat([n as i64, 1, 1][..c.dim()].to_vec())
                .to_device(device)
                .to_kind(kind)
        };
        let context = if cfg {
            Tensor::cat(
                &[
                    repeat(&embeddings.negative.hidden),
                    repeat(&embeddings.positive.hidden),
                ],
                0,
            )
        } else {
            repeat(&embeddings.positive.hidden)
        };
        let added = self.added_conditions(request, &embeddings, cfg, n, (width, height))?;

        // 2. timesteps, and where img2img/inpainting enters the schedule
        scheduler.set_timesteps(request.steps)?;
        let start = match &request.init_image {
            Some(_) => img2img_start_index(scheduler.as_ref(), request.steps, request.strength)?,
            None => 0,
        };

        // 3. latents from the run's own generator(s)
        let mut noise = match &request.seeds {
            Some(seeds) if seeds.len() != n => {
                return Err(PipelineError::request(
                    "seeds",
                    format!("{} seeds for {n} images", seeds.len()),
                ))
            }
            Some(seeds) => BatchNoise::per_image(seeds)?,
            None => BatchNoise::single(CpuGenerator::new(request.seed)?),
        };
        let prepared = self.prepare_latents(
            request,
            &vae,
            scheduler.as_ref(),
            start,
            &latent_shape,
            &mut noise,
            cfg,
        )?;
        let mut latents = prepared.latents.to_device(device).to_kind(kind);

        // 4. denoising loop
        let timesteps = scheduler.timesteps().to_vec();
        // On the device once, so no step copies a timestep from the host.
        let timesteps_on_device = Tensor::from_slice(&timesteps).to_device(device);
        let mut runner: Option<UNetRunner> = None;
        let total = timesteps.len() - start;
        for (step, i) in (start..timesteps.len()).enumerate() {
            let t = timesteps[i];
            let doubled = if cfg {
                Tensor::cat(&[&latents, &latents], 0)
            } else {
                latents.shallow_clone()
            };
            let mut input = scheduler.scale_model_input(&doubled, i)?;
            if let Some((mask, masked)) = &prepared.inpaint_channels {
                input = Tensor::cat(&[&input, mask, masked], 1);
            }
            let timestep = timesteps_on_device.get(i as i64);
            let runner = runner.get_or_insert_with(|| {
                UNetRunner::new(
                    self.cuda_graphs,
                    &unet,
                    &input,
                    &timestep,
                    &context,
                    added.as_ref(),
                )
            });
            let prediction = runner.run(&unet, &input, &timestep, &context, added.as_ref())?;
            let guided = if cfg {
                guide(
                    &prediction,
                    request.guidance_scale,
                    request.guidance_rescale,
                )
            } else {
                prediction
            };
            latents = scheduler.step(&guided, i, &latents, &mut noise)?;
            // 4b. inpainting with a plain UNet: keep the unmasked part on the
            //     image's own noisy trajectory
            if let Some(blend) = &prepared.blend {
                let proper = match timesteps.get(i + 1) {
                    Some(_) => scheduler.add_noise(&blend.image_latents, &blend.noise, i + 1)?,
                    None => blend.image_latents.shallow_clone(),
                };
                latents = (1.0 - &blend.mask) * proper + &blend.mask * &latents;
            }
            if callback(StepInfo {
                step,
                total,
                timestep: t,
                latents: &latents,
            })
            .is_break()
            {
                return Err(PipelineError::Cancelled { step });
            }
        }

        // 5. decode (the graph's buffers and, in low-memory mode, the UNet
        //    copy are freed first)
        let unet_execution = runner
            .as_ref()
            .map_or(UNetExecution::Eager, UNetRunner::execution);
        drop(runner);
        drop(unet);
        // the loop's freed activations back to the kernel before the decode
        // allocates buffers of other sizes (peak memory; sd_core::alloc)
        sd_core::alloc::release_freed_memory();
        Ok(Generation {
            images: self.decode_with(&vae, &latents)?,
            latents,
            unet_execution,
        })
    }

    /// Decodes final latents (as in [`Generation::latents`]) to 8-bit images,
    /// as the last step of a generation does.
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        self.decode_with(&*self.vae_for_run()?, latents)
    }

    fn decode_with(&self, vae: &AutoencoderKL, latents: &Tensor) -> Result<Vec<RgbImage>> {
        // (in the VAE's dtype before unscaling, as diffusers: an upcast SDXL
        // VAE gets f32 latents to divide)
        let z = latents.to_device(self.devices.vae).to_kind(vae.dtype());
        let decoded = vae.decode(&vae.unscale_latents(&z))?;
        tensor_to_images(&decoded)
    }

    fn output_size(&self, request: &Request) -> Result<(u32, u32)> {
        let (default_w, default_h) = match &request.init_image {
            Some(image) => image.dimensions(),
            None => self.default_size(),
        };
        let (w, h) = (
            request.width.unwrap_or(default_w),
            request.height.unwrap_or(default_h),
        );
        let unit = 8.max(
            self.vae_scale_factor() as u32
                * (1 << (self.unet.config().block_out_channels.len() - 1)),
        );
        for (field, value) in [("width", w), ("height", h)] {
            if value == 0 || value % unit != 0 {
                return Err(PipelineError::request(
                    field,
                    format!("{value} is not a positive multiple of {unit}"),
                ));
            }
        }
        if let Some(image) = &request.init_image {
            if image.dimensions() != (w, h) {
                return Err(PipelineError::request(
                    "init_image",
                    format!(
                        "image is {}x{}, the request asks for {w}x{h}",
                        image.width(),
                        image.height()
                    ),
                ));
            }
        }
        if let (Some(mask), Some(image)) = (&request.mask, &request.init_image) {
            if mask.dimensions() != image.dimensions() {
                return Err(PipelineError::request(
                    "mask",
                    format!(
                        "mask is {}x{}, the image {}x{}",
                        mask.width(),
                        mask.height(),
                        image.width(),
                        image.height()
                    ),
                ));
            }
        }
        if request.mask.is_some() && request.init_image.is_none() {
            return Err(PipelineError::request(
                "mask",
                "inpainting needs an init image too",
            ));
        }
        if self.is_inpainting_unet() && request.mask.is_none() {
            return Err(PipelineError::request(
                "mask",
                "this is an inpainting model: give an image and a mask",
            ));
        }
        if request.steps == 0 {
            return Err(PipelineError::request("steps", "at least 1 step is needed"));
        }
        Ok((w, h))
    }

    /// The prompts through the text encoder(s), as diffusers' `encode_prompt`.
    pub fn encode_prompts(&self, request: &Request, cfg: bool) -> Result<PromptEmbeddings> {
        let options = request.prompt_options;
        let negative_text = request.negative_prompt.clone().unwrap_or_default();
        match &self.second {
            None => {
                let layer = EmbeddingLayer::Final;
                let positive = encode(
                    &self.tokenizer,
                    &self.text_encoder,
                    &request.prompt,
                    layer,
                    options,
                    1,
                )?;
                let negative = if cfg {
                    encode(
                        &self.tokenizer,
                        &self.text_encoder,
                        &negative_text,
                        layer,
                        options,
                        positive.windows,
                    )?
                    .hidden
                } else {
                    positive.hidden.zeros_like()
                };
                Ok(PromptEmbeddings {
                    positive: Conditioning {
                        hidden: positive.hidden,
                        pooled: None,
                    },
                    negative: Conditioning {
                        hidden: negative,
                        pooled: None,
                    },
                })
            }
            Some((tokenizer_2, encoder_2)) => {
                let layer = EmbeddingLayer::Penultimate;
                let pair = |text: &str, windows: usize| -> Result<(Tensor, Tensor, usize)> {
                    let a = encode(
                        &self.tokenizer,
                        &self.text_encoder,
                        text,
                        layer,
                        options,
                        windows,
                    )?;
                    let b = encode(
                        tokenizer_2,
                        encoder_2,
                        text,
                        layer,
                        options,
                        windows.max(a.windows),
                    )?;
                    Ok((
                        Tensor::cat(&[a.hidden, b.hidden.to_device(a.pooled.device())], -1),
                        b.pooled,
                        a.windows,
                    ))
                };
                let (hidden, pooled, windows) = pair(&request.prompt, 1)?;
                let zero_negative =
                    request.negative_prompt.is_none() && self.index.force_zeros_for_empty_prompt;
                let (neg_hidden, neg_pooled) = if !cfg || zero_negative {
                    (hidden.zeros_like(), pooled.zeros_like())
                } else {
                    let (h, p, _) = pair(&negative_text, windows)?;
                    (h, p)
                };
                Ok(PromptEmbeddings {
                    positive: Conditioning {
                        hidden,
                        pooled: Some(pooled),
                    },
                    negative: Conditioning {
                        hidden: neg_hidden,
                        pooled: Some(neg_pooled),
                    },
                })
            }
        }
    }

    /// SDXL's pooled text and (original size, crop, target size) ids.
    fn added_conditions(
        &self,
        request: &Request,
        embeddings: &PromptEmbeddings,
        cfg: bool,
        n: usize,
        (width, height): (u32, u32),
    ) -> Result<Option<AddedConditions>> {
        if self.index.family != ModelFamily::StableDiffusionXl {
            return Ok(None);
        }
        let device = self.devices.unet;
        let (oh, ow) = request.sdxl_original_size.unwrap_or((height, width));
        let (ct, cl) = request.sdxl_crop_top_left;
        let (th, tw) = request.sdxl_target_size.unwrap_or((height, width));
        let ids: Vec<f32> = [oh, ow, ct, cl, th, tw].iter().map(|&v| v as f32).collect();
        let ids = Tensor::from_slice(&ids).unsqueeze(0).repeat([n as i64, 1]);
        let pooled = |c: &Conditioning| -> Result<Tensor> {
            let p = c.pooled.as_ref().ok_or_else(|| {
                PipelineError::request("embeddings", "SDXL needs pooled embeddings")
            })?;
            Ok(p.repeat([n as i64, 1]).to_device(device))
        };
        let (text_embeds, time_ids) = if cfg {
            (
                Tensor::cat(
                    &[pooled(&embeddings.negative)?, pooled(&embeddings.positive)?],
                    0,
                ),
                Tensor::cat(&[&ids, &ids], 0),
            )
        } else {
            (pooled(&embeddings.positive)?, ids)
        };
        Ok(Some(AddedConditions {
            text_embeds,
            time_ids: time_ids.to_device(device),
        }))
    }
}

/// Classifier-free guidance on a [uncond, text] batch, with diffusers'
/// optional rescale (Lin et al. 2023, section 3.4).
pub fn guide(prediction: &Tensor, scale: f64, rescale: f64) -> Tensor {
    let halves = prediction.chunk(2, 0);
    let (uncond, text) = (&halves[0], &halves[1]);
    let guided = uncond + (text - uncond) * scale;
    if rescale <= 0.0 {
        return guided;
    }
    let dims: Vec<i64> = (1..prediction.dim() as i64).collect();
    let std = |x: &Tensor| x.std_dim(dims.as_slice(), true, true);
    let rescaled = &guided * (std(text) / std(&guided));
    rescaled * rescale + guided * (1.0 - rescale)
}

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
    /// Initial latents in diffusers' order of generator draws.
    #[allow(clippy::too_many_arguments)]
    fn prepare_latents(
        &self,
        request: &Request,
        vae: &sd_vae::AutoencoderKL,
        scheduler: &dyn Scheduler,
        start: usize,
        shape: &[i64; 4],
        noise: &mut BatchNoise,
        cfg: bool,
    ) -> Result<Prepared> {
        let n = shape[0];
        // Drawn in the pipeline's dtype, as diffusers does: torch's f16/bf16
        // draws are other numbers than f32 ones, not their rounding.
        let kind = self.unet.var_store().kind();
        let Some(init) = &request.init_image else {
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
        let Some(mask_image) = &request.mask else {
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
        let full_strength = request.strength >= 1.0;
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
