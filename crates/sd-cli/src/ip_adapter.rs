//! The IP-Adapter options of `sd txt2img`, `img2img` and `inpaint`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use sd_pipeline::ImagePrompt;

#[derive(Args, Debug, Default)]
pub struct IpAdapterOptions {
    /// An IP-Adapter file as released (.safetensors or .bin: plain or Plus,
    /// SD1.5 or SDXL) at SCALE (default 1.0). Repeatable, one --ip-image each.
    #[arg(long = "ip-adapter", value_name = "FILE[:SCALE]")]
    pub adapters: Vec<String>,
    /// The reference image of each --ip-adapter, in the same order; several
    /// images for one adapter separated by commas.
    #[arg(long = "ip-image", value_name = "PNG[,PNG...]")]
    pub images: Vec<String>,
    /// The image encoder folder the adapters were trained with
    /// (CLIPVisionModelWithProjection: the IP-Adapter repository's
    /// models/image_encoder, ViT-H, or sdxl_models/image_encoder, ViT-bigG).
    /// Once for every adapter, or once per adapter in their order.
    #[arg(long = "image-encoder", value_name = "DIR")]
    pub encoders: Vec<PathBuf>,
}

/// What the options ask for: (adapter, encoder) pairs to load, and the
/// request's image prompts.
pub struct Parsed {
    pub adapters: Vec<(PathBuf, PathBuf)>,
    pub prompts: Vec<ImagePrompt>,
}

impl IpAdapterOptions {
    /// Checks the options' syntax (files exist, one image list per adapter,
    /// an encoder for each) and reads the images.
    pub fn parse(&self) -> Result<Parsed> {
        let (n, images, encoders) = (self.adapters.len(), self.images.len(), self.encoders.len());
        if n != images {
            bail!("--ip-adapter given {n} times, --ip-image {images} times: give one image (list) per adapter, in the same order");
        }
        if n > 0 && encoders != 1 && encoders != n {
            bail!("--image-encoder given {encoders} times for {n} IP-Adapters: give it once, or once per adapter");
        }
        if n == 0 && encoders > 0 {
            bail!("--image-encoder applies to IP-Adapters: give --ip-adapter");
        }
        let mut parsed = Parsed {
            adapters: Vec::new(),
            prompts: Vec::new(),
        };
        for (i, (option, list)) in self.adapters.iter().zip(&self.images).enumerate() {
            let (path, scale) = crate::control::path_and_scale("--ip-adapter", option)?;
            let encoder = self.encoders[i.min(encoders - 1)].clone();
            if !encoder.is_dir() {
                bail!("--image-encoder {}: no such folder", encoder.display());
            }
            let images = list
                .split(',')
                .map(|p| {
                    Ok(image::open(p)
                        .with_context(|| format!("--ip-image {p}: cannot read it"))?
                        .to_rgb8())
                })
                .collect::<Result<Vec<_>>>()?;
            parsed.adapters.push((path, encoder));
            parsed
                .prompts
                .push(ImagePrompt::new(images).with_scale(scale));
        }
        Ok(parsed)
    }
}
