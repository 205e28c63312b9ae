//! The loaded pipeline: its models, sampler and features, and their getters.

use std::path::{Path, PathBuf};

use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use sd_scheduler::{SamplerKind, Scheduler, SchedulerConfig};
use sd_unet::UNet2DConditionModel;
use sd_vae::AutoencoderKL;

use crate::adapters::Adapters;
use crate::builder::StableDiffusionBuilder;
use crate::components::{Devices, TextTower};
use crate::control::ControlNets;
use crate::cow::Cow;
use crate::error::Result;
use crate::model::{ModelFamily, ModelIndex};
use crate::placement::Placement;
use crate::preview::TinyVae;

/// A loaded Stable Diffusion 1.x / 2.x / XL pipeline. It is `Send + Sync`:
/// the weights are shared read-only, and every generation owns its
/// scheduler and noise, so several threads may generate at once.
pub struct StableDiffusion {
    pub(crate) dir: PathBuf,
    pub(crate) index: ModelIndex,
    pub(crate) text: TextTower,
    pub(crate) text_2: Option<TextTower>,
    pub(crate) unet: Frozen<UNet2DConditionModel>,
    pub(crate) vae: Frozen<AutoencoderKL>,
    pub(crate) scheduler_config: SchedulerConfig,
    pub(crate) sampler: SamplerKind,
    pub(crate) cuda_graphs: bool,
    // Each feature's state, private to its module.
    pub(crate) placement: Placement,
    pub(crate) adapters: Adapters,
    pub(crate) controlnets: ControlNets,
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

    /// SD (1.x, 2.x) or SDXL.
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

    /// The model's native image size: the UNet's sample_size x the VAE factor.
    pub fn default_size(&self) -> (u32, u32) {
        let side = self.unet.config().sample_size.unwrap_or(64) * self.vae_scale_factor();
        (side as u32, side as u32)
    }

    /// Whether the UNet takes 9 channels (latents, mask, masked image).
    pub fn is_inpainting_unet(&self) -> bool {
        self.unet.config().in_channels == 9
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
        check_sampler_fits(sampler)?;
        Ok(sd_scheduler::build(sampler, &self.scheduler_config)?)
    }

    /// The UNet.
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }

    /// The (first) text encoder.
    pub fn text_encoder(&self) -> &sd_clip::ClipTextModel {
        &self.text.1
    }

    /// SDXL's second text encoder.
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

    /// The UNet on its compute device: a temporary copy in low-memory mode.
    pub(crate) fn unet_for_run(&self) -> Result<Cow<'_, UNet2DConditionModel>> {
        self.placement
            .for_run(&*self.unet, self.placement.devices().unet, true)
    }

    /// The VAE on its compute device: a temporary copy in low-memory mode.
    pub(crate) fn vae_for_run(&self) -> Result<Cow<'_, AutoencoderKL>> {
        self.placement
            .for_run(&*self.vae, self.placement.devices().vae, true)
    }
}

/// SD1.x, SD2.x and SDXL predict noise (or v) on a beta schedule: a
/// flow-matching sampler (for SD3-like models) would run, and draw nonsense.
pub(crate) fn check_sampler_fits(sampler: SamplerKind) -> Result<()> {
    if sampler.is_flow_matching() {
        return Err(crate::PipelineError::request(
            crate::front::Field::Sampler,
            format!(
                "{sampler} is for flow-matching models (SD3); SD1.x, SD2.x and SDXL take the \
                 other samplers"
            ),
        ));
    }
    Ok(())
}
