//! `sd compile`: a model's UNet (and VAE decoder) compiled ahead of time by
//! torch's compiler for given sizes (docs/compile.md); `sd txt2img
//! --compiled` then uses them.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sd_pipeline::compiled::{default_cache_dir, default_python, CompileSpec, Part};
use sd_pipeline::front::ModelSource;
use sd_pipeline::StableDiffusion;

#[derive(Args, Debug)]
pub struct CompileArgs {
    /// A diffusers folder, single file or hub id (SD1.x, SD2.x, SDXL).
    #[arg(long, required_unless_present_any = ["list", "clear"])]
    pub model: Option<String>,
    /// The output size it is compiled for (pixels).
    #[arg(long, default_value_t = 512)]
    pub width: u32,
    /// As --width.
    #[arg(long, default_value_t = 512)]
    pub height: u32,
    /// Several sizes in one command, WxH, repeatable (one package each),
    /// instead of --width/--height.
    #[arg(long = "size", value_name = "WxH", value_parser = parse_size,
          conflicts_with_all = ["width", "height"])]
    pub sizes: Vec<(u32, u32)>,
    /// Images per run (the UNet runs twice this under guidance).
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// A LoRA merged before compiling (FILE[:SCALE], repeatable): the package
    /// holds the merged weights, for `txt2img --compiled` with the same LoRAs.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    pub loras: Vec<String>,
    /// What to compile: unet, vae-decoder (repeatable; default both).
    #[arg(long = "part", value_name = "PART")]
    pub parts: Vec<Part>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// A Python with torch (this program's version) and diffusers; default
    /// SD_PYTHON, else ./.venv/bin/python, else python3.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Where packages are kept (default ~/.cache/sd-rs/compiled).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// List the packages kept, with their sizes.
    #[arg(long)]
    pub list: bool,
    /// Delete every package kept.
    #[arg(long)]
    pub clear: bool,
}

pub fn run(args: &CompileArgs) -> Result<()> {
    let cache = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    if args.list || args.clear {
        return list_or_clear(&cache, args.clear);
    }
    let Some(model) = &args.model else {
        bail!("--model: which model to compile");
    };
    let python = args.python.clone().unwrap_or_else(default_python);
    let parts = match args.parts.is_empty() {
        true => Part::ALL.to_vec(),
        false => args.parts.clone(),
    };
    let mut pipeline = StableDiffusion::builder()
        .source(&ModelSource::detect(model)?)
        .device(sd_core::device::parse_device(&args.device)?)
        .dtype(sd_core::device::parse_dtype(&args.dtype)?)
        .build()?;
    let loras = crate::generate::lora_options(&args.loras)?;
    pipeline.set_loras(&loras)?;
    let sizes = match args.sizes.is_empty() {
        true => vec![(args.width, args.height)],
        false => args.sizes.clone(),
    };
    for (width, height) in sizes {
        let mut spec = CompileSpec::new(width, height, python.clone(), cache.clone());
        (spec.images, spec.parts) = (args.num_images, parts.clone());
        let started = std::time::Instant::now();
        let ticker = Ticker::start();
        let packages = pipeline.compile(&spec, &mut |stage| ticker.stage(stage));
        drop(ticker);
        let packages = packages?;
        let size: u64 = packages
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        eprintln!(
            "{width}x{height} ready in {:.0} s ({:.1} MiB)",
            started.elapsed().as_secs_f64(),
            size as f64 / (1 << 20) as f64
        );
        for package in packages {
            println!("{}", package.display());
        }
    }
    Ok(())
}

/// The compile's progress line: each stage with the time it has taken so
/// far, redrawn every second on a terminal (a compile takes minutes with
/// nothing else to show); elsewhere each stage on a line of its own.
struct Ticker(Option<ProgressBar>);

impl Ticker {
    fn start() -> Self {
        if !std::io::stderr().is_terminal() {
            return Ticker(None);
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed_precise}")
                .expect("valid template"),
        );
        bar.enable_steady_tick(std::time::Duration::from_secs(1));
        Ticker(Some(bar))
    }

    fn stage(&self, stage: &str) {
        match &self.0 {
            Some(bar) => bar.set_message(stage.to_string()),
            None => eprintln!("{stage}"),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// `--size WxH`.
fn parse_size(text: &str) -> std::result::Result<(u32, u32), String> {
    let parsed = text
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)));
    parsed.ok_or_else(|| format!("{text:?} is not WxH (e.g. 512x768)"))
}

fn list_or_clear(cache: &std::path::Path, clear: bool) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return Ok(());
    };
    let mut total = 0u64;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "pt2") {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        total += size;
        match clear {
            true => std::fs::remove_file(&path).with_context(|| format!("{}", path.display()))?,
            false => println!(
                "{}\t{:.1} MiB",
                path.display(),
                size as f64 / (1 << 20) as f64
            ),
        }
    }
    let verb = if clear { "freed" } else { "in all" };
    eprintln!("{:.1} MiB {verb}", total as f64 / (1 << 20) as f64);
    Ok(())
}
