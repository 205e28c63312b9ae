//! Upscaler models as AUTOMATIC1111's "Extras" tab and ComfyUI's "Upscale
//! Model Loader" run them: ESRGAN's RRDBNet in its three key layouts
//! (original, BasicSR/Real-ESRGAN, BSRGAN; 1x/2x/4x/8x; Real-ESRGAN's x2/x1
//! with pixel unshuffle; ESRGAN+) and Real-ESRGAN's SRVGGNetCompact
//! (`realesr-general-x4v3`, `realesr-animevideov3`), the architecture and
//! scale read off the weights as spandrel reads them; from `.safetensors` or
//! from the `.pth` checkpoints most upscalers are distributed as (read
//! without running their code); whole or in overlapping tiles; in f32, f16
//! or bf16.
//!
//! ```no_run
//! # fn main() -> sd_upscale::Result<()> {
//! use sd_upscale::{Tiling, Upscaler};
//! let model = Upscaler::open("RealESRGAN_x4plus.safetensors", tch::Device::Cpu, tch::Kind::Float)?;
//! let image = tch::Tensor::rand([1, 3, 64, 64], (tch::Kind::Float, tch::Device::Cpu));
//! let big = model.upscale(&image, Some(Tiling::new(192, 16)?))?; // (1, 3, 256, 256)
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod arch;
mod compact;
pub mod error;
mod esrgan;
pub mod tile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use tch::{nn::VarStore, Device, Kind, Tensor};

pub use arch::{Architecture, CompactConfig, EsrganConfig};
pub use error::{Result, UpscaleError};
pub use tile::Tiling;

#[derive(Debug)]
enum Net {
    Esrgan(esrgan::RrdbNet),
    Compact(compact::Compact),
}

/// A loaded upscaler.
#[derive(Debug)]
pub struct Upscaler {
    architecture: Architecture,
    net: Net,
    vs: VarStore,
}

impl Upscaler {
    /// Loads weights from `.safetensors` or from a PyTorch `.pth` checkpoint
    /// (read without running it: `sd_core::pickle`), detecting the architecture.
    pub fn open(path: impl AsRef<Path>, device: Device, kind: Kind) -> Result<Self> {
        let path = path.as_ref();
        let tensors = sd_core::pickle::read_state_dict(path)?;
        Self::from_tensors(path, tensors, device, kind)
    }

    /// The upscaler whose weights are `tensors` (a state dict by name;
    /// BasicSR's `params_ema.`/`params.` prefixes are taken off), `path`
    /// naming it in errors.
    pub fn from_tensors(
        path: &Path,
        tensors: BTreeMap<String, Tensor>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let fail = |message: String| UpscaleError::Model {
            path: PathBuf::from(path),
            message,
        };
        let tensors = unwrap_ema(tensors);
        let shapes = tensors.iter().map(|(k, t)| (k.clone(), t.size())).collect();
        let (architecture, renamed) = identify(shapes).map_err(fail)?;
        let vs = VarStore::new(device);
        let net = match architecture {
            Architecture::Esrgan(c) => Net::Esrgan(esrgan::RrdbNet::new(&vs.root(), c)),
            Architecture::Compact(c) => Net::Compact(compact::Compact::new(&vs.root(), c)),
        };
        fill(&vs, &tensors, &renamed).map_err(fail)?;
        let mut upscaler = Upscaler {
            architecture,
            net,
            vs,
        };
        upscaler.vs.set_kind(kind);
        Ok(upscaler)
    }

    /// The architecture of the weights in `path` (`.safetensors` or `.pth`),
    /// from their names and shapes alone: cheap enough for listing a folder.
    pub fn describe(path: impl AsRef<Path>) -> Result<Architecture> {
        let path = path.as_ref();
        let shapes = unwrap_ema(sd_core::pickle::read_state_shapes(path)?);
        let fail = |message: String| UpscaleError::Model {
            path: PathBuf::from(path),
            message,
        };
        Ok(identify(shapes).map_err(fail)?.0)
    }

    /// What it is, with its sizes.
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// The factor it enlarges by.
    pub fn scale(&self) -> i64 {
        self.architecture.scale()
    }

    /// The dtype it computes in.
    pub fn kind(&self) -> Kind {
        self.vs.kind()
    }

    /// The model on `image`: (batch, channels, height, width), values 0..1,
    /// in the model's dtype and on its device; the result is unclamped.
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        self.check(image)?;
        Ok(self.run(image))
    }

    /// The image enlarged, whole or in tiles, clamped to 0..1, in f32.
    pub fn upscale(&self, image: &Tensor, tiling: Option<Tiling>) -> Result<Tensor> {
        self.check(image)?;
        let out = match tiling {
            None => self.run(image).to_kind(Kind::Float),
            Some(tiling) => tile::run_tiled(image, self.scale(), tiling, &|t| self.run(t))?,
        };
        Ok(out.clamp(0.0, 1.0))
    }

    /// An 8-bit RGB image enlarged: `x / 255` in, `round(255 * x)` out, as
    /// spandrel's callers (A1111, ComfyUI) and diffusers write images.
    pub fn upscale_rgb(&self, image: &RgbImage, tiling: Option<Tiling>) -> Result<RgbImage> {
        let (w, h) = image.dimensions();
        let x = Tensor::from_slice(image.as_raw())
            .reshape([h as i64, w as i64, 3])
            .permute([2, 0, 1])
            .unsqueeze(0)
            .to_kind(Kind::Float)
            / 255.0;
        let out = self.upscale(&x, tiling)?;
        let (oh, ow) = (out.size()[2], out.size()[3]);
        let pixels = (out * 255.0)
            .round()
            .to_kind(Kind::Uint8)
            .squeeze_dim(0)
            .permute([1, 2, 0]);
        let bytes = Vec::<u8>::try_from(pixels.contiguous().flatten(0, -1))?;
        RgbImage::from_raw(ow as u32, oh as u32, bytes)
            .ok_or_else(|| UpscaleError::Input("the model's output is no RGB image".into()))
    }

    /// An image batch of the channels the model takes, 2x2 at least.
    fn check(&self, image: &Tensor) -> Result<()> {
        let size = image.size();
        let channels = match self.architecture {
            Architecture::Esrgan(c) => c.in_channels / c.unshuffle.map_or(1, |f| f * f),
            Architecture::Compact(c) => c.in_channels,
        };
        if size.len() != 4 || size[1] != channels || size[2] < 2 || size[3] < 2 {
            return Err(UpscaleError::Input(format!(
                "an image batch of shape {size:?}; this model takes (batch, {channels}, height, width)"
            )));
        }
        Ok(())
    }

    /// The network on a checked image.
    fn run(&self, image: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let image = image.to_device(self.vs.device()).to_kind(self.kind());
        match &self.net {
            Net::Esrgan(net) => net.forward(&image),
            Net::Compact(net) => net.forward(&image),
        }
    }
}

/// Whether `path` starts as a zip archive does (`torch.save`'s checkpoints).
/// The architecture of weights of these names and shapes, and the file's
/// name of each of the model's variables.
fn identify(
    shapes: BTreeMap<String, Vec<i64>>,
) -> std::result::Result<(Architecture, BTreeMap<String, String>), String> {
    let names: Vec<String> = shapes.keys().cloned().collect();
    let renamed = arch::esrgan_original_names(&names);
    let ours = (renamed.iter())
        .map(|(ours, theirs)| (ours.clone(), shapes[theirs].clone()))
        .collect();
    Ok((arch::detect(&ours)?, renamed))
}

/// BasicSR saves `{"params_ema": state}` (or `params`); as tensors those keys
/// carry the prefix. The EMA weights are the ones to use, as spandrel does.
fn unwrap_ema<T>(tensors: BTreeMap<String, T>) -> BTreeMap<String, T> {
    for prefix in ["params_ema.", "params."] {
        if tensors.keys().any(|k| k.starts_with(prefix)) {
            return (tensors.into_iter())
                .filter_map(|(k, t)| Some((k.strip_prefix(prefix)?.to_string(), t)))
                .collect();
        }
    }
    tensors
}

/// Copies each variable from the file tensor `renamed` names for it; every
/// missing, unexpected and misshapen tensor is named.
fn fill(
    vs: &VarStore,
    tensors: &BTreeMap<String, Tensor>,
    renamed: &BTreeMap<String, String>,
) -> std::result::Result<(), String> {
    let _guard = tch::no_grad_guard();
    let variables = vs.variables();
    let mut problems = Vec::new();
    for (name, variable) in &variables {
        match renamed.get(name).map(|theirs| &tensors[theirs]) {
            None => problems.push(format!("missing '{name}'")),
            Some(t) if t.size() != variable.size() => problems.push(format!(
                "'{}' is {:?}, the model needs {:?}",
                renamed[name],
                t.size(),
                variable.size()
            )),
            Some(t) => variable.shallow_clone().copy_(t),
        }
    }
    let unexpected = renamed
        .iter()
        .filter(|(ours, _)| !variables.contains_key(*ours));
    problems.extend(unexpected.map(|(_, theirs)| format!("unexpected '{theirs}'")));
    match problems.is_empty() {
        true => Ok(()),
        false => Err(format!("the weights do not fit: {}", problems.join(", "))),
    }
}
