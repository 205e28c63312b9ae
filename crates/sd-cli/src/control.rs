//! The ControlNet options of `sd txt2img`, `img2img` and `inpaint`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use sd_pipeline::Control;

#[derive(Args, Debug, Default)]
pub struct ControlOptions {
    /// A ControlNet: a diffusers folder or a .safetensors file (diffusers or
    /// the original control_model.* layout), at SCALE (default 1.0; note
    /// that diffusers' img2img and inpaint pipelines default to 0.8 and
    /// 0.5). Repeatable: their residuals are summed.
    #[arg(long = "controlnet", value_name = "PATH[:SCALE]")]
    pub controlnets: Vec<String>,
    /// The control image (edges, depth...) of each --controlnet, in the same
    /// order; resized to the output size when it differs.
    #[arg(long = "control-image", value_name = "PNG")]
    pub control_images: Vec<PathBuf>,
    /// The fraction of the steps before which the ControlNets are off.
    #[arg(long, default_value_t = 0.0)]
    pub control_start: f64,
    /// The fraction of the steps after which the ControlNets are off.
    #[arg(long, default_value_t = 1.0)]
    pub control_end: f64,
    /// Guess mode: the ControlNets see no prompt (only the conditional half
    /// under guidance) and speak louder deeper in the UNet; guidance 3 to 5
    /// suits it.
    #[arg(long)]
    pub guess_mode: bool,
}

/// What the options ask for: ControlNet paths to load, and the request's control.
pub struct Parsed {
    pub paths: Vec<PathBuf>,
    pub control: Option<Control>,
}

impl ControlOptions {
    /// Checks the options' syntax (files exist, one image per ControlNet,
    /// scales are numbers) and reads the control images; the request layer
    /// checks the rest (the start/end window).
    pub fn parse(&self) -> Result<Parsed> {
        if self.controlnets.len() != self.control_images.len() {
            bail!(
                "--controlnet given {} times, --control-image {} times: give one image per ControlNet, in the same order",
                self.controlnets.len(),
                self.control_images.len()
            );
        }
        let mut paths = Vec::new();
        let mut scales = Vec::new();
        for option in &self.controlnets {
            let (path, scale) = path_and_scale("--controlnet", option)?;
            paths.push(path);
            scales.push(scale);
        }
        if paths.is_empty() {
            if self.guess_mode {
                bail!("--guess-mode applies to ControlNets: give --controlnet");
            }
            return Ok(Parsed {
                paths,
                control: None,
            });
        }
        let images = self
            .control_images
            .iter()
            .map(|p| {
                Ok(image::open(p)
                    .with_context(|| format!("--control-image {}: cannot read it", p.display()))?
                    .to_rgb8())
            })
            .collect::<Result<Vec<_>>>()?;
        let control = Control::new(images)
            .with_scales(scales)
            .with_window(self.control_start, self.control_end)
            .with_guess_mode(self.guess_mode);
        Ok(Parsed {
            paths,
            control: Some(control),
        })
    }
}

/// `PATH[:SCALE]` given to `flag`: an existing file or folder, and its
/// scale (1.0 if none).
pub fn path_and_scale(flag: &str, option: &str) -> Result<(PathBuf, f64)> {
    let (path, scale) = match option.rsplit_once(':') {
        Some((path, scale)) if !Path::new(option).exists() => (PathBuf::from(path), Some(scale)),
        _ => (PathBuf::from(option), None),
    };
    if !path.exists() {
        bail!("{flag} {option}: no such file or folder {}", path.display());
    }
    let scale = match scale {
        None => 1.0,
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .with_context(|| format!("{flag} {option}: scale '{s}' is not a number"))?,
    };
    Ok((path, scale))
}
