//! diffusers' `AutoencoderKL`: encode images to latent distributions and
//! decode latents to images, with tiling for large images, slicing over a
//! batch, and an f32 retry when a half-precision decode overflows.

use std::path::Path;
use std::sync::OnceLock;

use sd_core::nn::Conv2d;
use sd_core::weights::KeyMap;
use sd_core::DiffusersModel;
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::config::VaeConfig;
use crate::decoder::Decoder;
use crate::distribution::LatentDistribution;
use crate::encoder::Encoder;
use crate::error::{Result, VaeError};
use crate::tiling::{tiled, TileOptions};

/// What runs the decoder (`post_quant_conv`, then the decoder) on one slice
/// or tile in place of the eager modules: a compiled package, say.
pub trait DecoderCall {
    /// The images for `z` (in the VAE's dtype and on its device), or `None`
    /// where it does not take this call: the eager modules run it.
    fn decode(&self, z: &Tensor) -> Option<Tensor>;
}

/// diffusers' `AutoencoderKL`, under its diffusers key names, with optional
/// tiling and slicing.
pub struct AutoencoderKL {
    config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    vs: VarStore,
    tiling: Option<TileOptions>,
    slicing: bool,
    /// An f32 copy, made on first need, for half-precision overflow.
    f32_twin: OnceLock<Box<AutoencoderKL>>,
}

// SAFETY: encode/decode read the weights and allocate; the f32 twin for overflowing
// half-precision decodes is built once behind a `OnceLock`. Tensors reached through
// `var_store()` share storage with the weights; writing them in place while other
// threads run the model is a race libtorch's own handles allow, outside what this marker
// promises.
unsafe impl sd_core::shared::ReadOnlyShared for AutoencoderKL {}

impl std::fmt::Debug for AutoencoderKL {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoencoderKL")
            .field("config", &self.config)
            .finish()
    }
}

/// Legacy diffusers names of the mid-block attention, as older VAE files use.
pub fn canonical_key(key: &str) -> Option<String> {
    for (old, new) in [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ] {
        if key.contains(old) {
            return Some(key.replace(old, new));
        }
    }
    Some(key.to_string())
}

impl AutoencoderKL {
    /// The architecture of `config`, uninitialised, on `device` (f32).
    pub fn new(config: &VaeConfig, device: Device) -> Result<Self> {
        Self::new_in(config, device, Kind::Float)
    }

    /// The dtype the VAE computes in.
    pub fn dtype(&self) -> Kind {
        self.vs.kind()
    }

    /// Converts the weights to `dtype` in place (e.g. back to f16 where a
    /// pipeline, like diffusers' SD1/SD2 ones, ignores `force_upcast`).
    pub fn set_dtype(&mut self, dtype: Kind) {
        self.vs.set_kind(dtype);
        self.f32_twin = OnceLock::new();
    }

    /// Tiled encode/decode for inputs larger than one tile.
    pub fn set_tiling(&mut self, tiling: Option<TileOptions>) {
        self.tiling = tiling;
    }

    /// The tiling in use, if any.
    pub fn tiling(&self) -> Option<TileOptions> {
        self.tiling
    }

    /// Whether a batch is encoded and decoded one image at a time.
    pub fn slicing(&self) -> bool {
        self.slicing
    }

    /// The default tiling: tiles of the config's `sample_size`, 25% overlap.
    pub fn default_tiling(&self) -> TileOptions {
        TileOptions {
            sample_size: self.config.tile_sample_size(),
            overlap: 0.25,
        }
    }

    /// Encode and decode a batch one image at a time (bounded memory).
    pub fn set_slicing(&mut self, slicing: bool) {
        self.slicing = slicing;
    }

    /// Images (batch, 3, H, W) in [-1, 1] to their latent distribution.
    pub fn encode(&self, image: &Tensor) -> Result<LatentDistribution> {
        let (_, c, h, w) = image.size4().map_err(|_| {
            VaeError::invalid(
                "vae input",
                format!("images must be (batch, 3, h, w), got {:?}", image.size()),
            )
        })?;
        let factor = self.config.downscale();
        if c != self.config.in_channels || h % factor != 0 || w % factor != 0 {
            return Err(VaeError::invalid("vae input", format!(
                "image of {c} channels and {h}x{w}: expected {} channels and sides that are multiples of {factor}",
                self.config.in_channels
            )));
        }
        let image = image.to_device(self.vs.device()).to_kind(self.dtype());
        let moments = self.per_slice(&image, |x| self.encode_one(x));
        Ok(LatentDistribution::from_moments(&moments))
    }

    /// Latents (batch, latent_channels, h, w), unscaled (see
    /// [`AutoencoderKL::unscale_latents`]), to images in about [-1, 1].
    /// A half-precision decode that overflows is redone in f32.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_via(z, None)
    }

    /// As [`decode`](Self::decode), with `call` in place of the decoder's
    /// modules on each slice or tile it takes (a compiled decoder: the
    /// slicing, tiling and the f32 retry stay this type's, and the retry
    /// runs eager).
    pub fn decode_via(&self, z: &Tensor, call: Option<&dyn DecoderCall>) -> Result<Tensor> {
        let (_, c, _, _) = z.size4().map_err(|_| {
            VaeError::invalid(
                "vae input",
                format!(
                    "latents must be (batch, channels, h, w), got {:?}",
                    z.size()
                ),
            )
        })?;
        if c != self.config.latent_channels {
            return Err(VaeError::invalid(
                "vae input",
                format!(
                    "latents have {c} channels, the VAE takes {}",
                    self.config.latent_channels
                ),
            ));
        }
        let z = z.to_device(self.vs.device());
        let image = self.per_slice(&z.to_kind(self.dtype()), |x| self.decode_one(x, call));
        if self.dtype() != Kind::Float && !bool::try_from(image.isfinite().all())? {
            // The latents as given (not rounded to half), through f32 weights.
            let twin = self.f32_twin()?;
            return Ok(twin.per_slice(&z.to_kind(Kind::Float), |x| twin.decode_one(x, None)));
        }
        Ok(image)
    }

    /// Model latents -> what the decoder takes: `z / scaling + shift`, or
    /// with per-channel statistics `z * std / scaling + mean` (SDXL-style configs).
    pub fn unscale_latents(&self, latents: &Tensor) -> Tensor {
        let c = &self.config;
        match (&c.latents_mean, &c.latents_std) {
            (Some(mean), Some(std)) => {
                let (mean, std) = (
                    self.channel_tensor(mean, latents),
                    self.channel_tensor(std, latents),
                );
                latents * std / c.scaling_factor + mean
            }
            _ => latents / c.scaling_factor + c.shift_factor.unwrap_or(0.0),
        }
    }

    /// Encoder samples -> model latents: the inverse of [`AutoencoderKL::unscale_latents`].
    pub fn scale_latents(&self, z: &Tensor) -> Tensor {
        let c = &self.config;
        match (&c.latents_mean, &c.latents_std) {
            (Some(mean), Some(std)) => {
                let (mean, std) = (self.channel_tensor(mean, z), self.channel_tensor(std, z));
                (z - mean) * c.scaling_factor / std
            }
            _ => (z - c.shift_factor.unwrap_or(0.0)) * c.scaling_factor,
        }
    }

    fn channel_tensor(&self, values: &[f64], like: &Tensor) -> Tensor {
        let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        Tensor::from_slice(&v)
            .view([1, -1, 1, 1])
            .to_device(like.device())
            .to_kind(like.kind())
    }

    fn per_slice(&self, x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
        if self.slicing && x.size()[0] > 1 {
            let parts: Vec<Tensor> = x.split(1, 0).iter().map(&f).collect();
            Tensor::cat(&parts, 0)
        } else {
            f(x)
        }
    }

    fn encode_one(&self, image: &Tensor) -> Tensor {
        let encode = |x: &Tensor| {
            let moments = self.encoder.forward(x);
            match &self.quant_conv {
                Some(conv) => conv.forward(&moments),
                None => moments,
            }
        };
        match self.tiling {
            Some(t) if image.size()[2] > t.sample_size || image.size()[3] > t.sample_size => {
                let latent_tile = t.sample_size / self.config.downscale();
                tiled(image, t.sample_size, latent_tile, t.overlap, encode)
            }
            _ => encode(image),
        }
    }

    fn decode_one(&self, z: &Tensor, call: Option<&dyn DecoderCall>) -> Tensor {
        let eager = |x: &Tensor| match &self.post_quant_conv {
            Some(conv) => self.decoder.forward(&conv.forward(x)),
            None => self.decoder.forward(x),
        };
        let decode = |x: &Tensor| match call.and_then(|c| c.decode(x)) {
            Some(image) => image,
            None => eager(x),
        };
        match self.tiling {
            Some(t) => {
                let latent_tile = t.sample_size / self.config.downscale();
                if z.size()[2] > latent_tile || z.size()[3] > latent_tile {
                    tiled(z, latent_tile, t.sample_size, t.overlap, decode)
                } else {
                    decode(z)
                }
            }
            None => decode(z),
        }
    }

    /// This VAE in f32: itself when it is, else an f32 copy made once and
    /// kept (what diffusers' SDXL pipelines encode with under `force_upcast`).
    pub fn upcast(&self) -> Result<&AutoencoderKL> {
        if self.dtype() == Kind::Float {
            return Ok(self);
        }
        self.f32_twin()
    }

    fn f32_twin(&self) -> Result<&AutoencoderKL> {
        if let Some(twin) = self.f32_twin.get() {
            return Ok(twin);
        }
        let twin = self.copy_as(self.vs.device(), Kind::Float)?;
        Ok(self.f32_twin.get_or_init(|| Box::new(twin)))
    }
}

impl DiffusersModel for AutoencoderKL {
    type Config = VaeConfig;
    type Error = VaeError;
    const WEIGHTS_STEM: &'static str = "diffusion_pytorch_model";

    fn read_config(path: &Path) -> Result<VaeConfig> {
        VaeConfig::from_file(path)
    }

    /// The same with parameters created in `kind` (not converted after).
    fn new_in(config: &VaeConfig, device: Device, kind: Kind) -> Result<Self> {
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let moments = 2 * config.latent_channels;
        let latent = config.latent_channels;
        Ok(AutoencoderKL {
            encoder: Encoder::new(&(&root / "encoder"), config)?,
            decoder: Decoder::new(&(&root / "decoder"), config)?,
            quant_conv: config
                .use_quant_conv
                .then(|| Conv2d::new(&(&root / "quant_conv"), moments, moments, 1, 1, 0)),
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| Conv2d::new(&(&root / "post_quant_conv"), latent, latent, 1, 1, 0)),
            config: config.clone(),
            vs,
            tiling: None,
            slicing: false,
            f32_twin: OnceLock::new(),
        })
    }

    fn config(&self) -> &VaeConfig {
        &self.config
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }

    fn folder_key(key: &str) -> KeyMap {
        canonical_key(key).map_or(KeyMap::Skip, KeyMap::To)
    }

    fn after_load(&mut self) {
        if self.config.force_upcast && self.vs.kind() == Kind::Half {
            // As diffusers: loaded in f16, upcast to compute. (The f32 weights
            // are the f16 ones, so results match its to(float32) VAE exactly.)
            self.vs.set_kind(Kind::Float);
        }
    }

    fn copy_settings_to(&self, copy: &mut Self) {
        copy.tiling = self.tiling;
        copy.slicing = self.slicing;
    }
}
