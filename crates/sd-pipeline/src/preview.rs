//! The tiny autoencoder (TAESD) in the pipeline, and preview images of
//! latents while a picture forms: decoded by TAESD when one is loaded, or
//! by a fixed linear map from the latent channels (4, or SD3's 16) to RGB
//! otherwise (a blurry eighth-size sketch, nearly free).

use std::path::Path;

use image::RgbImage;
use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use sd_vae::AutoencoderTiny;
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::images::tensor_to_images;
use crate::model::ModelFamily;
use crate::pipeline::StableDiffusion;

/// Latent channel -> RGB weights (rows: the channels) and an RGB bias,
/// least-squares fits of decoded colours on the denoiser-scale latents, as
/// widely used for previews (ComfyUI's `latent_formats`). Approximate by
/// nature; for SD1.x/SD2.x, SDXL and SD3.
type RgbMap = (&'static [[f64; 3]], [f64; 3]);

const SD_RGB: RgbMap = (
    &[
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ],
    [0.0, 0.0, 0.0],
);
const SDXL_RGB: RgbMap = (
    &[
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ],
    [0.1084, -0.0175, -0.0011],
);
const SD3_RGB: RgbMap = (
    &[
        [-0.0922, -0.0175, 0.0749],
        [0.0311, 0.0633, 0.0954],
        [0.1994, 0.0927, 0.0458],
        [0.0856, 0.0339, 0.0902],
        [0.0587, 0.0272, -0.0496],
        [-0.0006, 0.1104, 0.0309],
        [0.0978, 0.0306, 0.0427],
        [-0.0042, 0.1038, 0.1358],
        [-0.0194, 0.0020, 0.0669],
        [-0.0488, 0.0130, -0.0268],
        [0.0922, 0.0988, 0.0951],
        [-0.0278, 0.0524, -0.0542],
        [0.0332, 0.0456, 0.0895],
        [-0.0069, -0.0030, -0.0810],
        [-0.0596, -0.0465, -0.0293],
        [-0.1448, -0.1463, -0.1189],
    ],
    [0.2394, 0.2135, 0.1925],
);

/// What the tiny autoencoder is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyVaeUse {
    /// Previews only; the final image comes from the full VAE.
    Previews,
    /// Previews and the final decode (much faster and lighter, a little
    /// softer than the full VAE).
    PreviewsAndDecode,
}

/// The pipeline's tiny autoencoder, if one is loaded, and its use.
#[derive(Default)]
pub(crate) struct TinyVae(Option<(Frozen<AutoencoderTiny>, TinyVaeUse)>);

impl StableDiffusion {
    /// Loads a tiny autoencoder (a diffusers `AutoencoderTiny` folder, or a
    /// folder with the original `taesd_encoder`/`taesd_decoder` .safetensors;
    /// taesd for SD1/SD2, taesdxl for SDXL) onto the VAE's device, in the
    /// VAE's dtype.
    pub fn load_tiny_vae(&mut self, dir: impl AsRef<Path>, usage: TinyVaeUse) -> Result<()> {
        let device = self.devices().vae;
        let tiny = AutoencoderTiny::from_dir(dir.as_ref(), device, self.vae.dtype())?;
        self.tiny_vae = TinyVae(Some((Frozen::new(tiny), usage)));
        Ok(())
    }

    /// The tiny autoencoder, if one is loaded.
    pub fn tiny_vae(&self) -> Option<&AutoencoderTiny> {
        self.tiny_vae.0.as_ref().map(|(t, _)| &**t)
    }

    /// Drops the tiny autoencoder (previews fall back to the linear map).
    pub fn unload_tiny_vae(&mut self) {
        self.tiny_vae = TinyVae(None);
    }

    /// The tiny autoencoder when it makes the final images.
    pub(crate) fn tiny_for_decode(&self) -> Option<&AutoencoderTiny> {
        match &self.tiny_vae.0 {
            Some((tiny, TinyVaeUse::PreviewsAndDecode)) => Some(tiny),
            _ => None,
        }
    }

    /// Preview images of `latents` (batch, channels, h, w) in the UNet's
    /// scale (a step's latents, or better its denoised estimate,
    /// [`crate::StepInfo::denoised`]): TAESD's decode when one is loaded
    /// (full size), else the linear map (one pixel per latent).
    pub fn preview(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        let _guard = tch::no_grad_guard();
        if let Some(tiny) = self.tiny_vae() {
            return decode_tiny(tiny, latents);
        }
        let (weights, bias) = match self.family() {
            ModelFamily::StableDiffusionXl => SDXL_RGB,
            ModelFamily::StableDiffusion3 => SD3_RGB,
            _ => SD_RGB,
        };
        let z = latents.to_kind(Kind::Float);
        let channels = z.size()[1];
        let map = if channels == weights.len() as i64 {
            Tensor::from_slice(&weights.concat()).view([channels, 3])
        } else {
            // Not the family's latent space: show its first three channels.
            Tensor::eye_m(channels, 3, (Kind::Double, tch::Device::Cpu))
        };
        let map = map.to_kind(Kind::Float).to_device(z.device());
        let bias = Tensor::from_slice(&bias)
            .to_kind(Kind::Float)
            .to_device(z.device())
            .view([1, 3, 1, 1]);
        let rgb = z.permute([0, 2, 3, 1]).matmul(&map).permute([0, 3, 1, 2]) + bias;
        tensor_to_images(&rgb)
    }
}

/// The tiny autoencoder's images of UNet-scale latents, as diffusers'
/// pipelines decode with it (`latents / scaling_factor`).
pub(crate) fn decode_tiny(tiny: &AutoencoderTiny, latents: &Tensor) -> Result<Vec<RgbImage>> {
    let z = latents.to_device(tiny.device()).to_kind(tiny.dtype());
    let decoded = tiny.decode(&(z / tiny.config().scaling_factor))?;
    tensor_to_images(&decoded)
}
