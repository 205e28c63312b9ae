//! The CLIP text transformer (transformers' `CLIPTextModel` and
//! `CLIPTextModelWithProjection`), with transformers' weight names.
//!
//! Variables are named as in the real SD repos (`text_model.encoder.layers.0...`,
//! saved by transformers 4). Files saved by transformers 5 drop the
//! `text_model.` prefix of `CLIPTextModel`; both load.

use std::path::Path;

use sd_core::nn::{Embedding, LayerNorm, Linear};
use sd_core::weights::KeyMap;
use sd_core::DiffusersModel;
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::config::ClipTextConfig;
use crate::error::{ClipError, Result};
use crate::layer::{EncoderLayer, LayerShape};

/// Everything a forward pass gives.
#[derive(Debug)]
pub struct ClipOutput {
    /// Embeddings output, then each layer's output: `num_hidden_layers + 1`
    /// entries of (batch, 77, hidden). `hidden_states[n - 2]` is the
    /// penultimate layer SD2/SDXL condition on.
    pub hidden_states: Vec<Tensor>,
    /// The last layer after the final layer norm (SD1.x's conditioning).
    pub last_hidden_state: Tensor,
    /// The final-normed state at each prompt's EOS token.
    pub pooled: Tensor,
    /// `pooled` through `text_projection` (with-projection models only).
    pub text_embeds: Option<Tensor>,
}

/// transformers' `CLIPTextModel` (SD1/SD2, SDXL's first tower) and
/// `CLIPTextModelWithProjection` (SDXL's second), under their transformers key names.
pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    /// Textual-inversion rows after the vocabulary (ids `vocab_size..`).
    added_tokens: Option<Tensor>,
    vs: VarStore,
}

// SAFETY: forward and the embedding lookups read the weights and allocate new tensors.
// Tensors reached through `var_store()` share storage with the weights; writing them in
// place while other threads run the model is a race libtorch's own handles allow,
// outside what this marker promises.
unsafe impl sd_core::shared::ReadOnlyShared for ClipTextModel {}

impl std::fmt::Debug for ClipTextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTextModel")
            .field("config", &self.config)
            .finish()
    }
}

impl ClipTextModel {
    /// Gives a model without `text_projection` an identity one (width x
    /// width), as diffusers does for Stability's SD3 single files, whose
    /// CLIP-L has none: the pooled output then goes through the same
    /// product diffusers computes (a GEMM with an identity rounds as GEMMs
    /// do, not always to its input). A model with a projection is left as is.
    pub fn add_identity_projection(&mut self) {
        if self.text_projection.is_some() {
            return;
        }
        let h = self.config.hidden_size;
        let linear = Linear::new(&(&self.vs.root() / "text_projection"), h, h, false);
        let _guard = tch::no_grad_guard();
        let eye = Tensor::eye(h, (linear.weight.kind(), linear.weight.device()));
        linear.weight.shallow_clone().copy_(&eye);
        self.text_projection = Some(linear);
        self.config.architectures = Some(vec!["CLIPTextModelWithProjection".into()]);
        self.config.projection_dim = Some(h);
    }

    /// The architecture of `config` with uninitialised weights on `device` (f32).
    pub fn new(config: &ClipTextConfig, device: Device) -> Result<Self> {
        Self::new_in(config, device, Kind::Float)
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Encodes (batch, 77) token ids.
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipOutput> {
        let (_, n) = input_ids.size2().map_err(|_| {
            ClipError::invalid(
                "text encoder",
                format!(
                    "token ids must be (batch, tokens), got {:?}",
                    input_ids.size()
                ),
            )
        })?;
        if n > self.config.max_position_embeddings {
            return Err(ClipError::invalid(
                "text encoder",
                format!(
                    "{n} tokens is more than the {} positions of this encoder",
                    self.config.max_position_embeddings
                ),
            ));
        }
        let ids = input_ids.to_device(self.device());
        // 1. token + position embeddings
        let positions = Tensor::arange(n, (Kind::Int64, self.device())).unsqueeze(0);
        let mut x = self.embed_tokens(&ids) + self.position_embedding.forward(&positions);
        let mut hidden_states = vec![x.shallow_clone()];
        // 2. the causal transformer layers
        for layer in &self.layers {
            x = layer.forward(&x);
            hidden_states.push(x.shallow_clone());
        }
        // 3. final norm; the pooled vector sits at each prompt's EOS token
        let last_hidden_state = self.final_layer_norm.forward(&x);
        let eos_positions = match self.config.eos_token_id {
            Some(2) | None => ids.argmax(-1, false),
            Some(eos) => ids.eq(eos).to_kind(Kind::Int).argmax(-1, false),
        };
        let batch = Tensor::arange(ids.size()[0], (Kind::Int64, self.device()));
        let pooled = last_hidden_state.index(&[Some(batch), Some(eos_positions)]);
        let text_embeds = self.text_projection.as_ref().map(|p| p.forward(&pooled));
        Ok(ClipOutput {
            hidden_states,
            last_hidden_state,
            pooled,
            text_embeds,
        })
    }

    /// Token embeddings; ids past the vocabulary take the added rows. (Two
    /// lookups and a select: the same numbers as one lookup in a grown
    /// table, without copying the table.)
    fn embed_tokens(&self, ids: &Tensor) -> Tensor {
        let Some(added) = &self.added_tokens else {
            return self.token_embedding.forward(ids);
        };
        let vocab = self.config.vocab_size;
        let base = self.token_embedding.forward(&ids.clamp_max(vocab - 1));
        let extra = Tensor::embedding(added, &(ids - vocab).clamp_min(0), -1, false, false);
        extra.where_self(&ids.ge(vocab).unsqueeze(-1), &base)
    }

    /// How many token ids the encoder embeds (vocabulary plus added rows).
    pub fn token_count(&self) -> i64 {
        self.config.vocab_size + self.added_tokens.as_ref().map_or(0, |t| t.size()[0])
    }

    /// Appends textual-inversion vectors (n, hidden) as the embeddings of
    /// ids `first_id..first_id + n`; `first_id` must be
    /// [`ClipTextModel::token_count`] (the tokenizer's next id).
    pub fn add_token_embeddings(&mut self, first_id: i64, rows: &Tensor) -> Result<()> {
        let hidden = self.config.hidden_size;
        if rows.dim() != 2 || rows.size()[1] != hidden {
            return Err(ClipError::invalid(
                "embedding",
                format!(
                    "vectors of shape {:?} do not fit this text encoder (hidden size {hidden})",
                    rows.size()
                ),
            ));
        }
        if first_id != self.token_count() {
            return Err(ClipError::invalid(
                "embedding",
                format!(
                    "the tokenizer gave id {first_id}, but this text encoder embeds {} ids: \
                     tokenizer and text encoder do not match",
                    self.token_count()
                ),
            ));
        }
        let rows = rows.to_device(self.device()).to_kind(self.vs.kind());
        self.added_tokens = Some(match &self.added_tokens {
            Some(old) => Tensor::cat(&[old, &rows], 0),
            None => rows,
        });
        Ok(())
    }

    /// The final layer norm alone, for `clip_skip` (diffusers applies it to
    /// an earlier layer's hidden state for SD1.x/SD2.x).
    pub fn final_layer_norm(&self, hidden: &Tensor) -> Tensor {
        self.final_layer_norm.forward(hidden)
    }
}

impl DiffusersModel for ClipTextModel {
    type Config = ClipTextConfig;
    type Error = ClipError;
    const WEIGHTS_STEM: &'static str = "model";

    fn read_config(path: &Path) -> Result<ClipTextConfig> {
        ClipTextConfig::from_file(path)
    }

    /// The same with parameters created in `kind` (not converted after).
    fn new_in(config: &ClipTextConfig, device: Device, kind: Kind) -> Result<Self> {
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let text = &root / "text_model";
        let emb = &text / "embeddings";
        let h = config.hidden_size;
        let encoder = &text / "encoder" / "layers";
        Ok(ClipTextModel {
            token_embedding: Embedding::new(&(&emb / "token_embedding"), config.vocab_size, h),
            position_embedding: Embedding::new(
                &(&emb / "position_embedding"),
                config.max_position_embeddings,
                h,
            ),
            layers: (0..config.num_hidden_layers)
                .map(|i| EncoderLayer::new(&(&encoder / i), &LayerShape::text(config)))
                .collect(),
            final_layer_norm: LayerNorm::new(
                &(&text / "final_layer_norm"),
                h,
                config.layer_norm_eps,
            ),
            text_projection: config.with_projection().then(|| {
                Linear::new(
                    &(&root / "text_projection"),
                    h,
                    config.projection_dim.unwrap_or(h),
                    false,
                )
            }),
            added_tokens: None,
            config: config.clone(),
            vs,
        })
    }

    fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }

    fn folder_key(key: &str) -> KeyMap {
        canonical_key(key).map_or(KeyMap::Skip, KeyMap::To)
    }

    fn copy_settings_to(&self, copy: &mut Self) {
        copy.added_tokens = self
            .added_tokens
            .as_ref()
            .map(|t| t.to_device(copy.device()).to_kind(copy.vs.kind()));
    }
}

/// A file key as this model names it: `text_model.` added where transformers 5
/// left it out; `position_ids` (a buffer older files carry) dropped.
pub fn canonical_key(key: &str) -> Option<String> {
    if key.ends_with("embeddings.position_ids") {
        return None;
    }
    if key.starts_with("text_model.") || key.starts_with("text_projection.") {
        Some(key.to_string())
    } else {
        Some(format!("text_model.{key}"))
    }
}
