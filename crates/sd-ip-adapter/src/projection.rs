//! The image prompt's projection into tokens the UNet's cross-attention
//! takes: diffusers' `ImageProjection` (plain IP-Adapter: the pooled image
//! embedding to 4 tokens) and `IPAdapterPlusImageProjection` (Plus: a
//! Perceiver resampler over the encoder's penultimate hidden states), under
//! diffusers' names below `image_proj.`.

use sd_core::layers::{attend, split_heads};
use sd_core::nn::{param, LayerNorm, Linear};
use tch::{nn::Path, Tensor};

/// The shapes of a projection, as read from the file's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Embedding width in, `tokens` tokens of `cross` width out.
    Plain { embed: i64, cross: i64, tokens: i64 },
    /// Encoder width in, `queries` tokens of `output` width out through
    /// `depth` resampler blocks of width `hidden` with `heads` 64-wide heads.
    Plus {
        embed: i64,
        hidden: i64,
        output: i64,
        queries: i64,
        heads: i64,
        depth: i64,
    },
}

impl Shape {
    /// The width of the image features it takes.
    pub fn input_width(&self) -> i64 {
        match *self {
            Shape::Plain { embed, .. } | Shape::Plus { embed, .. } => embed,
        }
    }

    /// The width of the tokens it gives (the UNet's cross-attention width).
    pub fn output_width(&self) -> i64 {
        match *self {
            Shape::Plain { cross, .. } => cross,
            Shape::Plus { output, .. } => output,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Projection {
    Plain {
        image_embeds: Linear,
        norm: LayerNorm,
        tokens: i64,
    },
    Plus(Resampler),
}

impl Projection {
    pub fn new(vs: &Path<'_>, shape: Shape) -> Self {
        match shape {
            Shape::Plain {
                embed,
                cross,
                tokens,
            } => Projection::Plain {
                image_embeds: Linear::new(&(vs / "image_embeds"), embed, tokens * cross, true),
                norm: LayerNorm::new(&(vs / "norm"), cross, 1e-5),
                tokens,
            },
            Shape::Plus { .. } => Projection::Plus(Resampler::new(vs, shape)),
        }
    }

    /// Image features — pooled embeddings (batch, embed) for plain, hidden
    /// states (batch, positions, embed) for Plus — to (batch, tokens, width).
    pub fn forward(&self, features: &Tensor) -> Tensor {
        match self {
            Projection::Plain {
                image_embeds,
                norm,
                tokens,
            } => {
                let batch = features.size()[0];
                let x = image_embeds.forward(&features.to_kind(image_embeds.weight.kind()));
                norm.forward(&x.reshape([batch, *tokens, -1]))
            }
            Projection::Plus(resampler) => resampler.forward(features),
        }
    }
}

/// `IPAdapterPlusImageProjection`: learned queries attend to the image's
/// hidden states (and to themselves), block after block.
#[derive(Debug)]
pub(crate) struct Resampler {
    latents: Tensor,
    proj_in: Linear,
    blocks: Vec<ResamplerBlock>,
    proj_out: Linear,
    norm_out: LayerNorm,
}

#[derive(Debug)]
struct ResamplerBlock {
    ln0: LayerNorm,
    ln1: LayerNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
    ff_norm: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl Resampler {
    fn new(vs: &Path<'_>, shape: Shape) -> Self {
        let Shape::Plus {
            embed,
            hidden,
            output,
            queries,
            heads,
            depth,
        } = shape
        else {
            unreachable!("a Plus shape")
        };
        let inner = heads * 64;
        let block = |i: i64| {
            let b = vs / "layers" / i;
            let (attn, ff) = (&b / "attn", &b / "ff");
            ResamplerBlock {
                ln0: LayerNorm::new(&(&b / "ln0"), hidden, 1e-5),
                ln1: LayerNorm::new(&(&b / "ln1"), hidden, 1e-5),
                to_q: Linear::new(&(&attn / "to_q"), hidden, inner, false),
                to_k: Linear::new(&(&attn / "to_k"), hidden, inner, false),
                to_v: Linear::new(&(&attn / "to_v"), hidden, inner, false),
                to_out: Linear::new(&(&attn / "to_out" / 0), inner, hidden, false),
                heads,
                ff_norm: LayerNorm::new(&(&ff / 0), hidden, 1e-5),
                ff_in: Linear::new(&(&ff / 1 / "net" / 0 / "proj"), hidden, hidden * 4, false),
                ff_out: Linear::new(&(&ff / 1 / "net" / 2), hidden * 4, hidden, false),
            }
        };
        Resampler {
            latents: param(vs, "latents", &[1, queries, hidden]),
            proj_in: Linear::new(&(vs / "proj_in"), embed, hidden, true),
            blocks: (0..depth).map(block).collect(),
            proj_out: Linear::new(&(vs / "proj_out"), hidden, output, true),
            norm_out: LayerNorm::new(&(vs / "norm_out"), output, 1e-5),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut latents = self.latents.repeat([x.size()[0], 1, 1]);
        let x = self.proj_in.forward(x);
        for block in &self.blocks {
            latents = block.forward(&x, &latents);
        }
        self.norm_out.forward(&self.proj_out.forward(&latents))
    }
}

impl ResamplerBlock {
    /// diffusers' `IPAdapterPlusImageProjectionBlock`: the queries attend to
    /// the image's states and themselves, then a GELU feed-forward.
    fn forward(&self, x: &Tensor, latents: &Tensor) -> Tensor {
        let queries = self.ln1.forward(latents);
        let context = Tensor::cat(&[&self.ln0.forward(x), &queries], -2);
        let q = split_heads(&self.to_q.forward(&queries), self.heads);
        let k = split_heads(&self.to_k.forward(&context), self.heads);
        let v = split_heads(&self.to_v.forward(&context), self.heads);
        let latents = self.to_out.forward(&attend(&q, &k, &v)) + latents;
        let hidden = self
            .ff_in
            .forward(&self.ff_norm.forward(&latents))
            .gelu("none");
        self.ff_out.forward(&hidden) + latents
    }
}
