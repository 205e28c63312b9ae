//! The builder: every loading option, checked together, then `build`.

mod t5;

use std::path::{Path, PathBuf};

use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use sd_scheduler::{SamplerKind, SchedulerConfig, TimestepSpacing};
use sd_vae::AutoencoderKL;
use tch::{Device, Kind};

use crate::adapters::{Adapters, LoraSpec};
use crate::components::{Components, Devices};
use crate::control::ControlNets;
use crate::encoder_files::EncoderFiles;
use crate::error::{PipelineError, Result};
use crate::front::Field;
use crate::model::ModelFamily;
use crate::pipeline::StableDiffusion;
use crate::placement::Placement;
use crate::preview::TinyVae;

/// Options for [`StableDiffusion`]; see [`StableDiffusion::builder`].
#[derive(Debug, Clone)]
pub struct StableDiffusionBuilder {
    model_dir: Option<PathBuf>,
    single_file: Option<PathBuf>,
    config_dir: Option<PathBuf>,
    hub_repo: Option<String>,
    hub: crate::hub::HubOptions,
    devices: Devices,
    dtype: Kind,
    variant: Option<String>,
    sampler: Option<SamplerKind>,
    scheduler_config: Option<SchedulerConfig>,
    timestep_spacing: Option<TimestepSpacing>,
    vae_tiling: bool,
    vae_slicing: bool,
    low_memory: bool,
    cuda_graphs: bool,
    channels_last: bool,
    loras: Vec<LoraSpec>,
    embeddings: Vec<(PathBuf, Option<String>)>,
    controlnets: Vec<PathBuf>,
    ip_adapters: Vec<(PathBuf, PathBuf)>,
    tiny_vae: Option<(PathBuf, crate::preview::TinyVaeUse)>,
    t5: Option<bool>,
    encoder_files: EncoderFiles,
    /// Where compiled packages are looked for (`compiled`'s setters).
    pub(crate) compiled: Option<PathBuf>,
}

impl Default for StableDiffusionBuilder {
    fn default() -> Self {
        StableDiffusionBuilder {
            model_dir: None,
            single_file: None,
            config_dir: None,
            hub_repo: None,
            hub: crate::hub::HubOptions::default(),
            devices: Devices::all(Device::Cpu),
            dtype: Kind::Float,
            variant: None,
            sampler: None,
            scheduler_config: None,
            timestep_spacing: None,
            t5: None,
            encoder_files: EncoderFiles::new(),
            vae_tiling: false,
            vae_slicing: false,
            low_memory: false,
            cuda_graphs: false,
            channels_last: false,
            loras: Vec::new(),
            embeddings: Vec::new(),
            controlnets: Vec::new(),
            ip_adapters: Vec::new(),
            tiny_vae: None,
            compiled: None,
        }
    }
}

impl StableDiffusionBuilder {
    /// A diffusers model folder (model_index.json, tokenizer/, text_encoder/,
    /// unet/, vae/, scheduler/ and for SDXL tokenizer_2/, text_encoder_2/).
    pub fn model_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.model_dir = Some(dir.into());
        self
    }

    /// The model `source` names (see [`ModelSource::detect`]).
    ///
    /// [`ModelSource::detect`]: crate::front::ModelSource::detect
    pub fn source(self, source: &crate::front::ModelSource) -> Self {
        source.apply(self)
    }

    /// A single-file checkpoint (CompVis/LDM layout .safetensors); SD1, SD2,
    /// SDXL and inpainting are recognised from its keys and shapes.
    pub fn single_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.single_file = Some(path.into());
        self
    }

    /// For a single file: take configs and tokenizers from this diffusers
    /// folder instead of the built-in SD1.5 / SD2.1 / SDXL presets.
    pub fn config_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config_dir = Some(dir.into());
        self
    }

    /// A Hugging Face repo id ("org/name") in the diffusers layout, resolved
    /// through the local hub cache; works offline when cached.
    pub fn hub_repo(mut self, repo_id: impl Into<String>) -> Self {
        self.hub_repo = Some(repo_id.into());
        self
    }

    /// Use this hub cache folder instead of `$HF_HOME/hub`.
    pub fn hub_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.hub.cache = Some(dir.into());
        self
    }

    /// Never contact the hub (also `HF_HUB_OFFLINE=1`).
    pub fn offline(mut self, offline: bool) -> Self {
        self.hub.offline = offline;
        self
    }

    /// Every component on `device`.
    pub fn device(mut self, device: Device) -> Self {
        self.devices = Devices::all(device);
        self
    }

    /// A device per component.
    pub fn devices(mut self, devices: Devices) -> Self {
        self.devices = devices;
        self
    }

    /// Weights and compute dtype: f32, f16 or bf16.
    pub fn dtype(mut self, dtype: Kind) -> Self {
        self.dtype = dtype;
        self
    }

    /// Load `*.{variant}.safetensors` files (for example "fp16").
    pub fn variant(mut self, variant: impl Into<String>) -> Self {
        self.variant = Some(variant.into());
        self
    }

    /// The sampler, configured from the folder's scheduler config (as
    /// diffusers' `Class.from_config`); by default the folder's own class.
    /// [`StableDiffusion::sampler`] reads it back.
    pub fn sampler(mut self, sampler: SamplerKind) -> Self {
        self.sampler = Some(sampler);
        self
    }

    /// The former name of [`sampler`](Self::sampler).
    #[deprecated(since = "0.1.1", note = "renamed `sampler`, as the pipeline's getter")]
    pub fn scheduler(self, sampler: SamplerKind) -> Self {
        self.sampler(sampler)
    }

    /// Replaces the folder's scheduler config.
    pub fn scheduler_config(mut self, config: SchedulerConfig) -> Self {
        self.scheduler_config = Some(config);
        self
    }

    /// Overrides the scheduler config's `timestep_spacing` (few-step
    /// models such as SD-Turbo want `Trailing`).
    pub fn timestep_spacing(mut self, spacing: TimestepSpacing) -> Self {
        self.timestep_spacing = Some(spacing);
        self
    }

    /// Tiled VAE encode/decode for large images in bounded memory.
    pub fn vae_tiling(mut self, on: bool) -> Self {
        self.vae_tiling = on;
        self
    }

    /// Low-memory mode: weights stay in host memory; the UNet and the VAE
    /// are copied to their device only while they run (text encoders run on
    /// the CPU), and the VAE decodes in tiles, one image at a time.
    pub fn low_memory(mut self, on: bool) -> Self {
        self.low_memory = on;
        self
    }

    /// Capture the UNet step as a CUDA graph and replay it (CUDA devices
    /// only; falls back to eager execution when capture fails). Opt-in until
    /// checked on more GPUs.
    pub fn cuda_graphs(mut self, on: bool) -> Self {
        self.cuda_graphs = on;
        self
    }

    /// Lay the UNet's and the VAE's convolution weights out channels-last
    /// (NHWC), so that activations follow: cuDNN's fp16 tensor-core kernels
    /// prefer it; on the CPU it is about even. Results differ from the
    /// default layout only in rounding (another summation order).
    pub fn channels_last(mut self, on: bool) -> Self {
        self.channels_last = on;
        self
    }

    /// Merge a LoRA at `scale` once loaded (repeatable; merged in order).
    /// [`StableDiffusion::lora_reports`] says what each merged;
    /// [`StableDiffusion::set_loras`] swaps them later without a reload.
    pub fn lora(mut self, path: impl Into<PathBuf>, scale: f64) -> Self {
        self.loras.push(LoraSpec::new(path, scale));
        self
    }

    /// Load a textual-inversion embedding once loaded (repeatable);
    /// `token` replaces the file's own.
    pub fn embedding(mut self, path: impl Into<PathBuf>, token: Option<&str>) -> Self {
        self.embeddings
            .push((path.into(), token.map(str::to_string)));
        self
    }

    /// Load a ControlNet once the model is loaded (repeatable; requests
    /// give one control image per ControlNet, in this order). See
    /// An IP-Adapter file and its image encoder folder, loaded at build
    /// (repeatable; requests give one [`crate::ImagePrompt`] per adapter,
    /// in this order): [`StableDiffusion::load_ip_adapter`].
    pub fn ip_adapter(
        mut self,
        path: impl Into<PathBuf>,
        image_encoder: impl Into<PathBuf>,
    ) -> Self {
        self.ip_adapters.push((path.into(), image_encoder.into()));
        self
    }

    /// [`StableDiffusion::load_controlnet`].
    pub fn controlnet(mut self, path: impl Into<PathBuf>) -> Self {
        self.controlnets.push(path.into());
        self
    }

    /// Load a tiny autoencoder (TAESD) from `dir` for previews, and for
    /// the final decode too with [`TinyVaeUse::PreviewsAndDecode`]
    /// (much faster and lighter than the full VAE, a little softer). See
    /// [`StableDiffusion::load_tiny_vae`].
    ///
    /// [`TinyVaeUse::PreviewsAndDecode`]: crate::TinyVaeUse::PreviewsAndDecode
    pub fn tiny_vae(mut self, dir: impl Into<PathBuf>, usage: crate::TinyVaeUse) -> Self {
        self.tiny_vae = Some((dir.into(), usage));
        self
    }

    /// SD3's T5 encoder. Unset: loaded when the model has one. `true`:
    /// required (a model without one is refused). `false`: left out (about
    /// 10 GB in f16 for T5-XXL); its states are zeros, as diffusers' with
    /// `text_encoder_3=None`, and prompts reach the model through the two
    /// CLIP encoders only.
    pub fn t5(mut self, on: bool) -> Self {
        self.t5 = Some(on);
        self
    }

    /// Text encoders from files of their own (ComfyUI's `clip_l`, `clip_g`,
    /// `t5xxl` files), in place of the model's or where it has none: for
    /// SD3 single files (Stability's hold no encoders) and diffusers folders.
    /// A T5 file makes T5 required.
    pub fn encoder_files(mut self, files: EncoderFiles) -> Self {
        self.encoder_files = files;
        self
    }

    /// Decode a batch one image at a time.
    pub fn vae_slicing(mut self, on: bool) -> Self {
        self.vae_slicing = on;
        self
    }

    /// Loads and checks everything; errors name what is missing or wrong.
    pub fn build(self) -> Result<StableDiffusion> {
        self.check_options()?;
        // A dtype libtorch cannot run here is refused in one line now,
        // rather than by a panic inside the first attention of a run.
        let d = self.devices;
        if self.low_memory || [d.text_encoder, d.unet, d.vae].contains(&Device::Cpu) {
            sd_core::kernels::check_attention(self.dtype, Device::Cpu)?;
        }
        let mut components = self.load_components()?;
        self.check_t5(&components)?;
        if let (true, Some(unet)) = (self.channels_last, components.denoiser.unet()) {
            sd_core::nn::convs_to_channels_last(unet.var_store());
        }
        let family = components.index.family;
        self.set_up_vae(&mut components.vae, family);
        let (sampler, scheduler_config) =
            self.choose_sampler(&components.source, components.scheduler, family)?;
        if matches!(self.devices.unet, Device::Cuda(_)) {
            // Fixed shapes in the loop: let cuDNN pick its fastest kernels once.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let mut pipeline = StableDiffusion {
            dir: components.source,
            index: components.index,
            text: components.text,
            text_2: components.text_2,
            t5: components.t5,
            denoiser: components.denoiser,
            vae: Frozen::new(components.vae),
            scheduler_config,
            sampler,
            cuda_graphs: self.cuda_graphs,
            placement: self.placement(),
            adapters: Adapters::default(),
            controlnets: ControlNets::default(),
            ip_adapters: Default::default(),
            compiled: Default::default(),
            tiny_vae: TinyVae::default(),
        };
        if let Some((dir, usage)) = &self.tiny_vae {
            pipeline.load_tiny_vae(dir, *usage)?;
        }
        for (path, encoder) in &self.ip_adapters {
            pipeline.load_ip_adapter(path, encoder)?;
        }
        for path in &self.controlnets {
            pipeline.load_controlnet(path)?;
        }
        for (path, token) in &self.embeddings {
            pipeline.load_embedding(path, token.as_deref())?;
        }
        if !self.loras.is_empty() {
            pipeline.set_loras(&self.loras)?;
        }
        if let Some(dir) = &self.compiled {
            pipeline.use_compiled_in(dir)?;
        }
        Ok(pipeline)
    }

    /// Options that cannot be used, or not together: refused before any
    /// file is read, naming both.
    fn check_options(&self) -> Result<()> {
        if !matches!(self.dtype, Kind::Float | Kind::Half | Kind::BFloat16) {
            return Err(PipelineError::request(
                Field::Dtype,
                format!("{:?} is not f32, f16 or bf16", self.dtype),
            ));
        }
        let sources: Vec<&str> = [
            ("model_dir", self.model_dir.is_some()),
            ("single_file", self.single_file.is_some()),
            ("hub_repo", self.hub_repo.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect();
        let conflict = if sources.len() > 1 {
            Some(format!(
                "{} are alternatives: give one model source",
                sources.join(" and ")
            ))
        } else if self.config_dir.is_some() && self.single_file.is_none() {
            Some("config_dir is for a single_file model: a folder has its own configs".into())
        } else if self.variant.is_some() && self.single_file.is_some() {
            Some("variant picks a folder's weight files: a single_file has one".into())
        } else if self.t5 == Some(false) && self.encoder_files.t5.is_some() {
            Some("T5 is left out (t5 false) but a T5 file was given".into())
        } else {
            None
        };
        match conflict {
            Some(message) => Err(PipelineError::request(Field::Model, message)),
            None => Ok(()),
        }
    }

    /// Where the components run and keep their weights.
    fn placement(&self) -> Placement {
        Placement::new(self.devices, self.low_memory, self.channels_last)
    }

    /// The model source: a single file, a hub repo or a folder. Low-memory
    /// pipelines keep every weight in host memory.
    fn load_components(&self) -> Result<Components> {
        let devices = self.placement().homes();
        let variant = self.variant.as_deref();
        if let Some(file) = &self.single_file {
            let config_dir = self.config_dir.as_deref();
            return crate::single_file::load(
                file,
                config_dir,
                devices,
                self.dtype,
                (self.t5_loading(), &self.encoder_files),
            );
        }
        let dir = match (&self.hub_repo, &self.model_dir) {
            (Some(repo), _) => crate::hub::resolve(repo, variant, &self.hub)?,
            (None, Some(dir)) => dir.clone(),
            (None, None) => {
                return Err(PipelineError::request(
                    Field::Model,
                    "no model folder or single file given",
                ))
            }
        };
        let encoders = (self.t5_loading(), &self.encoder_files);
        Components::from_folder_with(&dir, devices, self.dtype, variant, encoders)
    }

    /// The VAE's dtype, layout, tiling and slicing.
    fn set_up_vae(&self, vae: &mut AutoencoderKL, family: ModelFamily) {
        if family != ModelFamily::StableDiffusionXl && vae.dtype() != self.dtype {
            // diffusers' SD1/SD2/SD3 pipelines decode in the pipeline's
            // dtype; only SDXL's honour force_upcast. (A half-precision decode that
            // overflows is redone in f32 here either way.)
            vae.set_dtype(self.dtype);
        }
        if self.channels_last {
            sd_core::nn::convs_to_channels_last(vae.var_store());
        }
        if self.vae_tiling || self.low_memory {
            vae.set_tiling(Some(vae.default_tiling()));
        }
        vae.set_slicing(self.vae_slicing || self.low_memory);
    }

    /// The sampler asked for, or the model's own scheduler class; checked
    /// against its config now rather than at the first generation.
    fn choose_sampler(
        &self,
        source: &Path,
        model_config: SchedulerConfig,
        family: ModelFamily,
    ) -> Result<(SamplerKind, SchedulerConfig)> {
        let mut config = self.scheduler_config.clone().unwrap_or(model_config);
        if let Some(spacing) = self.timestep_spacing {
            config.timestep_spacing = Some(spacing);
        }
        let sampler = match self.sampler {
            Some(sampler) => sampler,
            None => config
                .class_name
                .as_deref()
                .and_then(SamplerKind::from_class_name)
                .ok_or_else(|| {
                    PipelineError::model(
                        source.join("scheduler/scheduler_config.json"),
                        format!(
                            "unsupported scheduler class {:?}; choose a sampler explicitly",
                            config.class_name
                        ),
                    )
                })?,
        };
        crate::pipeline::check_sampler_fits(sampler, family)?;
        sd_scheduler::build(sampler, &config)?;
        Ok((sampler, config))
    }
}
