//! The typed parameter set every frontend fills in, its one validation,
//! and what a checked set gives: requests, seeds, batch key, infotext.

use std::path::Path;

use image::{GrayImage, RgbImage};
use sd_clip::PromptOptions;
use sd_scheduler::SamplerKind;

use crate::adapters::LoraSpec;
use crate::control::Control;
use crate::error::{PipelineError, Result};
use crate::front::BatchKey;
use crate::front::Field;
use crate::generate::{random_seed, Request, Seed, SkipLayerGuidance, Task};
use crate::parameters::GenerationParameters;

/// Where the latents start.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Source {
    /// Text-to-image.
    #[default]
    Noise,
    /// Image-to-image, or inpainting with a mask (white is repainted).
    Image {
        /// The init image (its size is the output size).
        image: RgbImage,
        /// The inpainting mask, the image's size.
        mask: Option<GrayImage>,
        /// How much of the schedule runs, in (0, 1].
        strength: f64,
    },
}

/// How the images of one batch get their noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BatchSeeds {
    /// One generator for the batch (diffusers' `generator=`, ComfyUI): the
    /// seed reproduces the batch.
    #[default]
    OneGenerator,
    /// Image `i` from seed + i, each from its own generator (AUTOMATIC1111):
    /// each image's seed reproduces it alone.
    Consecutive,
}

/// What a frontend may be asked for; past these a request is refused
/// naming the field. [`Limits::NONE`] leaves only the pipeline's own rules.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest width and height in pixels.
    pub max_size: u32,
    /// Most denoising steps.
    pub max_steps: usize,
    /// Most images per request (batch size x iterations).
    pub max_images: usize,
    /// Largest guidance scale.
    pub max_guidance: f64,
}

impl Limits {
    /// No limits beyond what a run needs (the CLI, the Python module).
    pub const NONE: Limits = Limits {
        max_size: u32::MAX,
        max_steps: usize::MAX,
        max_images: usize::MAX,
        max_guidance: f64::INFINITY,
    };
}

impl Default for Limits {
    /// A server's: 2048 px, 150 steps, 16 images, guidance 100.
    fn default() -> Self {
        Limits {
            max_size: 2048,
            max_steps: 150,
            max_images: 16,
            max_guidance: 100.0,
        }
    }
}

/// Everything a user can ask of one generation, in the library's terms.
/// Frontends fill it from their syntax; [`Parameters::check`] validates it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Parameters {
    /// The prompt as given, `<lora:NAME:SCALE>` tags included.
    pub prompt: String,
    /// The negative prompt ("" for none).
    pub negative_prompt: String,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// diffusers' guidance_rescale (0 = off).
    pub guidance_rescale: f64,
    /// DDIM's eta (0 = deterministic).
    pub eta: f64,
    /// `None`: a random seed, chosen once by `check`.
    pub seed: Option<u64>,
    /// `None`: the model's native size (or the init image's).
    pub width: Option<u32>,
    /// As `width`.
    pub height: Option<u32>,
    /// `None`: the model's own sampler.
    pub sampler: Option<SamplerKind>,
    /// Images per run (one UNet batch).
    pub batch_size: usize,
    /// Runs, one after another.
    pub n_iter: usize,
    /// How a batch's images get their seeds.
    pub batch_seeds: BatchSeeds,
    /// Clip skip (layers skipped), long prompts, weighting.
    pub prompt_options: PromptOptions,
    /// LoRA files merged for this request, before the prompt's tags.
    pub loras: Vec<LoraSpec>,
    /// Text-to-image, image-to-image or inpainting.
    pub source: Source,
    /// Control images for the loaded ControlNets.
    pub control: Option<Control>,
    /// SD3 and FLUX: T5's token count; `None`: the model's default (256;
    /// 512 for FLUX.1-dev).
    pub max_sequence_length: Option<usize>,
    /// SD3.5: skip-layer guidance (`None`: off).
    pub skip_layer_guidance: Option<SkipLayerGuidance>,
    /// FLUX: true CFG with the negative prompt (`None`: off; see
    /// [`Request::true_cfg_scale`](crate::Request::true_cfg_scale)).
    pub true_cfg_scale: Option<f64>,
    /// Hires fix: a second pass at a larger size (`None`: off).
    pub hires: Option<crate::HiresFix>,
    /// One image prompt per loaded IP-Adapter, in their order.
    pub image_prompts: Vec<crate::ImagePrompt>,
}

impl Parameters {
    /// `prompt` with 20 steps, guidance 7.5, one image, a random seed.
    pub fn new(prompt: impl Into<String>) -> Self {
        Parameters {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            steps: 20,
            guidance: 7.5,
            guidance_rescale: 0.0,
            eta: 0.0,
            seed: None,
            width: None,
            height: None,
            sampler: None,
            batch_size: 1,
            n_iter: 1,
            batch_seeds: BatchSeeds::default(),
            prompt_options: PromptOptions::default(),
            loras: Vec::new(),
            source: Source::Noise,
            control: None,
            max_sequence_length: None,
            skip_layer_guidance: None,
            true_cfg_scale: None,
            hires: None,
            image_prompts: Vec::new(),
        }
    }

    /// Validates every field against `limits`, takes the prompt's
    /// `<lora:…>` tags (found in `lora_dir`) and fixes the seed: the one
    /// check every frontend runs, with the same messages.
    pub fn check(self, limits: &Limits, lora_dir: Option<&Path>) -> Result<Checked> {
        self.check_numbers(limits)?;
        self.check_counts(limits)?;
        self.check_hires(limits)?;
        let (text_prompt, tagged) = lora_tags(&self.prompt, lora_dir)?;
        let mut loras = self.loras.clone();
        loras.extend(tagged);
        if let Some(lora) = loras.iter().find(|l| !l.scale.is_finite()) {
            return Err(PipelineError::request(
                Field::Lora,
                format!(
                    "{}: scale {} is not a number",
                    lora.path.display(),
                    lora.scale
                ),
            ));
        }
        let first_seed = self.seed.unwrap_or_else(random_seed);
        Ok(Checked {
            params: self,
            text_prompt,
            loras,
            first_seed,
        })
    }

    /// Hires fix's numbers: a scale in (0, 8], a size within the limits,
    /// a strength in (0, 1], steps within the limits.
    fn check_hires(&self, limits: &Limits) -> Result<()> {
        let Some(hires) = &self.hires else {
            return Ok(());
        };
        let refuse = |message: String| Err(PipelineError::request(Field::Hires, message));
        if let crate::HiresSize::Scale(s) = hires.size {
            if !(s > 0.0 && s <= 8.0) {
                return refuse(format!("scale {s} is outside (0, 8]"));
            }
        }
        // (with the first pass's size unknown here, the model's default, the
        // second pass's is checked when it runs)
        let first = self.width.zip(self.height);
        if let Some((w, h)) = first.map(|size| hires.size_after(size)) {
            if w.max(h) > limits.max_size || w.min(h) == 0 {
                return refuse(format!("{w}x{h} is outside 1..={} a side", limits.max_size));
            }
        }
        if !(hires.strength > 0.0 && hires.strength <= 1.0) {
            return refuse(format!("strength {} is outside (0, 1]", hires.strength));
        }
        match hires.steps {
            Some(steps) if steps == 0 || steps > limits.max_steps => {
                refuse(format!("steps {steps} is outside 1..={}", limits.max_steps))
            }
            _ => Ok(()),
        }
    }

    fn check_numbers(&self, limits: &Limits) -> Result<()> {
        if self.steps == 0 || self.steps > limits.max_steps {
            return Err(outside(Field::Steps, self.steps, 1, limits.max_steps));
        }
        PipelineError::require_finite(&[
            (Field::Guidance, self.guidance),
            (Field::GuidanceRescale, self.guidance_rescale),
            (Field::Eta, self.eta),
        ])?;
        if self.guidance < 0.0 || self.guidance > limits.max_guidance {
            let range = match limits.max_guidance.is_finite() {
                true => format!("is outside 0..={}", limits.max_guidance),
                false => "is negative".to_string(),
            };
            return Err(PipelineError::request(
                Field::Guidance,
                format!("{} {range}", self.guidance),
            ));
        }
        for (field, value) in [(Field::Width, self.width), (Field::Height, self.height)] {
            match value {
                Some(v) if v == 0 || v % 8 != 0 => {
                    return Err(PipelineError::request(
                        field,
                        format!("{v} is not a positive multiple of 8"),
                    ))
                }
                Some(v) if v > limits.max_size => {
                    return Err(outside(field, v, 8, limits.max_size))
                }
                _ => {}
            }
        }
        if let Some(control) = &self.control {
            control.check()?;
        }
        for prompt in &self.image_prompts {
            prompt.check()?;
        }
        if let Source::Image { strength, .. } = &self.source {
            if !(*strength > 0.0 && *strength <= 1.0) {
                return Err(PipelineError::request(
                    Field::Strength,
                    format!("{strength} is outside (0, 1]"),
                ));
            }
        }
        Ok(())
    }

    fn check_counts(&self, limits: &Limits) -> Result<()> {
        for (field, value) in [
            (Field::BatchSize, self.batch_size),
            (Field::Iterations, self.n_iter),
        ] {
            if value == 0 {
                return Err(PipelineError::request(field, "0: at least 1"));
            }
        }
        let images = self.batch_size.saturating_mul(self.n_iter);
        if images > limits.max_images {
            return Err(PipelineError::request(
                Field::BatchSize,
                format!(
                    "{} images x {} runs = {images} images, over the limit {}",
                    self.batch_size, self.n_iter, limits.max_images
                ),
            ));
        }
        // A1111's "Clip skip" goes to 12 (11 layers skipped).
        if self.prompt_options.clip_skip > 11 {
            return Err(PipelineError::request(
                Field::ClipSkip,
                format!(
                    "{} layers skipped; at most 11",
                    self.prompt_options.clip_skip
                ),
            ));
        }
        Ok(())
    }
}

fn outside(
    field: Field,
    value: impl std::fmt::Display,
    low: u32,
    high: impl std::fmt::Display,
) -> PipelineError {
    PipelineError::request(field, format!("{value} is outside {low}..={high}"))
}

/// The prompt without its `<lora:NAME:SCALE>` tags, and their files in `dir`.
fn lora_tags(prompt: &str, dir: Option<&Path>) -> Result<(String, Vec<LoraSpec>)> {
    let bad_prompt = |e: sd_lora::LoraError| PipelineError::request(Field::Prompt, e.to_string());
    let (text, tags) = sd_lora::tags::take_tags(prompt).map_err(bad_prompt)?;
    if tags.is_empty() {
        return Ok((text, Vec::new()));
    }
    let Some(dir) = dir else {
        return Err(PipelineError::request(
            Field::Prompt,
            "has <lora:...> tags, but no LoRA folder (--lora-dir, lora_dir=) was given to find them in",
        ));
    };
    let specs = tags
        .iter()
        .map(|tag| {
            sd_lora::tags::find_in(dir, &tag.name)
                .map(|path| LoraSpec::new(path, tag.scale))
                .map_err(bad_prompt)
        })
        .collect::<Result<_>>()?;
    Ok((text, specs))
}

/// Checked parameters: the requests to run, their seeds, the LoRAs to
/// merge, what may share a batch, and what each image's PNG records.
#[derive(Debug, Clone)]
pub struct Checked {
    params: Parameters,
    text_prompt: String,
    loras: Vec<LoraSpec>,
    first_seed: u64,
}

impl Checked {
    /// The parameters as given.
    pub fn parameters(&self) -> &Parameters {
        &self.params
    }

    /// The same with the steps and guidance a frontend left to the model
    /// (`Some`: [`StableDiffusion::model_defaults`](crate::StableDiffusion::model_defaults)'s),
    /// checked against `limits` as [`Parameters::check`] checks them.
    pub fn with_model_defaults(
        mut self,
        steps: Option<usize>,
        guidance: Option<f64>,
        limits: &Limits,
    ) -> Result<Self> {
        self.params.steps = steps.unwrap_or(self.params.steps);
        self.params.guidance = guidance.unwrap_or(self.params.guidance);
        self.params.check_numbers(limits)?;
        Ok(self)
    }

    /// The prompt without its LoRA tags (what the text encoder reads).
    pub fn text_prompt(&self) -> &str {
        &self.text_prompt
    }

    /// The LoRAs to merge: the files given, then the prompt's tags.
    pub fn loras(&self) -> &[LoraSpec] {
        &self.loras
    }

    /// The first seed (the one asked for, or the random one chosen).
    pub fn seed(&self) -> u64 {
        self.first_seed
    }

    /// Images in all.
    pub fn images(&self) -> usize {
        self.params.batch_size * self.params.n_iter
    }

    /// The seed each image's PNG records, in order: its own (consecutive
    /// seeds), or its batch generator's.
    pub fn image_seeds(&self) -> Vec<u64> {
        (0..self.images()).map(|i| self.image_seed(i)).collect()
    }

    /// The seed image `index` records (its batch generator's, or its own).
    fn image_seed(&self, index: usize) -> u64 {
        let (i, batch) = (index as u64, self.params.batch_size as u64);
        match self.params.batch_seeds {
            BatchSeeds::Consecutive => self.first_seed.wrapping_add(i),
            BatchSeeds::OneGenerator => self.first_seed.wrapping_add(i / batch * batch),
        }
    }

    /// One request per run (`n_iter` of them), each of `batch_size` images.
    pub fn requests(&self) -> Vec<Request> {
        let seeds = self.image_seeds();
        seeds
            .chunks(self.params.batch_size)
            .map(|chunk| self.request(chunk))
            .collect()
    }

    fn request(&self, seeds: &[u64]) -> Request {
        let p = &self.params;
        let mut request = Request::new(&self.text_prompt);
        request.negative_prompt = Some(p.negative_prompt.clone()).filter(|n| !n.is_empty());
        request.steps = p.steps;
        request.guidance_scale = p.guidance;
        request.guidance_rescale = p.guidance_rescale;
        request.eta = p.eta;
        request.width = p.width;
        request.height = p.height;
        request.sampler = p.sampler;
        request.num_images = seeds.len();
        request.seed = match (p.batch_seeds, seeds) {
            (BatchSeeds::Consecutive, [_, _, ..]) => Seed::PerImage(seeds.to_vec()),
            _ => Seed::Batch(seeds[0]),
        };
        request.prompt_options = p.prompt_options;
        request.control = p.control.clone();
        request.max_sequence_length = p.max_sequence_length;
        request.skip_layer_guidance = p.skip_layer_guidance.clone();
        request.hires = p.hires.clone();
        request.image_prompts = p.image_prompts.clone();
        if let Some(scale) = p.true_cfg_scale {
            request.true_cfg_scale = scale;
        }
        request.task = match &p.source {
            Source::Noise => Task::TextToImage,
            Source::Image {
                image,
                mask: None,
                strength,
            } => Task::ImageToImage {
                image: image.clone(),
                strength: *strength,
            },
            Source::Image {
                image,
                mask: Some(mask),
                strength,
            } => Task::Inpaint {
                image: image.clone(),
                mask: mask.clone(),
                strength: *strength,
            },
        };
        request
    }

    /// The key under which these images may share a UNet batch with other
    /// requests' (one run of images with their own seeds); `None`: they run
    /// alone.
    pub fn batch_key(&self) -> Option<BatchKey> {
        let alone = self.params.n_iter != 1
            || (self.params.batch_size > 1 && self.params.batch_seeds == BatchSeeds::OneGenerator);
        if alone {
            return None;
        }
        BatchKey::of(&self.requests()[0], &self.loras)
    }

    /// What image `index` (of [`Checked::images`]) records in its PNG, made
    /// `size` by `sampler` (the model's when the parameters named none) from
    /// the model named `model` (see [`ModelSource::name`](crate::front::ModelSource::name)).
    pub fn generation_parameters(
        &self,
        index: usize,
        size: (u32, u32),
        sampler: SamplerKind,
        model: &str,
    ) -> GenerationParameters {
        GenerationParameters {
            prompt: self.params.prompt.clone(),
            negative_prompt: self.params.negative_prompt.clone(),
            steps: self.params.steps,
            sampler: self.params.sampler.unwrap_or(sampler),
            guidance: self.params.guidance,
            seed: self.image_seed(index),
            width: size.0,
            height: size.1,
            model: model.to_string(),
            hires: None,
        }
        .with_hires(self.params.hires.as_ref(), self.params.steps)
    }
}
