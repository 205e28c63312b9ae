//! The CLIP image tower (transformers' `CLIPVisionModelWithProjection`), the
//! image encoder IP-Adapters condition on: OpenCLIP ViT-H/14 and ViT-bigG/14
//! in the released files, under transformers' weight names.

use std::path::Path;

use sd_core::nn::{Conv2d, Embedding, LayerNorm, Linear};
use sd_core::weights::KeyMap;
use sd_core::DiffusersModel;
use serde::Deserialize;
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::config::HiddenAct;
use crate::error::{ClipError, Result};
use crate::layer::{EncoderLayer, LayerShape};

/// transformers' `CLIPVisionConfig` (image_encoder/config.json).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct ClipVisionConfig {
    /// Width of the hidden states (1280 for ViT-H, 1664 for ViT-bigG).
    pub hidden_size: i64,
    /// Width of each MLP.
    pub intermediate_size: i64,
    /// Width of `visual_projection`'s output, the image embedding.
    pub projection_dim: i64,
    /// Encoder layers.
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    pub num_attention_heads: i64,
    /// Colour channels (3).
    #[serde(default = "three")]
    pub num_channels: i64,
    /// The square input's side (224).
    pub image_size: i64,
    /// The patches' side (14).
    pub patch_size: i64,
    /// The MLP activation.
    pub hidden_act: HiddenAct,
    /// The layer norms' epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn three() -> i64 {
    3
}

fn default_eps() -> f64 {
    1e-5
}

impl ClipVisionConfig {
    /// Reads a `config.json`: a vision config, or a whole `CLIPConfig` (its
    /// `vision_config`, with the top level's `projection_dim`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| sd_core::CoreError::io(path, e))?;
        let bad = |field: String, message: String| ClipError::Config {
            path: path.to_path_buf(),
            field,
            message,
        };
        let mut value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(String::new(), e.to_string()))?;
        if let Some(vision) = value.get("vision_config").cloned() {
            let projection = value.get("projection_dim").cloned();
            value = vision;
            if let (Some(p), Some(map)) = (projection, value.as_object_mut()) {
                map.entry("projection_dim").or_insert(p);
            }
        }
        let config: Self = serde_path_to_error::deserialize(value)
            .map_err(|e| bad(e.path().to_string(), e.inner().to_string()))?;
        if config.num_attention_heads <= 0 || config.hidden_size % config.num_attention_heads != 0 {
            let message = format!(
                "{} does not divide hidden_size {}",
                config.num_attention_heads, config.hidden_size
            );
            return Err(bad("num_attention_heads".into(), message));
        }
        if config.patch_size <= 0 || config.image_size % config.patch_size != 0 {
            let message = format!(
                "{} does not divide image_size {}",
                config.patch_size, config.image_size
            );
            return Err(bad("patch_size".into(), message));
        }
        Ok(config)
    }

    /// Patches per image plus the class token.
    pub fn positions(&self) -> i64 {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// What a forward pass gives.
#[derive(Debug)]
#[non_exhaustive]
pub struct ClipVisionOutput {
    /// The pooled (class) token, normed and projected: (batch, projection_dim).
    /// Plain IP-Adapters condition on this.
    pub image_embeds: Tensor,
    /// The second-to-last entry of transformers' `hidden_states` (the output
    /// of the last layer but one): (batch, positions, hidden). IP-Adapter
    /// Plus conditions on this.
    pub penultimate: Tensor,
}

/// transformers' `CLIPVisionModelWithProjection`.
pub struct ClipVisionModel {
    config: ClipVisionConfig,
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    position_embedding: Embedding,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    visual_projection: Linear,
    vs: VarStore,
}

// SAFETY: forward reads the weights and allocates new tensors. Tensors reached
// through `var_store()` share storage with the weights; writing them in place
// while other threads run the model is a race libtorch's own handles allow,
// outside what this marker promises.
unsafe impl sd_core::shared::ReadOnlyShared for ClipVisionModel {}

impl std::fmt::Debug for ClipVisionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipVisionModel")
            .field("config", &self.config)
            .finish()
    }
}

impl ClipVisionModel {
    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Encodes preprocessed pixels (batch, 3, image_size, image_size), as
    /// [`crate::image_processor::preprocess`] makes them.
    pub fn forward(&self, pixels: &Tensor) -> Result<ClipVisionOutput> {
        let c = &self.config;
        let expected = [c.num_channels, c.image_size, c.image_size];
        if pixels.dim() != 4 || pixels.size()[1..] != expected {
            let message = format!(
                "pixels must be (batch, {}, {}, {}), got {:?}",
                expected[0],
                expected[1],
                expected[2],
                pixels.size()
            );
            return Err(ClipError::invalid("image encoder", message));
        }
        let batch = pixels.size()[0];
        let pixels = pixels.to_device(self.device()).to_kind(self.vs.kind());
        // 1. patches, then the class token first, plus positions
        let patches = self
            .patch_embedding
            .forward(&pixels)
            .flatten(2, -1)
            .transpose(1, 2);
        let class = self.class_embedding.expand([batch, 1, -1], false);
        let positions = Tensor::arange(c.positions(), (Kind::Int64, self.device())).unsqueeze(0);
        let x = Tensor::cat(&[class, patches], 1) + self.position_embedding.forward(&positions);
        // 2. pre-norm, the layers (keeping the last but one's output)
        let mut x = self.pre_layrnorm.forward(&x);
        let mut penultimate = x.shallow_clone();
        for layer in &self.layers {
            penultimate = x;
            x = layer.forward(&penultimate);
        }
        // 3. the class token, normed and projected
        let pooled = self.post_layernorm.forward(&x.select(1, 0));
        Ok(ClipVisionOutput {
            image_embeds: self.visual_projection.forward(&pooled),
            penultimate,
        })
    }
}

impl DiffusersModel for ClipVisionModel {
    type Config = ClipVisionConfig;
    type Error = ClipError;
    const WEIGHTS_STEM: &'static str = "model";

    fn read_config(path: &Path) -> Result<ClipVisionConfig> {
        ClipVisionConfig::from_file(path)
    }

    fn new_in(config: &ClipVisionConfig, device: Device, kind: Kind) -> Result<Self> {
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let vision = &root / "vision_model";
        let emb = &vision / "embeddings";
        let (h, p) = (config.hidden_size, config.patch_size);
        let shape = LayerShape {
            hidden: h,
            intermediate: config.intermediate_size,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps,
            act: config.hidden_act,
            causal: false,
        };
        let eps = config.layer_norm_eps;
        let layers = &vision / "encoder" / "layers";
        Ok(ClipVisionModel {
            class_embedding: sd_core::nn::param(&emb, "class_embedding", &[h]),
            patch_embedding: Conv2d::no_bias(
                &(&emb / "patch_embedding"),
                config.num_channels,
                h,
                p,
                p,
                0,
            ),
            position_embedding: Embedding::new(
                &(&emb / "position_embedding"),
                config.positions(),
                h,
            ),
            pre_layrnorm: LayerNorm::new(&(&vision / "pre_layrnorm"), h, eps),
            layers: (0..config.num_hidden_layers)
                .map(|i| EncoderLayer::new(&(&layers / i), &shape))
                .collect(),
            post_layernorm: LayerNorm::new(&(&vision / "post_layernorm"), h, eps),
            visual_projection: Linear::new(
                &(&root / "visual_projection"),
                h,
                config.projection_dim,
                false,
            ),
            config: config.clone(),
            vs,
        })
    }

    fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }

    fn folder_key(key: &str) -> KeyMap {
        // a buffer older files carry
        match key.ends_with("embeddings.position_ids") {
            true => KeyMap::Skip,
            false => KeyMap::To(key.to_string()),
        }
    }
}
