//! IP-Adapter for Stable Diffusion 1.x and SDXL: a reference image as a
//! prompt. The image encoder (`sd_clip::ClipVisionModel`) gives features;
//! an adapter's projection turns them into a few tokens; each of the UNet's
//! cross-attention layers attends to those tokens with the adapter's own
//! `to_k_ip`/`to_v_ip` and adds the result, scaled (decoupled
//! cross-attention: `sd_core::layers::ExtraTokens`).
//!
//! The files are read as released (`ip-adapter_sd15.safetensors`,
//! `ip-adapter-plus_sdxl_vit-h.bin`, ...): `image_proj.*` and
//! `ip_adapter.N.to_k_ip/to_v_ip.weight`, N = 1, 3, 5, ... over the UNet's
//! cross-attention layers in diffusers' processor order; `.bin` files are
//! read without running their pickle (`sd_core::pickle`). Inside, weights
//! carry diffusers' names, as `load_ip_adapter` converts them.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sd_core::layers::ExtraTokens;
use sd_core::nn::Linear;
use sd_unet::CrossAttentionLayer;
use tch::{nn::VarStore, Device, Kind, Tensor};

mod error;
mod load;
mod projection;

pub use error::{IpAdapterError, Result};
use projection::{Projection, Shape};

/// Which image features an adapter conditions on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdapterKind {
    /// The encoder's pooled, projected embedding, as 4 tokens
    /// (`ip-adapter_sd15`, `ip-adapter_sdxl`, `ip-adapter_sdxl_vit-h`).
    Plain,
    /// The encoder's penultimate hidden states through a resampler
    /// (`ip-adapter-plus_sd15`, `ip-adapter-plus_sdxl_vit-h`, the face ones
    /// of the same layout).
    Plus,
}

/// A loaded IP-Adapter.
pub struct IpAdapter {
    path: PathBuf,
    shape: Shape,
    projection: Projection,
    /// `to_k_ip`, `to_v_ip` per cross-attention layer, in order.
    layers: Vec<(Linear, Linear)>,
    vs: VarStore,
}

// SAFETY: its `&self` methods read the weights and allocate new tensors.
// Tensors reached through `var_store()` share storage with the weights;
// writing them in place while other threads run is outside this promise.
unsafe impl sd_core::shared::ReadOnlyShared for IpAdapter {}

impl std::fmt::Debug for IpAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpAdapter")
            .field("path", &self.path)
            .field("shape", &self.shape)
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl IpAdapter {
    /// Reads an adapter file (`.safetensors`, or a zip-format `.bin`/`.pth`)
    /// onto `device` in `kind`; every missing, unexpected or misshapen
    /// tensor is named.
    pub fn open(path: impl AsRef<Path>, device: Device, kind: Kind) -> Result<Self> {
        let path = path.as_ref();
        let tensors = sd_core::pickle::read_state_dict(path)?;
        Self::from_tensors(path, tensors, device, kind)
    }

    /// The adapter whose weights are `tensors` (the file's names), `path`
    /// naming it in errors.
    pub fn from_tensors(
        path: &Path,
        tensors: BTreeMap<String, Tensor>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let shapes = tensors.iter().map(|(k, t)| (k.clone(), t.size())).collect();
        let adapter = Self::uninitialised(path, &shapes, device, kind)?;
        load::fill(&adapter.vs, tensors);
        Ok(adapter)
    }

    /// The adapter a file of these tensor shapes (by name) makes, its
    /// weights not set: a released file's layout checked from its names and
    /// shapes alone (nothing is allocated for real).
    pub fn uninitialised(
        path: &Path,
        shapes: &BTreeMap<String, Vec<i64>>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let fail = |message: String| IpAdapterError::Adapter {
            path: path.to_path_buf(),
            message,
        };
        let shape = load::shape(shapes).map_err(fail)?;
        let ids = load::layer_ids(shapes).map_err(fail)?;
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let projection = Projection::new(&(&root / "image_proj"), shape);
        let cross = shape.output_width();
        let mut layers = Vec::new();
        for (id, width) in &ids {
            let layer = &root / "ip_adapter" / *id;
            layers.push((
                Linear::new(&(&layer / "to_k_ip"), cross, *width, false),
                Linear::new(&(&layer / "to_v_ip"), cross, *width, false),
            ));
        }
        load::check(&vs, shapes).map_err(fail)?;
        Ok(IpAdapter {
            path: path.to_path_buf(),
            shape,
            projection,
            layers,
            vs,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Plain or Plus.
    pub fn kind(&self) -> AdapterKind {
        match self.shape {
            Shape::Plain { .. } => AdapterKind::Plain,
            Shape::Plus { .. } => AdapterKind::Plus,
        }
    }

    /// The width of the image features it takes: the encoder's
    /// `projection_dim` (plain) or `hidden_size` (Plus).
    pub fn input_width(&self) -> i64 {
        self.shape.input_width()
    }

    /// The variables (diffusers' names).
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// Checks the adapter was made for a UNet with these cross-attention
    /// layers (as [`sd_unet::UNet2DConditionModel::cross_attention_layers`]
    /// lists them): one message naming the file and what differs.
    pub fn check_unet(&self, unet: &[CrossAttentionLayer]) -> Result<()> {
        let fail = |message: String| IpAdapterError::Adapter {
            path: self.path.clone(),
            message,
        };
        let family = |n: usize| match n {
            16 => " (SD1.x/SD2.x)",
            70 => " (SDXL)",
            _ => "",
        };
        if unet.len() != self.layers.len() {
            return Err(fail(format!(
                "made for a UNet with {} cross-attention layers{}, this model has {}{}",
                self.layers.len(),
                family(self.layers.len()),
                unet.len(),
                family(unet.len())
            )));
        }
        for (layer, (to_k, _)) in unet.iter().zip(&self.layers) {
            let [width, context] = to_k.weight.size()[..] else {
                unreachable!("a linear weight")
            };
            if (width, context) != (layer.width, layer.context_width) {
                return Err(fail(format!(
                    "its layer for {} is {width} wide over {context}-wide tokens; \
                     the model's is {} over {}: made for another model",
                    layer.name, layer.width, layer.context_width
                )));
            }
        }
        Ok(())
    }

    /// Image features to the adapter's tokens: pooled embeddings (batch,
    /// width) for plain adapters, penultimate hidden states (batch,
    /// positions, width) for Plus; (batch, tokens, cross width) out.
    pub fn project(&self, features: &Tensor) -> Result<Tensor> {
        let want = match self.kind() {
            AdapterKind::Plain => 2,
            AdapterKind::Plus => 3,
        };
        let width = features.size().last().copied();
        if features.dim() != want || width != Some(self.input_width()) {
            return Err(IpAdapterError::Input(format!(
                "{}: image features of shape {:?}, the adapter takes {} dims of width {}",
                self.path.display(),
                features.size(),
                want,
                self.input_width()
            )));
        }
        let features = features.to_device(self.vs.device());
        Ok(self.projection.forward(&features.to_kind(self.vs.kind())))
    }

    /// Each cross-attention layer's keys and values of `tokens` (batch,
    /// tokens, cross width: several images' tokens may be concatenated),
    /// with `scale(layer index)` as that layer's scale.
    pub fn layer_tokens(&self, tokens: &Tensor, scale: &dyn Fn(usize) -> f64) -> Vec<ExtraTokens> {
        let tokens = tokens.to_device(self.vs.device()).to_kind(self.vs.kind());
        (self.layers.iter().enumerate())
            .map(|(i, (to_k, to_v))| ExtraTokens {
                key: to_k.forward(&tokens),
                value: to_v.forward(&tokens),
                scale: scale(i),
            })
            .collect()
    }
}
