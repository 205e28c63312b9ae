//! `sd txt2img`, `sd img2img`, `sd inpaint`.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sd_pipeline::front::{parse_sampler, Limits, ModelSource, Parameters, Source};
use sd_pipeline::{
    ApplyReport, LoraSpec, PromptOptions, Request, StableDiffusion, TimestepSpacing,
};

use crate::options::name_the_option;
use crate::output::{output_paths, write_outputs, ImageFormat, Metadata};

#[derive(Args, Debug)]
pub struct Common {
    /// A diffusers model folder (SD1.x, SD2.x, SDXL, SD3/SD3.5), a single-file
    /// checkpoint (.safetensors, CompVis layout), or a Hugging Face repo id
    /// (org/name, from the local hub cache or downloaded into it). Without
    /// it, the project's small shapes model is used (coloured circles,
    /// squares and triangles on plain backgrounds, 32x32, nothing else).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// For a single-file --model: a diffusers folder to take configs and
    /// tokenizers from instead of the built-in SD1.5/SD2.1/SDXL presets.
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Default: the model's own (FLUX.1-dev 28, FLUX.1-schnell 4), else 30.
    #[arg(long)]
    pub steps: Option<usize>,
    /// The guidance scale; FLUX.1-dev's distilled guidance. Default: the
    /// model's own (FLUX.1-dev 3.5), else 7.5.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// diffusers' guidance_rescale (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f64,
    /// Without it a random seed is chosen and printed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Default: the model's native size. Multiples of 8 (16 for SD3).
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    /// ddim, ddpm, pndm, lms, euler, euler-a, heun, dpm2, dpm2-a, dpm++2m,
    /// dpm++2m-karras, dpm++2m-sde, unipc, lcm; for SD3: flow-euler,
    /// flow-heun. Default: the model's own.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// leading, trailing or linspace: overrides the model's scheduler
    /// config (SD-Turbo and SDXL-Turbo want trailing).
    #[arg(long)]
    pub timestep_spacing: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// DDIM's eta (0 = deterministic); needs --scheduler ddim.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Print when the model is loaded, each step ends and the files are
    /// written (seconds since start) to stderr.
    #[arg(long)]
    pub timings: bool,
    /// Keep weights in host memory; move the UNet and VAE to the device only
    /// while they run (and decode in tiles).
    #[arg(long)]
    pub low_memory: bool,
    /// Replay the UNet step as a CUDA graph (CUDA only; falls back when capture fails).
    #[arg(long)]
    pub cuda_graphs: bool,
    /// Convolutions in channels-last (NHWC) layout (faster fp16 on many GPUs).
    #[arg(long)]
    pub channels_last: bool,
    /// Skip the last N text-encoder layers.
    #[arg(long, default_value_t = 0)]
    pub clip_skip: usize,
    /// Encode prompts longer than 75 tokens in windows instead of truncating.
    #[arg(long)]
    pub long_prompts: bool,
    /// Parse "(word:1.3)" prompt weighting.
    #[arg(long)]
    pub prompt_weighting: bool,
    /// Tiled VAE decode (large images in bounded memory).
    #[arg(long)]
    pub vae_tiling: bool,
    #[command(flatten)]
    pub encoders: crate::encoders::EncoderArgs,
    /// SD3 and FLUX: T5's token count (default 256, at most 512; diffusers
    /// uses 512 for FLUX.1-dev).
    #[arg(long, value_name = "N")]
    pub max_sequence_length: Option<usize>,
    /// FLUX: true CFG with the negative prompt, at this scale (diffusers'
    /// `true_cfg_scale`; a second pass per step). `--guidance` stays the
    /// distilled guidance.
    #[arg(long, value_name = "SCALE")]
    pub true_cfg_scale: Option<f64>,
    /// SD3.5: skip-layer guidance on these transformer blocks (SD3.5
    /// Medium's model card: 7,8,9), from 1% to 20% of the steps.
    #[arg(long, value_delimiter = ',', value_name = "BLOCKS")]
    pub skip_layer_guidance: Vec<usize>,
    /// The scale of --skip-layer-guidance.
    #[arg(long, default_value_t = 2.8)]
    pub skip_layer_scale: f64,
    #[arg(long, default_value = "out.png")]
    pub out: PathBuf,
    /// Also write the final latents (before VAE decode) as tensor "latents", f32.
    #[arg(long)]
    pub save_latents: Option<PathBuf>,
    /// Merge a LoRA .safetensors (kohya/A1111, diffusers/PEFT, LyCORIS
    /// LoCon, LoHa, LoKr) at SCALE (default 1.0). Repeatable; merged in order.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    pub loras: Vec<String>,
    /// Where <lora:NAME:SCALE> tags in --prompt find NAME.safetensors (the
    /// folder and its subfolders); the tags are taken out of the prompt.
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// A textual-inversion embedding .safetensors (diffusers, A1111, or
    /// SDXL clip_l/clip_g), with the TOKEN prompts use (default: the file's
    /// own token, or its file name). Repeatable.
    #[arg(long = "embedding", value_name = "FILE[:TOKEN]")]
    pub embeddings: Vec<String>,
    /// Print what each LoRA merged and every key it skipped.
    #[arg(long)]
    pub verbose: bool,
    /// Run the UNet (and VAE decoder) through the packages `sd compile` made
    /// for this model, size, image count, LoRAs, dtype and device (eager,
    /// saying so, when there is none).
    #[arg(long)]
    pub compiled: bool,
    #[command(flatten)]
    pub control: crate::control::ControlOptions,
    #[command(flatten)]
    pub ip_adapter: crate::ip_adapter::IpAdapterOptions,
    #[command(flatten)]
    pub preview: crate::preview::PreviewOptions,
    #[command(flatten)]
    pub hires: crate::hires::HiresArgs,
}

#[derive(Args, Debug)]
pub struct ImageInput {
    /// The image to start from; its size is the output size.
    #[arg(long)]
    pub init_image: PathBuf,
}

pub enum Mode {
    Txt2Img,
    Img2Img {
        image: PathBuf,
        strength: f64,
    },
    Inpaint {
        image: PathBuf,
        mask: PathBuf,
        strength: f64,
    },
}

/// Steps and guidance for models without defaults of their own.
const DEFAULT_STEPS: usize = 30;
const DEFAULT_GUIDANCE: f64 = 7.5;

pub fn run(common: &Common, mode: Mode) -> Result<()> {
    // 1. everything that can fail on bad input, before any work
    let format = ImageFormat::from_path(&common.out)?;
    // (parsed once: it reads the control images)
    let control = common.control.parse()?;
    let ip = common.ip_adapter.parse()?;
    let mut parameters = parameters(common, &mode, control.control)?;
    parameters.image_prompts = ip.prompts;
    let checked = parameters
        .check(&Limits::NONE, common.lora_dir.as_deref())
        .map_err(name_the_option)?;
    if common.seed.is_none() {
        eprintln!("seed: {}", checked.seed());
    }
    let embeddings = embedding_options(&common.embeddings)?;
    let control_paths = control.paths;
    common.preview.check()?;
    let source = model_source(common.model.as_deref())?;

    // 2. load the model
    let mut pipeline = load(common, &source)?;
    if common.timings {
        crate::timing("model loaded");
    }
    let checked = match pipeline.model_defaults() {
        Some(d) => checked
            .with_model_defaults(
                common.steps.map_or(Some(d.steps), |_| None),
                common.guidance.map_or(Some(d.guidance), |_| None),
                &Limits::NONE,
            )
            .map_err(name_the_option)?,
        None => checked,
    };
    for path in &control_paths {
        pipeline.load_controlnet(path)?;
    }
    for (path, encoder) in &ip.adapters {
        pipeline.load_ip_adapter(path, encoder)?;
    }
    for (path, token) in &embeddings {
        let tokens = pipeline.load_embedding(path, token.as_deref())?;
        if common.verbose {
            eprintln!("embedding {}: tokens {}", path.display(), tokens.join(" "));
        }
    }
    for report in pipeline.set_loras(checked.loras())? {
        print_lora_report(&report, common.verbose);
    }
    if common.compiled {
        use_compiled(&mut pipeline, common)?;
    }

    // 3. generate, then write every file or none
    let [request] = checked
        .requests()
        .try_into()
        .expect("one run: the CLI has no n_iter");
    let generation = generate(common, &pipeline, &request)?;
    let metadata: Vec<Metadata> = (0..generation.images.len())
        .map(|i| {
            let size = generation.images[i].dimensions();
            checked.generation_parameters(i, size, pipeline.sampler(), &source.name())
        })
        .collect();
    let paths = output_paths(&common.out, generation.images.len());
    write_outputs(
        &paths,
        format,
        &generation.images,
        &metadata,
        common.save_latents.as_deref(),
        &generation.latents,
    )?;
    if common.timings {
        crate::timing("written");
    }
    for path in &paths {
        println!("{}", path.display());
    }
    Ok(())
}

/// The command line as the request layer's parameters.
fn parameters(
    common: &Common,
    mode: &Mode,
    control: Option<sd_pipeline::Control>,
) -> Result<Parameters> {
    let mut p = Parameters::new(&common.prompt);
    p.negative_prompt = common.negative_prompt.clone().unwrap_or_default();
    p.steps = common.steps.unwrap_or(DEFAULT_STEPS);
    p.guidance = common.guidance.unwrap_or(DEFAULT_GUIDANCE);
    p.guidance_rescale = common.guidance_rescale;
    p.eta = common.eta;
    p.seed = common.seed;
    p.width = common.width;
    p.height = common.height;
    p.sampler = parse_sampler(common.scheduler.as_deref(), None).map_err(name_the_option)?;
    p.batch_size = common.num_images;
    p.prompt_options = PromptOptions {
        clip_skip: common.clip_skip,
        long_prompts: common.long_prompts,
        weighting: common.prompt_weighting,
    };
    p.loras = lora_options(&common.loras)?;
    p.control = control;
    p.max_sequence_length = common.max_sequence_length;
    p.true_cfg_scale = common.true_cfg_scale;
    p.hires = common.hires.to_hires().map_err(name_the_option)?;
    if !common.skip_layer_guidance.is_empty() {
        p.skip_layer_guidance = Some(
            sd_pipeline::SkipLayerGuidance::new(common.skip_layer_guidance.clone())
                .with_scale(common.skip_layer_scale),
        );
    }
    p.source = match mode {
        Mode::Txt2Img => Source::Noise,
        Mode::Img2Img { image, strength } => Source::Image {
            image: read_rgb(image)?,
            mask: None,
            strength: *strength,
        },
        Mode::Inpaint {
            image,
            mask,
            strength,
        } => Source::Image {
            image: read_rgb(image)?,
            mask: Some(
                image::open(mask)
                    .with_context(|| format!("cannot read mask {}", mask.display()))?
                    .to_luma8(),
            ),
            strength: *strength,
        },
    };
    Ok(p)
}

/// The pipeline with the command line's loading options.
fn load(common: &Common, source: &ModelSource) -> Result<StableDiffusion> {
    let device = sd_core::device::parse_device(&common.device)?;
    let kind = sd_core::device::parse_dtype(&common.dtype)?;
    let spacing = common
        .timestep_spacing
        .as_deref()
        .map(str::parse::<TimestepSpacing>)
        .transpose()
        .context("--timestep-spacing")?;
    let mut builder = StableDiffusion::builder()
        .source(source)
        .device(device)
        .dtype(kind)
        .vae_tiling(common.vae_tiling)
        .low_memory(common.low_memory)
        .cuda_graphs(common.cuda_graphs)
        .channels_last(common.channels_last);
    if let Some(dir) = &common.config_dir {
        builder = builder.config_dir(dir);
    }
    let encoders = common.encoders.choice().map_err(name_the_option)?;
    builder = encoders.apply(builder);
    if let Some(spacing) = spacing {
        builder = builder.timestep_spacing(spacing);
    }
    if let Some(dir) = &common.preview.vae_tiny {
        builder = builder.tiny_vae(dir, sd_pipeline::TinyVaeUse::PreviewsAndDecode);
    }
    builder.build().map_err(name_the_option)
}

/// Runs `request` with a progress bar on a terminal and the previews asked for.
fn generate(
    common: &Common,
    pipeline: &StableDiffusion,
    request: &Request,
) -> Result<sd_pipeline::Generation> {
    let bar = ProgressBar::new(request.steps as u64);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} steps {elapsed_precise}")
                .expect("valid template"),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let scheduler = pipeline.scheduler_for(request).map_err(name_the_option)?;
    let mut preview_error = None;
    let generation = pipeline
        .generate_with(request, scheduler, &mut |info| {
            bar.set_length(info.total as u64);
            bar.set_position(info.step as u64 + 1);
            if common.timings {
                crate::timing(&format!("step {}/{} done", info.step + 1, info.total));
            }
            match common.preview.on_step(pipeline, &info) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    preview_error = Some(e);
                    ControlFlow::Break(())
                }
            }
        })
        .map_err(|e| match preview_error.take() {
            Some(preview) => preview,
            None => name_the_option(e),
        })?;
    bar.finish_and_clear();
    if let sd_pipeline::UNetExecution::EagerAfterFailedCapture(why) = &generation.unet_execution {
        eprintln!("note: --cuda-graphs: capture failed, the UNet ran eagerly ({why})");
    }
    Ok(generation)
}

/// --lora FILE[:SCALE] (the prompt's <lora:NAME:SCALE> tags are the
/// request layer's, found in --lora-dir).
pub(crate) fn lora_options(options: &[String]) -> Result<Vec<LoraSpec>> {
    let mut specs = Vec::new();
    for option in options {
        let (path, scale) = file_option("--lora", option)?;
        let scale = match scale {
            Some(scale) => scale
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite())
                .with_context(|| format!("--lora {option}: scale '{scale}' is not a number"))?,
            None => 1.0,
        };
        specs.push(LoraSpec::new(path, scale));
    }
    Ok(specs)
}

/// --embedding FILE[:TOKEN].
fn embedding_options(options: &[String]) -> Result<Vec<(PathBuf, Option<String>)>> {
    options
        .iter()
        .map(|option| {
            let (path, token) = file_option("--embedding", option)?;
            Ok((path, token.map(str::to_string)))
        })
        .collect()
}

/// `FILE[:SUFFIX]`: an existing file, and what follows its last colon
/// unless the whole option is itself a file.
fn file_option<'o>(flag: &str, option: &'o str) -> Result<(PathBuf, Option<&'o str>)> {
    let (path, suffix) = match option.rsplit_once(':') {
        Some((path, suffix)) if !Path::new(option).is_file() => (PathBuf::from(path), Some(suffix)),
        _ => (PathBuf::from(option), None),
    };
    if !path.is_file() {
        bail!("{flag} {option}: no such file {}", path.display());
    }
    Ok((path, suffix))
}

/// Always a line when keys were skipped (never silently); the list with --verbose.
fn print_lora_report(report: &ApplyReport, verbose: bool) {
    let merged: Vec<String> = report
        .applied
        .iter()
        .map(|(component, n)| format!("{n} {}", component.name()))
        .collect();
    if verbose || !report.skipped.is_empty() {
        eprintln!(
            "lora {}: merged {} modules ({}), skipped {}{}",
            report.path.display(),
            report.applied_total(),
            merged.join(", "),
            report.skipped.len(),
            if verbose || report.skipped.is_empty() {
                ""
            } else {
                " (--verbose lists them)"
            }
        );
    }
    if verbose {
        for (key, why) in &report.skipped {
            eprintln!("  skipped {key}: {why}");
        }
    }
}

fn model_source(model: Option<&Path>) -> Result<ModelSource> {
    if let Some(text) = model {
        return ModelSource::detect(&text.to_string_lossy()).map_err(name_the_option);
    }
    let dir = crate::shapes::folder()?;
    eprintln!(
        "note: no --model given: using the project's small shapes model (built in, 32x32): it draws \
         \"a {{small|large}} {{red|green|blue|yellow|purple|orange}} {{circle|square|triangle}} on a \
         {{white|black|gray}} background\" and nothing else. Pass --model for SD1.5, SD2.1 or SDXL."
    );
    Ok(ModelSource::Folder(dir))
}

fn read_rgb(path: &Path) -> Result<image::RgbImage> {
    Ok(image::open(path)
        .with_context(|| format!("cannot read image {}", path.display()))?
        .to_rgb8())
}

/// `--compiled`: the packages `sd compile` made for this run, if any.
fn use_compiled(pipeline: &mut StableDiffusion, common: &Common) -> Result<()> {
    use sd_pipeline::compiled::{default_cache_dir, default_python, CompileSpec, Part};
    let (w, h) = pipeline.default_size();
    let (width, height) = (common.width.unwrap_or(w), common.height.unwrap_or(h));
    let mut spec = CompileSpec::new(width, height, default_python(), default_cache_dir());
    spec.images = common.num_images;
    let found = pipeline.use_compiled(&spec)?;
    if !found.iter().any(|(part, _)| *part == Part::UNet) {
        eprintln!(
            "note: no compiled UNet for this model at {width}x{height} (sd compile --model ... \
             --width {width} --height {height}): running eager"
        );
    }
    Ok(())
}
