//! `sd preprocess`: control images from ordinary ones.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use sd_pipeline::preprocess;

#[derive(Subcommand, Debug)]
pub enum Preprocess {
    /// White Canny edges on black (for canny ControlNets).
    Canny {
        input: PathBuf,
        output: PathBuf,
        /// Edge strength below which nothing is an edge.
        #[arg(long, default_value_t = 100.0)]
        low: f32,
        /// Edge strength above which everything is an edge (up to about 1140).
        #[arg(long, default_value_t = 200.0)]
        high: f32,
    },
    /// Luma in all three channels.
    Grayscale { input: PathBuf, output: PathBuf },
    /// 255 minus each channel (black lines on white to white on black).
    Invert { input: PathBuf, output: PathBuf },
    /// Lanczos resize to the size you will generate at.
    Resize {
        input: PathBuf,
        output: PathBuf,
        #[arg(long)]
        width: u32,
        #[arg(long)]
        height: u32,
    },
}

pub fn run(command: &Preprocess) -> Result<()> {
    let (input, output) = match command {
        Preprocess::Canny { input, output, .. }
        | Preprocess::Grayscale { input, output }
        | Preprocess::Invert { input, output }
        | Preprocess::Resize { input, output, .. } => (input, output),
    };
    let image = image::open(input)
        .with_context(|| format!("cannot read image {}", input.display()))?
        .to_rgb8();
    let result = match command {
        Preprocess::Canny { low, high, .. } => {
            preprocess::canny(&image, *low, *high).map_err(|e| match e {
                sd_pipeline::PipelineError::InvalidInput { message, .. } => {
                    anyhow::anyhow!("--low/--high: {message}")
                }
                other => other.into(),
            })?
        }
        Preprocess::Grayscale { .. } => preprocess::grayscale(&image),
        Preprocess::Invert { .. } => preprocess::invert(&image),
        Preprocess::Resize { width, height, .. } => {
            preprocess::resize(&image, *width, *height).context("--width/--height")?
        }
    };
    result
        .save(output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!("{}", output.display());
    Ok(())
}
