//! diffusers' `Transformer2DModel` (continuous input) and its
//! `BasicTransformerBlock`s: self-attention, cross-attention on the text,
//! and a GEGLU feed-forward, over the pixels of a feature map.

use sd_core::layers::{Attention, AttentionConfig};
use sd_core::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
use tch::{nn::Path, Tensor};

use crate::cross::{CrossContext, Numbering};
use crate::error::Result;

/// What shapes one transformer stack.
#[derive(Debug, Clone, Copy)]
pub struct TransformerSettings {
    pub channels: i64,
    pub heads: i64,
    pub depth: i64,
    pub cross_attention_dim: i64,
    pub groups: i64,
    pub use_linear_projection: bool,
    pub only_cross_attention: bool,
}

impl TransformerSettings {
    /// The transformers of one block of `config`.
    pub fn of_block(config: &crate::UNetConfig, b: &crate::config::BlockSettings) -> Self {
        TransformerSettings {
            channels: b.out_channels,
            heads: b.heads,
            depth: b.transformer_depth,
            cross_attention_dim: b.cross_attention_dim,
            groups: config.norm_num_groups,
            use_linear_projection: config.use_linear_projection,
            only_cross_attention: b.only_cross_attention,
        }
    }
}

#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    /// GEGLU: proj to 2x inner, value * gelu(gate).
    ff_proj: Linear,
    ff_out: Linear,
    only_cross_attention: bool,
    /// (width, context width) of attn2, and its index among the UNet's
    /// cross-attention layers (set by [`Transformer2D::number`]).
    widths: (i64, i64),
    index: usize,
}

impl BasicTransformerBlock {
    fn new(vs: &Path<'_>, s: &TransformerSettings) -> Result<Self> {
        let (dim, head_dim) = (s.channels, s.channels / s.heads);
        let cross = Some(s.cross_attention_dim);
        let attn1_context = if s.only_cross_attention { cross } else { None };
        let inner = dim * 4;
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::new(&(vs / "norm1"), dim, 1e-5),
            attn1: Attention::new(
                vs / "attn1",
                &AttentionConfig::transformer(dim, attn1_context, s.heads, head_dim),
            )?,
            norm2: LayerNorm::new(&(vs / "norm2"), dim, 1e-5),
            attn2: Attention::new(
                vs / "attn2",
                &AttentionConfig::transformer(dim, cross, s.heads, head_dim),
            )?,
            norm3: LayerNorm::new(&(vs / "norm3"), dim, 1e-5),
            ff_proj: Linear::new(&(vs / "ff" / "net" / 0 / "proj"), dim, inner * 2, true),
            ff_out: Linear::new(&(vs / "ff" / "net" / 2), inner, dim, true),
            only_cross_attention: s.only_cross_attention,
            widths: (dim, s.cross_attention_dim),
            index: 0,
        })
    }

    fn forward(&self, x: &Tensor, context: &CrossContext<'_>) -> Tensor {
        // 1. self-attention (or a first cross-attention)
        let self_context = self.only_cross_attention.then_some(context.text);
        let x = self.attn1.forward(&self.norm1.forward(x), self_context) + x;
        // 2. cross-attention on the text embeddings (and image prompts' tokens)
        let extra = context.extra(self.index);
        let normed = self.norm2.forward(&x);
        let x = self.attn2.forward_with(&normed, Some(context.text), extra) + x;
        // 3. GEGLU feed-forward
        let projected = self.ff_proj.forward(&self.norm3.forward(&x));
        let halves = projected.chunk(2, -1);
        let hidden = &halves[0] * halves[1].gelu("none");
        self.ff_out.forward(&hidden) + x
    }
}

/// A projection in and out of the transformer: 1x1 conv, or linear (SD2, SDXL).
#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

#[derive(Debug)]
pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    pub fn new(vs: &Path<'_>, s: &TransformerSettings) -> Result<Self> {
        let c = s.channels;
        let projection = |name: &str| {
            if s.use_linear_projection {
                Projection::Linear(Linear::new(&(vs / name), c, c, true))
            } else {
                Projection::Conv(Conv2d::new(&(vs / name), c, c, 1, 1, 0))
            }
        };
        Ok(Transformer2D {
            norm: GroupNorm::new(&(vs / "norm"), s.groups, c, 1e-6),
            proj_in: projection("proj_in"),
            blocks: (0..s.depth)
                .map(|i| BasicTransformerBlock::new(&(vs / "transformer_blocks" / i), s))
                .collect::<Result<_>>()?,
            proj_out: projection("proj_out"),
        })
    }

    /// Numbers this transformer's cross-attention layers, `name` being its
    /// diffusers path (`down_blocks.0.attentions.1`).
    pub(crate) fn number(&mut self, name: &str, numbering: &mut Numbering) {
        for (k, block) in self.blocks.iter_mut().enumerate() {
            let (width, context) = block.widths;
            let layer = format!("{name}.transformer_blocks.{k}.attn2");
            block.index = numbering.next(layer, width, context);
        }
    }

    pub(crate) fn forward(&self, x: &Tensor, context: &CrossContext<'_>) -> Tensor {
        let (b, c, h, w) = x.size4().expect("a feature map");
        let to_tokens = |t: Tensor| t.permute([0, 2, 3, 1]).reshape([b, h * w, c]);
        let to_map = |t: Tensor| t.reshape([b, h, w, c]).permute([0, 3, 1, 2]);
        // 1. norm, project in, flatten the pixels into tokens
        let normed = self.norm.forward(x);
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&normed)),
            Projection::Linear(linear) => linear.forward(&to_tokens(normed)),
        };
        // 2. the transformer blocks
        for block in &self.blocks {
            tokens = block.forward(&tokens, context);
        }
        // 3. back to a feature map, project out, residual
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(tokens).contiguous()),
            Projection::Linear(linear) => to_map(linear.forward(&tokens)).contiguous(),
        };
        out + x
    }
}
