//! Writing results: PNGs with the generation parameters in text chunks,
//! optional latents; all files or none (temporary names, renamed at the end).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::RgbImage;
use tch::Tensor;

pub use sd_pipeline::GenerationParameters as Metadata;

/// The image formats `--out` can name, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// `.png` (or no extension): lossless, with the generation parameters
    /// in text chunks.
    Png,
    /// `.jpg` / `.jpeg`: quality 95, no parameters.
    Jpeg,
}

impl ImageFormat {
    /// The format `path`'s extension names; anything else is refused
    /// before any work, so no file ever holds bytes its name misstates.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            None | Some("png") => Ok(ImageFormat::Png),
            Some("jpg" | "jpeg") => Ok(ImageFormat::Jpeg),
            Some("webp") => anyhow::bail!(
                "--out {}: WebP output is not built into sd; use .png or .jpg",
                path.display()
            ),
            Some(other) => anyhow::bail!(
                "--out {}: unknown image format '.{other}'; use .png or .jpg",
                path.display()
            ),
        }
    }
}

/// `out.png` for one image; `out-0.png`, `out-1.png`, ... for several.
pub fn output_paths(out: &Path, count: usize) -> Vec<PathBuf> {
    if count == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out
        .file_stem()
        .map_or("out".into(), |s| s.to_string_lossy().into_owned());
    let ext = out
        .extension()
        .map_or("png".into(), |e| e.to_string_lossy().into_owned());
    (0..count)
        .map(|i| out.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}

pub fn write_outputs(
    paths: &[PathBuf],
    format: ImageFormat,
    images: &[RgbImage],
    metadata: &[Metadata],
    latents_path: Option<&Path>,
    latents: &Tensor,
) -> Result<()> {
    let mut written: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| -> Result<()> {
        for ((path, image), metadata) in paths.iter().zip(images).zip(metadata) {
            let temp = partial(path);
            match format {
                ImageFormat::Png => write_png(&temp, image, metadata),
                ImageFormat::Jpeg => write_jpeg(&temp, image),
            }
            .with_context(|| format!("cannot write {}", path.display()))?;
            written.push((temp, path.clone()));
        }
        if let Some(path) = latents_path {
            let temp = partial(path);
            Tensor::write_safetensors(
                &[(
                    "latents",
                    // (contiguous: img2img latents keep the encoder's
                    // channels-last layout, and safetensors needs dense rows)
                    latents
                        .to_kind(tch::Kind::Float)
                        .to_device(tch::Device::Cpu)
                        .contiguous(),
                )],
                &temp,
            )
            .with_context(|| format!("cannot write {}", path.display()))?;
            written.push((temp, path.to_path_buf()));
        }
        for (temp, path) in &written {
            std::fs::rename(temp, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for (temp, _) in &written {
            let _ = std::fs::remove_file(temp);
        }
    }
    result
}

fn partial(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.partial"))
}

fn write_jpeg(path: &Path, image: &RgbImage) -> Result<()> {
    let file = BufWriter::new(File::create(path)?);
    image::codecs::jpeg::JpegEncoder::new_with_quality(file, 95).encode_image(image)?;
    Ok(())
}

fn write_png(path: &Path, image: &RgbImage, metadata: &Metadata) -> Result<()> {
    std::fs::write(path, sd_pipeline::parameters::encode_png(image, metadata)?)?;
    Ok(())
}
