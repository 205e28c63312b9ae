//! `sd txt2img`, `sd img2img`, `sd inpaint`.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sd_pipeline::{
    ApplyReport, LoraSpec, PipelineError, PromptOptions, Request, SamplerKind, Seed,
    StableDiffusion, Task, TimestepSpacing,
};

use crate::output::{output_paths, write_outputs, ImageFormat, Metadata};

#[derive(Args, Debug)]
pub struct Common {
    /// A diffusers model folder (SD1.x, SD2.x or SDXL), a single-file
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
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// diffusers' guidance_rescale (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f64,
    /// Without it a random seed is chosen and printed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Default: the model's native size. Multiples of 8.
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    /// ddim, ddpm, pndm, lms, euler, euler-a, heun, dpm2, dpm2-a, dpm++2m,
    /// dpm++2m-karras, dpm++2m-sde, unipc, lcm. Default: the model's own.
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
    #[command(flatten)]
    pub control: crate::control::ControlOptions,
    #[command(flatten)]
    pub preview: crate::preview::PreviewOptions,
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

pub fn run(common: &Common, mode: Mode) -> Result<()> {
    // 1. everything that can fail on bad input, before any work
    let sampler = common
        .scheduler
        .as_deref()
        .map(str::parse::<SamplerKind>)
        .transpose()?;
    let spacing = common
        .timestep_spacing
        .as_deref()
        .map(str::parse::<TimestepSpacing>)
        .transpose()
        .context("--timestep-spacing")?;
    for (field, value) in [("--width", common.width), ("--height", common.height)] {
        if let Some(v) = value.filter(|v| v % 8 != 0 || *v == 0) {
            bail!("{field} {v} is not a positive multiple of 8");
        }
    }
    if common.num_images == 0 {
        bail!("--num-images 0: at least 1 image");
    }
    let mut numbers = vec![
        ("--guidance", common.guidance),
        ("--guidance-rescale", common.guidance_rescale),
        ("--eta", common.eta),
    ];
    if let Mode::Img2Img { strength, .. } | Mode::Inpaint { strength, .. } = &mode {
        numbers.push(("--strength", *strength));
    }
    for (flag, value) in numbers {
        if !value.is_finite() {
            bail!("{flag} {value}: not a number");
        }
    }
    let format = ImageFormat::from_path(&common.out)?;
    let device = sd_core::device::parse_device(&common.device)?;
    let kind = sd_core::device::parse_dtype(&common.dtype)?;
    let (prompt, loras) = lora_options(common)?;
    let embeddings = embedding_options(&common.embeddings)?;
    let control = common.control.parse()?;
    common.preview.check()?;
    let model = model_dir(common.model.as_deref())?;
    let mut request = Request::new(&prompt);
    request.negative_prompt = common.negative_prompt.clone();
    request.steps = common.steps;
    request.guidance_scale = common.guidance;
    request.guidance_rescale = common.guidance_rescale;
    request.eta = common.eta;
    request.width = common.width;
    request.height = common.height;
    request.num_images = common.num_images;
    request.prompt_options = PromptOptions {
        clip_skip: common.clip_skip,
        long_prompts: common.long_prompts,
        weighting: common.prompt_weighting,
    };
    let seed = match common.seed {
        Some(seed) => seed,
        None => {
            let seed = sd_pipeline::random_seed();
            eprintln!("seed: {seed}");
            seed
        }
    };
    request.seed = Seed::Batch(seed);
    request.control = control.control;
    match &mode {
        Mode::Txt2Img => {}
        Mode::Img2Img { image, strength } => {
            request.task = Task::ImageToImage {
                image: read_rgb(image)?,
                strength: *strength,
            };
        }
        Mode::Inpaint {
            image,
            mask,
            strength,
        } => {
            request.task = Task::Inpaint {
                image: read_rgb(image)?,
                mask: image::open(mask)
                    .with_context(|| format!("cannot read mask {}", mask.display()))?
                    .to_luma8(),
                strength: *strength,
            };
        }
    }

    // 2. load the model
    let mut builder = StableDiffusion::builder()
        .device(device)
        .dtype(kind)
        .vae_tiling(common.vae_tiling)
        .low_memory(common.low_memory)
        .cuda_graphs(common.cuda_graphs)
        .channels_last(common.channels_last);
    let text = model.to_string_lossy();
    let repo_like =
        !model.exists() && text.matches('/').count() == 1 && !text.starts_with(['/', '.']);
    builder = if model.is_file() {
        builder.single_file(&model)
    } else if repo_like {
        builder.hub_repo(text.as_ref())
    } else {
        builder.model_dir(&model)
    };
    if let Some(dir) = &common.config_dir {
        builder = builder.config_dir(dir);
    }
    if let Some(kind) = sampler {
        builder = builder.scheduler(kind);
    }
    if let Some(spacing) = spacing {
        builder = builder.timestep_spacing(spacing);
    }
    for path in &control.paths {
        builder = builder.controlnet(path);
    }
    if let Some(dir) = &common.preview.vae_tiny {
        builder = builder.tiny_vae(dir, sd_pipeline::TinyVaeUse::PreviewsAndDecode);
    }
    let mut pipeline = builder.build()?;
    for (path, token) in &embeddings {
        let tokens = pipeline.load_embedding(path, token.as_deref())?;
        if common.verbose {
            eprintln!("embedding {}: tokens {}", path.display(), tokens.join(" "));
        }
    }
    for report in pipeline.set_loras(&loras)? {
        print_lora_report(&report, common.verbose);
    }

    // 3. generate, with a progress bar on a terminal
    let bar = ProgressBar::new(common.steps as u64);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} steps {elapsed_precise}")
                .expect("valid template"),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let scheduler = pipeline.scheduler_for(&request).map_err(name_the_option)?;
    let mut preview_error = None;
    let generation = pipeline
        .generate_with(&request, scheduler, &mut |info| {
            bar.set_length(info.total as u64);
            bar.set_position(info.step as u64 + 1);
            match common.preview.on_step(&pipeline, &info) {
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

    // 4. write every file or none
    let (width, height) = generation.images[0].dimensions();
    let metadata = Metadata {
        prompt: common.prompt.clone(),
        negative_prompt: common.negative_prompt.clone().unwrap_or_default(),
        steps: common.steps,
        sampler: pipeline.sampler(),
        guidance: common.guidance,
        seed,
        width,
        height,
        model: model.display().to_string(),
    };
    let paths = output_paths(&common.out, generation.images.len());
    write_outputs(
        &paths,
        format,
        &generation.images,
        &metadata,
        common.save_latents.as_deref(),
        &generation.latents,
    )?;
    for path in &paths {
        println!("{}", path.display());
    }
    Ok(())
}

/// --lora FILE[:SCALE] and the prompt's <lora:NAME:SCALE> tags (resolved
/// in --lora-dir): the prompt without its tags, and every LoRA in order.
fn lora_options(common: &Common) -> Result<(String, Vec<LoraSpec>)> {
    let mut specs = Vec::new();
    for option in &common.loras {
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
    let (prompt, tags) = sd_lora::tags::take_tags(&common.prompt).context("--prompt")?;
    if !tags.is_empty() {
        let Some(dir) = &common.lora_dir else {
            bail!("--prompt has <lora:...> tags: give --lora-dir, the folder of those files");
        };
        for tag in tags {
            specs.push(LoraSpec::new(
                sd_lora::tags::find_in(dir, &tag.name).context("--lora-dir")?,
                tag.scale,
            ));
        }
    }
    Ok((prompt, specs))
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

fn model_dir(model: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = model {
        return Ok(dir.to_path_buf());
    }
    let dir = crate::shapes::folder()?;
    eprintln!(
        "note: no --model given: using the project's small shapes model (built in, 32x32): it draws \
         \"a {{small|large}} {{red|green|blue|yellow|purple|orange}} {{circle|square|triangle}} on a \
         {{white|black|gray}} background\" and nothing else. Pass --model for SD1.5, SD2.1 or SDXL."
    );
    Ok(dir)
}

/// A refused request, reported under the command-line option that set the
/// field the library names.
fn name_the_option(error: PipelineError) -> anyhow::Error {
    let PipelineError::InvalidInput { context, message } = &error else {
        return error.into();
    };
    let option = match context.as_str() {
        "width" => "--width",
        "height" => "--height",
        "size" => "--width/--height",
        "steps" => "--steps",
        "guidance_scale" => "--guidance",
        "guidance_rescale" => "--guidance-rescale",
        "eta" => "--eta",
        "num_images" => "--num-images",
        "strength" => "--strength",
        "seed" => "--seed",
        "init_image" => "--init-image",
        "mask" => "--mask",
        "control" | "control.images" => "--control-image",
        "control.scales" => "--controlnet",
        "control.start" => "--control-start/--control-end",
        _ => return error.into(),
    };
    anyhow::anyhow!("{option}: {message}")
}

fn read_rgb(path: &Path) -> Result<image::RgbImage> {
    Ok(image::open(path)
        .with_context(|| format!("cannot read image {}", path.display()))?
        .to_rgb8())
}
