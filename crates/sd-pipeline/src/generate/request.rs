//! What a generation is asked for and what it gives back.

use image::{GrayImage, RgbImage};
use sd_clip::PromptOptions;
use tch::Tensor;

use crate::graph::UNetExecution;

/// What to generate. `Request::new(prompt)` gives diffusers' defaults; set
/// fields or use the small builders ([`Request::with_seed`],
/// [`Request::image_to_image`], [`Request::inpaint`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Request {
    /// The prompt (A1111-style weighting when `prompt_options` asks for it).
    pub prompt: String,
    /// `None`: "" (SD) or zeros (SDXL with force_zeros_for_empty_prompt).
    pub negative_prompt: Option<String>,
    /// Precomputed conditioning instead of the prompts: one prompt's
    /// (batch 1, repeated for every image) or one per image (batch
    /// `num_images`, see [`PromptEmbeddings::per_image`]).
    pub embeddings: Option<PromptEmbeddings>,
    /// Output width in pixels; `None` is the model's native size (or the
    /// init image's). A multiple of the model's size unit (8 for SD).
    pub width: Option<u32>,
    /// Output height in pixels; as `width`.
    pub height: Option<u32>,
    /// Denoising steps (at least 1).
    pub steps: usize,
    /// The sampler [`StableDiffusion::generate`](crate::StableDiffusion::generate)
    /// runs; `None`: the pipeline's own.
    pub sampler: Option<sd_scheduler::SamplerKind>,
    /// Classifier-free guidance; 1.0 (or less) skips the unconditional pass.
    pub guidance_scale: f64,
    /// diffusers' `guidance_rescale` (0 = off).
    pub guidance_rescale: f64,
    /// FLUX: diffusers' `true_cfg_scale`. Above 1, with a negative prompt,
    /// the negative also runs through the model (a second pass) and the
    /// prediction is guided by it; `guidance_scale` stays the distilled
    /// guidance. Other models ignore it (their CFG is `guidance_scale`).
    pub true_cfg_scale: f64,
    /// DDIM's eta (0 = deterministic); used when the pipeline's sampler is DDIM.
    pub eta: f64,
    /// Clip skip, long prompts, prompt weighting.
    pub prompt_options: PromptOptions,
    /// Images in the batch (at least 1).
    pub num_images: usize,
    /// Where the noise comes from.
    pub seed: Seed,
    /// Text-to-image, image-to-image or inpainting, with their inputs.
    pub task: Task,
    /// SDXL size conditioning: the original size as (height, width);
    /// defaults to the output size.
    pub sdxl_original_size: Option<(u32, u32)>,
    /// SDXL crop conditioning: top-left corner as (top, left).
    pub sdxl_crop_top_left: (u32, u32),
    /// SDXL target size as (height, width); defaults to the output size.
    pub sdxl_target_size: Option<(u32, u32)>,
    /// Control images and settings for the loaded ControlNets.
    pub control: Option<crate::control::Control>,
    /// One image prompt per loaded IP-Adapter, in their order (none: the
    /// adapters are off).
    pub image_prompts: Vec<crate::image_prompt::ImagePrompt>,
    /// SD3 and FLUX: T5's token count (diffusers' `max_sequence_length`, at
    /// most 512; also the length of SD3's zeros without T5). `None`: the
    /// model's default, [`StableDiffusion::default_max_sequence_length`](crate::StableDiffusion::default_max_sequence_length).
    pub max_sequence_length: Option<usize>,
    /// SD3.5: skip-layer guidance (None: off).
    pub skip_layer_guidance: Option<SkipLayerGuidance>,
    /// Hires fix: a second pass at a larger size (text-to-image only).
    pub hires: Option<crate::generate::hires::HiresFix>,
}

/// SD3.5's skip-layer guidance (diffusers' `skip_guidance_layers`): on the
/// steps `i` with `start * steps < i < stop * steps`, one more pass of the
/// positive prompt with these transformer blocks left out, and the guided
/// prediction pushed away from it by `scale`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SkipLayerGuidance {
    /// The transformer blocks to leave out (0-based).
    pub layers: Vec<usize>,
    /// diffusers' `skip_layer_guidance_scale`.
    pub scale: f64,
    /// diffusers' `skip_layer_guidance_start`, a fraction of the steps.
    pub start: f64,
    /// diffusers' `skip_layer_guidance_stop`, a fraction of the steps.
    pub stop: f64,
}

impl SkipLayerGuidance {
    /// `layers` with diffusers' defaults: scale 2.8, from 1% to 20% of the
    /// steps. SD3.5 Medium's model card uses layers 7, 8 and 9.
    pub fn new(layers: Vec<usize>) -> Self {
        SkipLayerGuidance {
            layers,
            scale: 2.8,
            start: 0.01,
            stop: 0.2,
        }
    }

    /// The same over another window of the steps (fractions).
    pub fn with_window(mut self, start: f64, stop: f64) -> Self {
        (self.start, self.stop) = (start, stop);
        self
    }

    /// The same at another scale.
    pub fn with_scale(mut self, scale: f64) -> Self {
        self.scale = scale;
        self
    }

    /// Whether step `i` of `steps` (those the run makes) skips layers,
    /// diffusers' comparison exactly.
    pub(crate) fn applies(&self, i: usize, steps: usize) -> bool {
        let (i, steps) = (i as f64, steps as f64);
        i > steps * self.start && i < steps * self.stop
    }
}

/// The seeds of a run's CPU generators, as diffusers' `generator` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Seed {
    /// One generator for the whole batch (diffusers with one generator).
    Batch(u64),
    /// One generator per image (diffusers with a list of generators); as
    /// many seeds as `num_images`.
    PerImage(Vec<u64>),
}

impl From<u64> for Seed {
    fn from(seed: u64) -> Self {
        Seed::Batch(seed)
    }
}

/// A fresh seed for a "random" run (the CLI without `--seed`, A1111's
/// `seed: -1`), from the clock and the process's hash keys. 32 bits, as
/// A1111's, short enough to type back in.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() & 0xffff_ffff
}

impl Default for Seed {
    fn default() -> Self {
        Seed::Batch(0)
    }
}

/// Which pipeline runs, with the inputs only it takes.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Task {
    /// From pure noise.
    #[default]
    TextToImage,
    /// From `image` noised to `strength` (in (0, 1]) of the schedule; the
    /// image's size is the output size.
    ImageToImage {
        /// The source image.
        image: RgbImage,
        /// How much of the schedule runs, in (0, 1].
        strength: f64,
    },
    /// Repaints the white part of `mask` (the same size as `image`).
    Inpaint {
        /// The source image.
        image: RgbImage,
        /// White is repainted, black kept.
        mask: GrayImage,
        /// How much of the schedule runs, in (0, 1]; 1 starts from noise.
        strength: f64,
    },
}

impl Task {
    /// The init image of image-to-image and inpainting.
    pub fn image(&self) -> Option<&RgbImage> {
        match self {
            Task::TextToImage => None,
            Task::ImageToImage { image, .. } | Task::Inpaint { image, .. } => Some(image),
        }
    }

    /// The inpainting mask.
    pub fn mask(&self) -> Option<&GrayImage> {
        match self {
            Task::Inpaint { mask, .. } => Some(mask),
            _ => None,
        }
    }

    /// The strength of image-to-image and inpainting.
    pub fn strength(&self) -> Option<f64> {
        match self {
            Task::TextToImage => None,
            Task::ImageToImage { strength, .. } | Task::Inpaint { strength, .. } => Some(*strength),
        }
    }
}

impl Request {
    /// A text-to-image request with diffusers' defaults (50 steps, guidance
    /// 7.5, seed 0, one image at the model's native size).
    pub fn new(prompt: impl Into<String>) -> Self {
        Request {
            prompt: prompt.into(),
            negative_prompt: None,
            embeddings: None,
            width: None,
            height: None,
            steps: 50,
            sampler: None,
            guidance_scale: 7.5,
            guidance_rescale: 0.0,
            true_cfg_scale: 1.0,
            eta: 0.0,
            prompt_options: PromptOptions::default(),
            num_images: 1,
            seed: Seed::default(),
            task: Task::TextToImage,
            sdxl_original_size: None,
            sdxl_crop_top_left: (0, 0),
            sdxl_target_size: None,
            control: None,
            image_prompts: Vec::new(),
            max_sequence_length: None,
            skip_layer_guidance: None,
            hires: None,
        }
    }

    /// The same with `seed` (a `u64` for one batch generator, or a [`Seed`]).
    pub fn with_seed(mut self, seed: impl Into<Seed>) -> Self {
        self.seed = seed.into();
        self
    }

    /// The same as image-to-image from `image` at `strength`.
    pub fn image_to_image(mut self, image: RgbImage, strength: f64) -> Self {
        self.task = Task::ImageToImage { image, strength };
        self
    }

    /// The same with control images for the loaded ControlNets.
    pub fn with_control(mut self, control: crate::control::Control) -> Self {
        self.control = Some(control);
        self
    }

    /// The same as inpainting the white part of `mask` in `image`.
    pub fn inpaint(mut self, image: RgbImage, mask: GrayImage, strength: f64) -> Self {
        self.task = Task::Inpaint {
            image,
            mask,
            strength,
        };
        self
    }
}

/// Conditioning for one prompt: hidden states (1, tokens, width) and, for
/// SDXL, the pooled embedding (1, dim).
#[derive(Debug)]
pub struct Conditioning {
    /// The text encoder's hidden states (both towers' concatenated for SDXL).
    pub hidden: Tensor,
    /// SDXL's pooled text embedding.
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
    /// The prompt's.
    pub positive: Conditioning,
    /// The negative prompt's (or zeros).
    pub negative: Conditioning,
}

impl PromptEmbeddings {
    /// One batch of several prompts' embeddings, image `i` conditioned on
    /// `prompts[i]`: how a server runs compatible requests as one UNet
    /// batch. `None` when the prompts' shapes differ (long prompts of
    /// different lengths, say).
    pub fn per_image(prompts: &[PromptEmbeddings]) -> Option<PromptEmbeddings> {
        let cat = |part: fn(&PromptEmbeddings) -> &Conditioning| -> Option<Conditioning> {
            let hidden: Vec<&Tensor> = prompts.iter().map(|p| &part(p).hidden).collect();
            let shape = |t: &Tensor| t.size()[1..].to_vec();
            if hidden.iter().any(|t| shape(t) != shape(hidden[0])) {
                return None;
            }
            let pooled: Option<Vec<&Tensor>> =
                prompts.iter().map(|p| part(p).pooled.as_ref()).collect();
            Some(Conditioning {
                hidden: Tensor::cat(&hidden, 0),
                pooled: pooled.map(|p| Tensor::cat(&p, 0)),
            })
        };
        if prompts.is_empty() {
            return None;
        }
        Some(PromptEmbeddings {
            positive: cat(|p| &p.positive)?,
            negative: cat(|p| &p.negative)?,
        })
    }
}

/// Where a run is, for progress and previews.
#[derive(Debug)]
#[non_exhaustive]
pub struct StepInfo<'a> {
    /// 0-based index among the steps this run makes.
    pub step: usize,
    /// Steps this run makes.
    pub total: usize,
    /// The step's timestep.
    pub timestep: f64,
    /// The latents after this step.
    pub latents: &'a Tensor,
    /// The sampler's estimate of the clean latents at this step, where it
    /// makes one (Euler, Euler a, DDIM, LCM, DPM++): better for previews.
    pub denoised: Option<&'a Tensor>,
}

/// The images and the final latents (before VAE decode).
#[derive(Debug)]
#[non_exhaustive]
pub struct Generation {
    /// One 8-bit RGB image per batch entry.
    pub images: Vec<RgbImage>,
    /// The final latents (batch, channels, h, w), scaled as the UNet sees them.
    pub latents: Tensor,
    /// Whether the UNet steps ran eagerly or as a replayed CUDA graph (and,
    /// if a capture was asked for but failed, why).
    pub unet_execution: UNetExecution,
    /// Whether the VAE decode ran through a compiled package (and, if one
    /// is loaded but did not fit, why not).
    pub decode_execution: crate::compiled::DecodeExecution,
}
