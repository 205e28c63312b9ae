//! IP-Adapters in the pipeline: loading an adapter with its image encoder,
//! and a request's image prompts turned into every cross-attention layer's
//! keys and values as diffusers' `prepare_ip_adapter_image_embeds`,
//! `MultiIPAdapterImageProjection` and `IPAdapterAttnProcessor2_0` compute
//! them (negative embeddings: zeros for plain adapters, the encoder's
//! states of a zero image for Plus; the batch laid out as diffusers lays it
//! out, so every product has diffusers' shape).

use std::path::{Path, PathBuf};

use image::RgbImage;
use sd_clip::image_processor::preprocess_all;
use sd_clip::ClipVisionModel;
use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use sd_ip_adapter::{AdapterKind, IpAdapter};
use sd_unet::ImageTokens;
use tch::{Device, Tensor};

use crate::error::{PipelineError, Result};
use crate::front::Field;
pub use crate::ip_scale::{BlockScales, IpScale};
use crate::pipeline::StableDiffusion;

/// What a request gives one loaded IP-Adapter: its reference image(s)
/// (several images' tokens are attended to together) and its scale.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImagePrompt {
    /// One or more images.
    pub images: Vec<RgbImage>,
    /// How strongly the adapter's attention is added (diffusers'
    /// `set_ip_adapter_scale`: a number, or per block).
    pub scale: IpScale,
}

impl ImagePrompt {
    /// `images` at scale 1.0.
    pub fn new(images: Vec<RgbImage>) -> Self {
        ImagePrompt {
            images,
            scale: IpScale::Uniform(1.0),
        }
    }

    /// The same at another scale.
    pub fn with_scale(mut self, scale: f64) -> Self {
        self.scale = IpScale::Uniform(scale);
        self
    }

    /// The same with per-block scales (diffusers' dict).
    pub fn with_block_scales(mut self, blocks: BlockScales) -> Self {
        self.scale = IpScale::Blocks(blocks);
        self
    }

    /// What needs no model: an image, a finite scale. (The request layer
    /// checks it before any work; a run checks it again.)
    pub fn check(&self) -> Result<()> {
        if self.images.is_empty() {
            return Err(PipelineError::request(
                Field::IpAdapter,
                "an image prompt without an image",
            ));
        }
        if let IpScale::Uniform(scale) = self.scale {
            if !scale.is_finite() {
                let message = format!("scale {scale} is not a number");
                return Err(PipelineError::request(Field::IpAdapter, message));
            }
        }
        Ok(())
    }
}

struct Loaded {
    adapter: Frozen<IpAdapter>,
    /// Index into [`IpAdapters::encoders`].
    encoder: usize,
}

/// The pipeline's IP-Adapters (in the order their prompts are given) and
/// their image encoders (one per folder, shared).
#[derive(Default)]
pub(crate) struct IpAdapters {
    adapters: Vec<Loaded>,
    encoders: Vec<(PathBuf, Frozen<ClipVisionModel>)>,
}

impl StableDiffusion {
    /// Loads an IP-Adapter file (`.safetensors` or `.bin`) with the image
    /// encoder folder it was trained with (`CLIPVisionModelWithProjection`:
    /// ViT-H for SD1.5 and the `_vit-h` SDXL adapters, ViT-bigG for the
    /// other SDXL ones). An adapter made for another model, or an encoder of
    /// the wrong width, is refused here in one line.
    pub fn load_ip_adapter(
        &mut self,
        path: impl AsRef<Path>,
        image_encoder: impl AsRef<Path>,
    ) -> Result<()> {
        let (path, folder) = (path.as_ref(), image_encoder.as_ref());
        let unet = self.unet().ok_or_else(|| {
            PipelineError::model(path, "IP-Adapters are for UNet models (SD1.x, SD2.x, SDXL)")
        })?;
        let device = self.placement.home(self.devices().unet);
        let dtype = self.denoiser.dtype();
        let adapter = IpAdapter::open(path, device, dtype)?;
        adapter.check_unet(unet.cross_attention_layers())?;
        let encoder = match self
            .ip_adapters
            .encoders
            .iter()
            .position(|(p, _)| p == folder)
        {
            Some(i) => i,
            None => {
                let model = ClipVisionModel::from_folder(folder, device, dtype, None)?;
                let encoders = &mut self.ip_adapters.encoders;
                encoders.push((folder.to_path_buf(), Frozen::new(model)));
                encoders.len() - 1
            }
        };
        let config = self.ip_adapters.encoders[encoder].1.config();
        let (width, what) = match adapter.kind() {
            AdapterKind::Plain => (config.projection_dim, "projection_dim"),
            _ => (config.hidden_size, "hidden_size"),
        };
        if width != adapter.input_width() {
            return Err(PipelineError::model(
                path,
                format!(
                    "takes image features {} wide, the image encoder in {} gives {width} \
                     ({what}): use the encoder the adapter was trained with",
                    adapter.input_width(),
                    folder.display()
                ),
            ));
        }
        self.ip_adapters.adapters.push(Loaded {
            adapter: Frozen::new(adapter),
            encoder,
        });
        Ok(())
    }

    /// The loaded IP-Adapters' files, in order.
    pub fn ip_adapter_paths(&self) -> Vec<&Path> {
        let adapters = self.ip_adapters.adapters.iter();
        adapters.map(|a| a.adapter.path()).collect()
    }

    /// Image prompts as each cross-attention layer's keys and values, for a
    /// UNet batch of `batch` images, doubled under CFG (negative half
    /// first), on `device`; none without prompts. A run does this once
    /// before its first step; public to time it on its own.
    pub fn encode_image_prompts(
        &self,
        prompts: &[ImagePrompt],
        (batch, cfg): (i64, bool),
        device: Device,
    ) -> Result<Option<ImageTokens>> {
        if prompts.is_empty() {
            return Ok(None);
        }
        let loaded = &self.ip_adapters.adapters;
        if prompts.len() != loaded.len() {
            return Err(PipelineError::request(
                Field::IpAdapter,
                format!(
                    "{} image prompts for {} loaded IP-Adapters (one each, in order)",
                    prompts.len(),
                    loaded.len()
                ),
            ));
        }
        let mut layers: Vec<Vec<sd_unet::ExtraTokens>> = Vec::new();
        for (prompt, loaded) in prompts.iter().zip(loaded) {
            let tokens = self.adapter_tokens(prompt, loaded, (batch, cfg))?;
            let layers_of_unet = self.unet().map(|u| u.cross_attention_layers());
            let scales = prompt.scale.per_layer(layers_of_unet.unwrap_or_default())?;
            let scale = |i: usize| scales.get(i).copied().unwrap_or(0.0);
            let per_layer = loaded.adapter.layer_tokens(&tokens, &scale);
            layers.resize_with(per_layer.len(), Vec::new);
            for (layer, mut extra) in layers.iter_mut().zip(per_layer) {
                extra.key = extra.key.to_device(device);
                extra.value = extra.value.to_device(device);
                layer.push(extra);
            }
        }
        Ok(Some(ImageTokens::new(layers)))
    }

    /// One adapter's tokens, (batch x2 under CFG, images x tokens, width).
    fn adapter_tokens(
        &self,
        prompt: &ImagePrompt,
        loaded: &Loaded,
        (batch, cfg): (i64, bool),
    ) -> Result<Tensor> {
        prompt.check()?;
        let encoder = &loaded.encoder_model(&self.ip_adapters);
        let pixels = preprocess_all(&prompt.images, encoder.config().image_size)?;
        let out = encoder.forward(&pixels)?;
        let (negative, positive) = match loaded.adapter.kind() {
            AdapterKind::Plain => (out.image_embeds.zeros_like(), out.image_embeds),
            _ => {
                let zeros = encoder.forward(&pixels.zeros_like())?;
                (zeros.penultimate, out.penultimate)
            }
        };
        // diffusers' rows: [negative x batch, positive x batch], each the
        // prompt's images, projected in one batch
        let repeat = |t: &Tensor| t.repeat([batch, 1, 1][..t.dim()].to_vec());
        let rows = match cfg {
            true => Tensor::cat(&[repeat(&negative), repeat(&positive)], 0),
            false => repeat(&positive),
        };
        let tokens = loaded.adapter.project(&rows)?;
        let (_, count, width) = tokens.size3()?;
        let images = prompt.images.len() as i64;
        Ok(tokens.reshape([-1, images * count, width]))
    }
}

impl Loaded {
    fn encoder_model<'a>(&self, all: &'a IpAdapters) -> &'a ClipVisionModel {
        &all.encoders[self.encoder].1
    }
}
