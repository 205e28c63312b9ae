//! What the transformers' cross-attention layers attend to: the text, and
//! image prompts' tokens (IP-Adapter) per layer; and the list of those
//! layers, numbered as diffusers numbers its attention processors.

use sd_core::layers::ExtraTokens;
use tch::Tensor;

/// The context of one UNet evaluation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CrossContext<'a> {
    pub text: &'a Tensor,
    pub images: Option<&'a ImageTokens>,
}

impl CrossContext<'_> {
    /// The image tokens cross-attention layer `index` adds (none without).
    pub fn extra(&self, index: usize) -> &[ExtraTokens] {
        self.images
            .and_then(|images| images.layers.get(index))
            .map_or(&[], Vec::as_slice)
    }
}

/// IP-Adapters' keys and values for every cross-attention layer, indexed as
/// [`UNet2DConditionModel::cross_attention_layers`](crate::UNet2DConditionModel::cross_attention_layers)
/// lists the layers; each entry holds one [`ExtraTokens`] per adapter, in
/// the adapters' order. The batch must be the UNet input's (CFG included).
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ImageTokens {
    /// Per layer, per adapter.
    pub layers: Vec<Vec<ExtraTokens>>,
}

impl ImageTokens {
    /// Tokens for each layer, per adapter.
    pub fn new(layers: Vec<Vec<ExtraTokens>>) -> Self {
        ImageTokens { layers }
    }
}

/// One cross-attention layer (a transformer block's `attn2`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrossAttentionLayer {
    /// Its diffusers path, `down_blocks.0.attentions.1.transformer_blocks.0.attn2`.
    pub name: String,
    /// The width of its queries and keys (the block's channels): the output
    /// width of an adapter's `to_k_ip`/`to_v_ip` for this layer.
    pub width: i64,
    /// The width of the context it attends to (`cross_attention_dim`).
    pub context_width: i64,
}

/// Numbers layers as they are walked (down blocks, up blocks, mid block:
/// the order of diffusers' `attn_processors`, which IP-Adapter files follow).
#[derive(Debug, Default)]
pub(crate) struct Numbering {
    pub layers: Vec<CrossAttentionLayer>,
}

impl Numbering {
    /// The next layer's index; records it.
    pub fn next(&mut self, name: String, width: i64, context_width: i64) -> usize {
        self.layers.push(CrossAttentionLayer {
            name,
            width,
            context_width,
        });
        self.layers.len() - 1
    }
}
