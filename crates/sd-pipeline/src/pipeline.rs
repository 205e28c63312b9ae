//! The loaded pipeline: its models, sampler and features, and their getters.

use std::path::{Path, PathBuf};

use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use sd_mmdit::SD3Transformer2DModel;
use sd_scheduler::{SamplerKind, Scheduler, SchedulerConfig};
use sd_unet::UNet2DConditionModel;
use sd_vae::AutoencoderKL;

use crate::adapters::Adapters;
use crate::builder::StableDiffusionBuilder;
use crate::components::{Devices, TextTower};
use crate::control::ControlNets;
use crate::cow::Cow;
use crate::denoiser::{Denoiser, RunDenoiser};
use crate::error::Result;
use crate::model::{ModelFamily, ModelIndex};
use crate::placement::Placement;
use crate::preview::TinyVae;
use crate::t5::T5Tower;

/// A loaded Stable Diffusion 1.x / 2.x / XL / 3.x pipeline. It is `Send + Sync`:
/// the weights are shared read-only, and every generation owns its
/// scheduler and noise, so several threads may generate at once.
pub struct StableDiffusion {
    pub(crate) dir: PathBuf,
    pub(crate) index: ModelIndex,
    pub(crate) text: TextTower,
    pub(crate) text_2: Option<TextTower>,
    pub(crate) t5: Option<T5Tower>,
    pub(crate) denoiser: Denoiser,
    pub(crate) vae: Frozen<AutoencoderKL>,
    pub(crate) scheduler_config: SchedulerConfig,
    pub(crate) sampler: SamplerKind,
    pub(crate) cuda_graphs: bool,
    // Each feature's state, private to its module.
    pub(crate) placement: Placement,
    pub(crate) adapters: Adapters,
    pub(crate) controlnets: ControlNets,
    pub(crate) ip_adapters: crate::image_prompt::IpAdapters,
    pub(crate) compiled: crate::compiled::Compiled,
    pub(crate) tiny_vae: TinyVae,
}

impl std::fmt::Debug for StableDiffusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableDiffusion")
            .field("dir", &self.dir)
            .field("class", &self.index.class_name)
            .field("sampler", &self.sampler)
            .finish()
    }
}

impl StableDiffusion {
    /// Options for loading a pipeline; `build()` loads it.
    pub fn builder() -> StableDiffusionBuilder {
        StableDiffusionBuilder::default()
    }

    /// The folder or file the pipeline was loaded from.
    pub fn model_dir(&self) -> &Path {
        &self.dir
    }

    /// SD (1.x, 2.x), SDXL or SD3.
    pub fn family(&self) -> ModelFamily {
        self.index.family
    }

    /// The pipeline's sampler.
    pub fn sampler(&self) -> SamplerKind {
        self.sampler
    }

    /// Pixels per latent (8 for SD).
    pub fn vae_scale_factor(&self) -> i64 {
        self.vae.config().downscale()
    }

    /// Pixels per step of the size grid: the VAE factor times the
    /// transformer's patch (8 for SD1/SD2/SDXL, 16 for SD3).
    pub fn size_unit(&self) -> u32 {
        (8.max(self.vae_scale_factor()) * self.denoiser.latent_unit()) as u32
    }

    /// T5's token count when a request gives none: diffusers' `FluxPipeline`
    /// default, 512, for FLUX.1-dev (a guidance embedding); 256 for
    /// FLUX.1-schnell (its training length) and SD3 (diffusers' default).
    pub fn default_max_sequence_length(&self) -> usize {
        match &self.denoiser {
            Denoiser::Flux(flux) if flux.config().guidance_embeds => 512,
            _ => 256,
        }
    }

    /// The request's T5 token count, or the model's default.
    pub(crate) fn max_sequence_length(&self, request: &crate::Request) -> usize {
        (request.max_sequence_length).unwrap_or_else(|| self.default_max_sequence_length())
    }

    /// Steps and guidance for frontends to use when the user gives none,
    /// where the model has its own: FLUX.1-dev 28 steps at distilled
    /// guidance 3.5 (diffusers' `FluxPipeline` defaults), FLUX.1-schnell 4
    /// steps (its model card; guidance unused). `None` for the other
    /// families: no one default holds for them (A1111 takes 20 steps at 7,
    /// diffusers 50 at 7.5), so each frontend keeps its own.
    pub fn model_defaults(&self) -> Option<ModelDefaults> {
        match &self.denoiser {
            Denoiser::Flux(flux) if flux.config().guidance_embeds => Some(ModelDefaults {
                steps: 28,
                guidance: 3.5,
            }),
            Denoiser::Flux(_) => Some(ModelDefaults {
                steps: 4,
                guidance: 0.0,
            }),
            _ => None,
        }
    }

    /// The model's native image size: the denoiser's sample_size x the VAE factor.
    pub fn default_size(&self) -> (u32, u32) {
        let side = self.denoiser.sample_size() * self.vae_scale_factor();
        (side as u32, side as u32)
    }

    /// Whether the denoiser takes the mask and masked-image latents as
    /// channels (9-channel UNets, 33-channel SD3 transformers).
    pub fn is_inpainting_unet(&self) -> bool {
        self.denoiser.in_channels() > self.vae.config().latent_channels
    }

    /// The model's scheduler config (after any the builder was given): the
    /// training schedule a sampler of your own needs
    /// (`sd_scheduler::schedule::BetaConfig::from_config`).
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// A fresh scheduler of the configured sampler (each run owns one).
    pub fn new_scheduler(&self) -> Result<Box<dyn Scheduler>> {
        Ok(sd_scheduler::build(self.sampler, &self.scheduler_config)?)
    }

    /// A fresh scheduler of another sampler on the folder's config.
    pub fn new_scheduler_of(&self, sampler: SamplerKind) -> Result<Box<dyn Scheduler>> {
        check_sampler_fits(sampler, self.family())?;
        Ok(sd_scheduler::build(sampler, &self.scheduler_config)?)
    }

    /// The denoiser: a UNet, or SD3's transformer.
    pub fn denoiser(&self) -> &Denoiser {
        &self.denoiser
    }

    /// The UNet (SD1.x, SD2.x, SDXL; None for SD3).
    pub fn unet(&self) -> Option<&UNet2DConditionModel> {
        self.denoiser.unet()
    }

    /// SD3's transformer (None for UNet models).
    pub fn transformer(&self) -> Option<&SD3Transformer2DModel> {
        self.denoiser.transformer()
    }

    /// SD3's T5 encoder, when loaded (held, or read as it runs in
    /// low-memory pipelines).
    pub fn text_encoder_3(&self) -> Option<&crate::t5::T5Encoder> {
        self.t5.as_ref().map(|(_, e)| e)
    }

    /// The (first) text encoder: CLIP-L for SDXL and SD3.
    pub fn text_encoder(&self) -> &sd_clip::ClipTextModel {
        &self.text.1
    }

    /// SDXL's and SD3's second text encoder (OpenCLIP bigG).
    pub fn text_encoder_2(&self) -> Option<&sd_clip::ClipTextModel> {
        self.text_2.as_ref().map(|(_, e)| &**e)
    }

    /// The VAE.
    pub fn vae(&self) -> &AutoencoderKL {
        &self.vae
    }

    /// Where each component runs.
    pub fn devices(&self) -> Devices {
        self.placement.devices()
    }

    /// The denoiser on its compute device: a temporary copy in low-memory mode.
    /// The end of a run's encoding phase (see [`Placement::done_with`]).
    pub(crate) fn encoders_done(&self) {
        let device = self.placement.devices().text_encoder;
        for tower in std::iter::once(&self.text).chain(&self.text_2) {
            self.placement.done_with(&*tower.1, device);
        }
        if let Some(crate::t5::T5Encoder::Resident(t5)) = self.t5.as_ref().map(|t| &t.1) {
            self.placement.done_with(&**t5, device);
        }
    }

    /// The end of a run's denoising phase (see [`Placement::done_with`]).
    pub(crate) fn denoiser_done(&self) {
        let device = self.placement.devices().unet;
        match &self.denoiser {
            Denoiser::UNet(m) => self.placement.done_with(&**m, device),
            Denoiser::Transformer(m) => self.placement.done_with(&**m, device),
            Denoiser::Flux(m) => self.placement.done_with(&**m, device),
        }
    }

    pub(crate) fn denoiser_for_run(&self) -> Result<RunDenoiser<'_>> {
        let device = self.placement.devices().unet;
        Ok(match &self.denoiser {
            Denoiser::UNet(m) => RunDenoiser::UNet(self.placement.for_run(&**m, device, true)?),
            Denoiser::Transformer(m) => {
                RunDenoiser::Transformer(self.placement.for_run(&**m, device, true)?)
            }
            Denoiser::Flux(m) => RunDenoiser::Flux(self.placement.for_run(&**m, device, true)?),
        })
    }

    /// The VAE on its compute device: a temporary copy in low-memory mode.
    pub(crate) fn vae_for_run(&self) -> Result<Cow<'_, AutoencoderKL>> {
        self.placement
            .for_run(&*self.vae, self.placement.devices().vae, true)
    }
}

/// SD1.x, SD2.x and SDXL predict noise (or v) on a beta schedule, SD3
/// velocity by flow matching: a sampler of the other kind would run, and
/// draw nonsense.
pub(crate) fn check_sampler_fits(sampler: SamplerKind, family: ModelFamily) -> Result<()> {
    let message = match (sampler.is_flow_matching(), family.is_flow_matching()) {
        (true, false) => format!(
            "{sampler} is for flow-matching models (SD3); SD1.x, SD2.x and SDXL take the \
             other samplers"
        ),
        (false, true) => {
            let known: Vec<String> = SamplerKind::FLOW_MATCHING
                .iter()
                .map(|s| s.to_string())
                .collect();
            format!(
                "{sampler} is for SD1.x/SD2.x/SDXL; SD3 samples by flow matching: {}",
                known.join(", ")
            )
        }
        _ => return Ok(()),
    };
    Err(crate::PipelineError::request(
        crate::front::Field::Sampler,
        message,
    ))
}

/// A model's own steps and guidance ([`StableDiffusion::model_defaults`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ModelDefaults {
    /// Denoising steps.
    pub steps: usize,
    /// The guidance scale (FLUX.1-dev's distilled guidance).
    pub guidance: f64,
}
