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
    /// Per-block scales of each --ip-adapter in order, as diffusers'
    /// set_ip_adapter_scale dict: '{"up": {"block_0": [0.0, 1.0, 0.0]}}'
    /// (InstantStyle's style-only on SDXL); unnamed blocks at 0. Replaces
    /// the adapter's :SCALE.
    #[arg(long = "ip-blocks", value_name = "JSON")]
    pub blocks: Vec<String>,
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
        let (n, images) = (self.adapters.len(), self.images.len());
        if n != images {
            bail!("--ip-adapter given {n} times, --ip-image {images} times: give one image (list) per adapter, in the same order");
        }
        let encoders = encoder_of_each(n, &self.encoders)?;
        if !self.blocks.is_empty() && self.blocks.len() != n {
            bail!("--ip-blocks given {} times for {n} IP-Adapters: give it once per adapter, in order", self.blocks.len());
        }
        let mut parsed = Parsed {
            adapters: Vec::new(),
            prompts: Vec::new(),
        };
        for (i, (option, list)) in self.adapters.iter().zip(&self.images).enumerate() {
            let (path, scale) = crate::control::path_and_scale("--ip-adapter", option)?;
            let images = list
                .split(',')
                .map(|p| {
                    Ok(image::open(p)
                        .with_context(|| format!("--ip-image {p}: cannot read it"))?
                        .to_rgb8())
                })
                .collect::<Result<Vec<_>>>()?;
            parsed.adapters.push((path, encoders[i].clone()));
            let prompt = ImagePrompt::new(images).with_scale(scale);
            let prompt = match self.blocks.get(i) {
                Some(json) => prompt.with_block_scales(block_scales(json)?),
                None => prompt,
            };
            parsed.prompts.push(prompt);
        }
        Ok(parsed)
    }
}

/// `--ip-blocks`' JSON as per-block scales.
fn block_scales(json: &str) -> Result<sd_pipeline::BlockScales> {
    let value: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("--ip-blocks {json}: not JSON"))?;
    sd_pipeline::BlockScales::from_json(&value)
        .map_err(|e| anyhow::anyhow!("--ip-blocks {json}: {e}"))
}

/// The `--image-encoder` of each of `n` IP-Adapters (`sd txt2img` and `sd
/// serve`): given once for all, or once per adapter in their order; each an
/// existing folder.
pub fn encoder_of_each(n: usize, encoders: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let given = encoders.len();
    if n > 0 && given != 1 && given != n {
        bail!("--image-encoder given {given} times for {n} IP-Adapters: give it once, or once per adapter");
    }
    if n == 0 && given > 0 {
        bail!("--image-encoder applies to IP-Adapters: give --ip-adapter");
    }
    if let Some(missing) = encoders.iter().find(|e| !e.is_dir()) {
        bail!("--image-encoder {}: no such folder", missing.display());
    }
    Ok((0..n).map(|i| encoders[i.min(given - 1)].clone()).collect())
}
