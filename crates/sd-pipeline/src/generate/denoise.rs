//! Stages 2, 4 and 5: timesteps, the denoising loop with classifier-free
//! guidance, and the VAE decode; the run itself, stage by stage.

use std::ops::ControlFlow;

use image::RgbImage;
use sd_scheduler::{img2img_start, Scheduler, StrengthRounding};
use sd_unet::UNet2DConditionModel;
use sd_vae::AutoencoderKL;
use tch::Tensor;

use crate::compiled::{DecodeExecution, DecoderPackages};
use crate::control::RunControl;
use crate::denoiser::{flux_velocity, velocity, Extra, RunDenoiser};
use crate::error::{PipelineError, Result};
use crate::front::Field;
use crate::generate::latents::Prepared;
use crate::generate::request::{Generation, Request, StepInfo};
use crate::graph::{UNetExecution, UNetRunner};
use crate::images::tensor_to_images;
use crate::model::ModelFamily;
use crate::noise::BatchNoise;
use crate::pipeline::StableDiffusion;
use sd_core::DiffusersModel;

/// A per-step callback; `ControlFlow::Break` cancels the run.
pub type StepCallback<'a> = &'a mut dyn FnMut(StepInfo<'_>) -> ControlFlow<()>;

impl StableDiffusion {
    /// Runs `request` with its sampler (else the pipeline's).
    pub fn generate(&self, request: &Request) -> Result<Generation> {
        self.generate_with(request, self.scheduler_for(request)?, &mut |_| {
            ControlFlow::Continue(())
        })
    }

    /// The request's sampler (else the pipeline's), with its DDIM eta applied.
    pub fn scheduler_for(&self, request: &Request) -> Result<Box<dyn Scheduler>> {
        let sampler = request.sampler.unwrap_or(self.sampler);
        if request.eta != 0.0 {
            if sampler != sd_scheduler::SamplerKind::Ddim {
                return Err(PipelineError::request(
                    Field::Eta,
                    format!("eta applies to DDIM, the sampler is {sampler}"),
                ));
            }
            return Ok(Box::new(
                sd_scheduler::Ddim::new(&self.scheduler_config)?.with_eta(request.eta)?,
            ));
        }
        self.new_scheduler_of(sampler)
    }

    /// Runs `request` with your own scheduler and a per-step callback;
    /// `ControlFlow::Break` stops the run with [`PipelineError::Cancelled`].
    /// A libtorch failure that `tch` reports by panicking (an allocation
    /// beyond the device, say), or a panicking scheduler, comes back as an
    /// error too: a server on this survives a bad run.
    pub fn generate_with(
        &self,
        request: &Request,
        scheduler: Box<dyn Scheduler>,
        callback: StepCallback<'_>,
    ) -> Result<Generation> {
        let run = std::panic::AssertUnwindSafe(|| match &request.hires {
            Some(hires) => self.run_hires(request, hires, scheduler, callback),
            None => self.run(request, scheduler, callback, None),
        });
        std::panic::catch_unwind(run).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "no message".into());
            Err(PipelineError::Torch(tch::TchError::Torch(format!(
                "the run panicked: {message}"
            ))))
        })
    }

    /// One pass; `init` is hires fix's second pass: latents to start from
    /// (scaled, at the request's size) and the strength to noise them to.
    pub(crate) fn run(
        &self,
        request: &Request,
        mut scheduler: Box<dyn Scheduler>,
        callback: StepCallback<'_>,
        init: Option<(&Tensor, f64)>,
    ) -> Result<Generation> {
        let _guard = tch::no_grad_guard();
        // 0. checks, before any weights run
        let shape = self.check(request)?;
        let denoiser = self.denoiser_for_run()?;
        let vae = self.vae_for_run()?;
        // 1. conditioning, [negative, positive] for one batched CFG pass
        let (context, extra) = self.batch_conditioning(request, &shape)?;
        self.encoders_done();
        // 2. timesteps (flow matching's dynamic shift reads the token
        //    count), and where img2img/inpainting enters the schedule
        let [_, _, h, w] = shape.latent_shape;
        let unit = self.denoiser.latent_unit();
        scheduler.set_image_seq_len(((h / unit) * (w / unit)) as usize);
        if self.family() == ModelFamily::Flux {
            // FLUX's pipelines give the sampler sigmas of their own
            scheduler.set_custom_sigmas(&sd_scheduler::flux_sigmas(request.steps))?;
        }
        scheduler.set_timesteps(request.steps)?;
        let start = match init.map(|(_, s)| s).or(request.task.strength()) {
            Some(strength) => {
                let rounding = match self.family().is_flow_matching() {
                    true => StrengthRounding::SkipSteps,
                    false => StrengthRounding::RunSteps,
                };
                img2img_start(scheduler.as_ref(), request.steps, strength, rounding)?
            }
            None => 0,
        };
        // 3. latents from the run's own generator(s)
        let mut noise = BatchNoise::new(&request.seed)?;
        let prepared = match init {
            Some((latents, _)) => {
                self.noised_latents(latents, &shape, scheduler.as_ref(), start, &mut noise)?
            }
            None => {
                self.prepare_latents(request, &shape, &vae, scheduler.as_ref(), start, &mut noise)?
            }
        };
        let controlnets = self.controlnets_for_run()?;
        let control = match &request.control {
            Some(control) => Some(RunControl::new(
                controlnets.iter().map(|c| &**c).collect(),
                control,
                (shape.width, shape.height),
                shape.n,
                shape.cfg,
            )?),
            None => None,
        };
        let images = (shape.n as i64, shape.cfg);
        let image_tokens =
            self.encode_image_prompts(&request.image_prompts, images, self.devices().unet)?;
        // 4. denoising loop
        let loop_inputs = LoopInputs {
            denoiser: &denoiser,
            context: &context,
            extra: &extra,
            prepared: &prepared,
            start,
            guidance: (request.guidance_scale, request.guidance_rescale),
            cfg: shape.cfg,
            true_cfg: request.true_cfg_scale,
            control: control.as_ref(),
            image_tokens: image_tokens.as_ref(),
            skip_layers: request.skip_layer_guidance.as_ref(),
        };
        let (latents, unet_execution) =
            self.denoise(loop_inputs, scheduler.as_mut(), &mut noise, callback)?;
        // 5. decode (in low-memory mode the denoiser's copy is freed first),
        //    after handing the loop's freed activations back to the kernel
        //    (peak memory; sd_core::alloc)
        drop(denoiser);
        drop(control);
        drop(controlnets);
        self.denoiser_done();
        sd_core::alloc::release_freed_memory();
        let (images, decode_execution) = self.decode_with(&vae, &latents)?;
        Ok(Generation {
            images,
            latents,
            unet_execution,
            decode_execution,
        })
    }

    /// The denoising loop: the denoiser (CFG-batched), guidance, scheduler step.
    fn denoise(
        &self,
        inputs: LoopInputs<'_>,
        scheduler: &mut dyn Scheduler,
        noise: &mut BatchNoise,
        callback: StepCallback<'_>,
    ) -> Result<(Tensor, UNetExecution)> {
        let LoopInputs {
            prepared,
            start,
            guidance: (scale, rescale),
            cfg,
            ..
        } = inputs;
        let (device, dtype) = (self.devices().unet, self.denoiser.dtype());
        let mut latents = prepared.latents.to_device(device).to_kind(dtype);
        let timesteps = scheduler.timesteps().to_vec();
        // On the device once, so no step copies a timestep from the host.
        let timesteps_on_device = Tensor::from_slice(&timesteps).to_device(device);
        let mut runner = Runner::default();
        let total = timesteps.len() - start;
        for (step, i) in (start..timesteps.len()).enumerate() {
            let doubled = match cfg {
                true => Tensor::cat(&[&latents, &latents], 0),
                false => latents.shallow_clone(),
            };
            let scaled = scheduler.scale_model_input(&doubled, i)?;
            let input = match &prepared.inpaint_channels {
                Some((mask, masked)) => Tensor::cat(&[&scaled, mask, masked], 1),
                None => scaled.shallow_clone(),
            };
            let at = At {
                step: (step, total),
                index: i,
                t: timesteps[i],
                t_on_device: timesteps_on_device.get(i as i64),
            };
            let (prediction, guided_in_model) = match inputs.denoiser {
                RunDenoiser::UNet(unet) => {
                    let step_inputs = (&input, &scaled, &latents);
                    let p = self.unet_prediction(
                        unet,
                        &inputs,
                        &at,
                        step_inputs,
                        scheduler,
                        &mut runner,
                    )?;
                    (p, false)
                }
                RunDenoiser::Transformer(model) => {
                    let pooled = pooled(inputs.extra)?;
                    (
                        velocity(model, &input, at.t, inputs.context, pooled, &[])?,
                        false,
                    )
                }
                RunDenoiser::Flux(model) => (flux_prediction(model, &input, at.t, &inputs)?, true),
            };
            let mut guided = match cfg && !guided_in_model {
                true => guide(&prediction, scale, rescale),
                false => prediction.shallow_clone(),
            };
            if let Some(push) = skip_layer_push(&inputs, &at, &latents, &prediction)? {
                // (not in place: without CFG `guided` shares the prediction)
                guided = &guided + push;
            }
            latents = scheduler.step(&guided, i, &latents, noise)?;
            // 4b. inpainting with a plain denoiser: keep the unmasked part on
            //     the image's own noisy trajectory
            if let Some(blend) = &prepared.blend {
                let proper = match timesteps.get(i + 1) {
                    Some(_) => scheduler.add_noise(&blend.image_latents, &blend.noise, i + 1)?,
                    None => blend.image_latents.shallow_clone(),
                };
                latents = (1.0 - &blend.mask) * proper + &blend.mask * &latents;
            }
            let info = StepInfo {
                step,
                total,
                timestep: timesteps[i],
                latents: &latents,
                denoised: scheduler.denoised(),
            };
            if callback(info).is_break() {
                return Err(PipelineError::Cancelled { step });
            }
        }
        let execution = match (runner.compiled, &runner.eager) {
            (Some(execution), _) => execution,
            (None, eager) => eager
                .as_ref()
                .map_or(UNetExecution::Eager, UNetRunner::execution),
        };
        Ok((latents, execution))
    }

    /// One UNet prediction: with ControlNet residuals (eager: they change
    /// every step), or through the runner (a replayed CUDA graph when asked).
    fn unet_prediction(
        &self,
        unet: &UNet2DConditionModel,
        inputs: &LoopInputs<'_>,
        at: &At,
        (input, scaled, latents): (&Tensor, &Tensor, &Tensor),
        scheduler: &dyn Scheduler,
        runner: &mut Runner,
    ) -> Result<Tensor> {
        let (context, added, t) = (inputs.context, inputs.extra.added(), &at.t_on_device);
        match (inputs.control, inputs.image_tokens) {
            (None, None) => {
                if !self.compiled.unets.is_empty() {
                    match crate::compiled::fitting(
                        &self.compiled.unets,
                        self.loras(),
                        input,
                        context,
                    ) {
                        Ok(compiled) => {
                            runner.compiled = Some(UNetExecution::Compiled);
                            return compiled.run(input, t, context, added);
                        }
                        Err(why) => runner.compiled = Some(UNetExecution::EagerNotCompiled(why)),
                    }
                }
                let runner = runner.eager.get_or_insert_with(|| {
                    UNetRunner::new(self.cuda_graphs, unet, input, t, context, added)
                });
                runner.run(unet, input, t, context, added)
            }
            // per-step inputs of their own: eager
            (control, images) => {
                if !self.compiled.unets.is_empty() {
                    let why = "ControlNet residuals and image prompts are inputs the compiled \
                               package does not take";
                    runner.compiled = Some(UNetExecution::EagerNotCompiled(why.into()));
                }
                let residuals = match control {
                    Some(control) => {
                        let single = || Ok(scheduler.scale_model_input(latents, at.index)?);
                        control.residuals(at.step, scaled, single, t, context, added, inputs.cfg)?
                    }
                    None => None,
                };
                let conditions = sd_unet::Conditions::new(added, residuals.as_ref(), images);
                Ok(unet.forward_with(input, t, context, &conditions)?)
            }
        }
    }

    /// Decodes final latents (as in [`Generation::latents`]) to 8-bit images,
    /// as the last step of a generation does.
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        Ok(self.decode_with(&*self.vae_for_run()?, latents)?.0)
    }

    /// The images, and whether a compiled decoder made them.
    fn decode_with(
        &self,
        vae: &AutoencoderKL,
        latents: &Tensor,
    ) -> Result<(Vec<RgbImage>, DecodeExecution)> {
        if let Some(tiny) = self.tiny_for_decode() {
            let images = crate::preview::decode_tiny(tiny, latents)?;
            return Ok((images, DecodeExecution::Eager));
        }
        // (in the VAE's dtype before unscaling, as diffusers: an upcast SDXL
        // VAE gets f32 latents to divide)
        let z = latents.to_device(self.devices().vae).to_kind(vae.dtype());
        let packages = DecoderPackages::new(&self.compiled.decoders);
        let decoded = vae.decode_via(&vae.unscale_latents(&z), packages.call())?;
        Ok((tensor_to_images(&decoded)?, packages.execution()))
    }
}

/// How the UNet runs: eager or a CUDA graph (`eager`), or a compiled
/// package (`compiled` says whether it was used, or why not).
#[derive(Default)]
struct Runner {
    eager: Option<UNetRunner>,
    compiled: Option<UNetExecution>,
}

/// What the loop reads.
struct LoopInputs<'a> {
    denoiser: &'a RunDenoiser<'a>,
    context: &'a Tensor,
    extra: &'a Extra,
    prepared: &'a Prepared,
    start: usize,
    /// (scale, rescale)
    guidance: (f64, f64),
    cfg: bool,
    /// FLUX's true CFG scale (its `guidance` is the distilled one).
    true_cfg: f64,
    control: Option<&'a RunControl<'a>>,
    image_tokens: Option<&'a sd_unet::ImageTokens>,
    skip_layers: Option<&'a crate::SkipLayerGuidance>,
}

/// Where the loop is: (step, steps this run makes), the index into the
/// sampler's timesteps, and the timestep on the host and on the device.
struct At {
    step: (usize, usize),
    index: usize,
    t: f64,
    t_on_device: Tensor,
}

/// SD3's pooled text, which a transformer run always has.
fn pooled(extra: &Extra) -> Result<&Tensor> {
    match extra {
        Extra::Pooled(p) => Ok(p),
        _ => Err(PipelineError::request(
            Field::Embeddings,
            "SD3 needs pooled embeddings",
        )),
    }
}

/// SD3.5's skip-layer guidance on the steps its window covers, as diffusers:
/// the positive prompt once more with the chosen blocks left out, and
/// `(text - skipped) * scale` to add to the guided prediction.
fn skip_layer_push(
    inputs: &LoopInputs<'_>,
    at: &At,
    latents: &Tensor,
    prediction: &Tensor,
) -> Result<Option<Tensor>> {
    let (Some(slg), RunDenoiser::Transformer(model), true) =
        (inputs.skip_layers, inputs.denoiser, inputs.cfg)
    else {
        return Ok(None);
    };
    let (step, total) = at.step;
    if !slg.applies(step, total) {
        return Ok(None);
    }
    let positive = |t: &Tensor| t.chunk(2, 0)[1].shallow_clone();
    let (context, pooled) = (positive(inputs.context), positive(pooled(inputs.extra)?));
    let skipped = velocity(model, latents, at.t, &context, &pooled, &slg.layers)?;
    Ok(Some((positive(prediction) - skipped) * slg.scale))
}

/// FLUX's prediction: one pass with the distilled guidance, or with true
/// CFG the prompt's pass and the negative's one after the other, as
/// diffusers runs them (`input` and the text doubled, [negative, prompt]),
/// combined as `negative + true_cfg * (prompt - negative)`.
fn flux_prediction(
    model: &sd_flux::FluxTransformer2DModel,
    input: &Tensor,
    t: f64,
    inputs: &LoopInputs<'_>,
) -> Result<Tensor> {
    let (context, pooled) = (inputs.context, pooled(inputs.extra)?);
    let guidance = model.config().guidance_embeds.then_some(inputs.guidance.0);
    if !inputs.cfg {
        return flux_velocity(model, input, t, (context, pooled), guidance);
    }
    let n = input.size()[0] / 2;
    let half = |x: &Tensor, i: i64| x.narrow(0, i * n, n);
    let pass = |i: i64| {
        let text = (&half(context, i), &half(pooled, i));
        flux_velocity(model, &half(input, i), t, text, guidance)
    };
    let (prompt, negative) = (pass(1)?, pass(0)?);
    Ok(&negative + (&prompt - &negative) * inputs.true_cfg)
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
