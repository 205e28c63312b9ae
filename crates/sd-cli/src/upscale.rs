//! `sd upscale IN OUT --model FILE`: an image enlarged by an upscaler model
//! (ESRGAN, Real-ESRGAN, SRVGGNetCompact; `.safetensors` or `.pth`), whole or
//! in tiles (`sd_upscale`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use sd_upscale::{Tiling, Upscaler};

#[derive(Args)]
pub struct UpscaleArgs {
    /// The image to enlarge.
    pub input: PathBuf,
    /// Where to write the result (.png, .jpg).
    pub output: PathBuf,
    /// The upscaler's weights (.safetensors or .pth).
    #[arg(long)]
    pub model: PathBuf,
    /// Tiles of this many input pixels a side (0: the whole image at once).
    #[arg(long, default_value_t = 192)]
    pub tile: i64,
    /// Input pixels neighbouring tiles share.
    #[arg(long, default_value_t = 8)]
    pub overlap: i64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

pub fn run(args: &UpscaleArgs) -> Result<()> {
    let device = sd_core::device::parse_device(&args.device)?;
    let kind = sd_core::device::parse_dtype(&args.dtype)?;
    let tiling = match args.tile {
        0 => None,
        size => Some(Tiling::new(size, args.overlap)?),
    };
    let image = image::open(&args.input)
        .with_context(|| format!("{}: not an image", args.input.display()))?
        .to_rgb8();
    let model = Upscaler::open(&args.model, device, kind)?;
    let out = model.upscale_rgb(&image, tiling)?;
    out.save(&args.output)
        .with_context(|| format!("{}: cannot write", args.output.display()))?;
    let a = model.architecture();
    println!(
        "{} ({}, {}x): {}x{}",
        args.output.display(),
        a.name(),
        a.scale(),
        out.width(),
        out.height()
    );
    Ok(())
}
