//! `--vae-tiny` and `--preview FILE --preview-every N`: a preview image
//! rewritten while the picture forms, atomically (written beside the file,
//! then renamed over it), so that an image viewer never reads half a file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use sd_pipeline::{StableDiffusion, StepInfo};

#[derive(Args, Debug, Default)]
pub struct PreviewOptions {
    /// A tiny autoencoder (TAESD for SD1/SD2, TAESDXL for SDXL: a diffusers
    /// folder, or a folder with taesd_encoder/taesd_decoder .safetensors) for
    /// the final decode and previews: much faster and lighter than the full
    /// VAE, slightly softer images.
    #[arg(long, value_name = "DIR")]
    pub vae_tiny: Option<PathBuf>,
    /// Rewrite this PNG with a preview of the image as it forms (the
    /// sampler's denoised estimate where it makes one); decoded by
    /// --vae-tiny when given, else by a cheap linear map at 1/8 size.
    #[arg(long, value_name = "FILE")]
    pub preview: Option<PathBuf>,
    /// Steps between previews.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub preview_every: usize,
}

impl PreviewOptions {
    /// Refuses --preview-every 0 and a --preview that is not a .png.
    pub fn check(&self) -> Result<()> {
        if self.preview_every == 0 {
            bail!("--preview-every 0: at least 1 step between previews");
        }
        if let Some(path) = &self.preview {
            let png = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("png"));
            if !png {
                bail!("--preview {}: previews are written as .png", path.display());
            }
        }
        Ok(())
    }

    /// Writes the step's preview when one is due; the last step always gets one.
    pub fn on_step(&self, pipeline: &StableDiffusion, info: &StepInfo<'_>) -> Result<()> {
        let Some(path) = &self.preview else {
            return Ok(());
        };
        let last = info.step + 1 == info.total;
        if (info.step + 1) % self.preview_every != 0 && !last {
            return Ok(());
        }
        let latents = info.denoised.unwrap_or(info.latents);
        let images = pipeline.preview(latents).context("--preview")?;
        write_atomically(path, &images[0])
    }
}

fn write_atomically(path: &Path, image: &image::RgbImage) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let partial = path.with_file_name(format!(".{name}.partial.png"));
    image
        .save(&partial)
        .with_context(|| format!("--preview: cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path)
        .with_context(|| format!("--preview: cannot replace {}", path.display()))
}
