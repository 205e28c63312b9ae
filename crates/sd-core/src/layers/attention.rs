//! diffusers' `Attention` (models/attention_processor.py) with the
//! scaled-dot-product processor: self- or cross-attention over tokens, or
//! over the pixels of a feature map (the VAE's mid block).

use tch::{nn, Tensor};

use super::{group_norm, linear, GroupNorm, Linear};
use crate::error::{CoreError, Result};

/// The settings of diffusers' `Attention` that Stable Diffusion uses.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionConfig {
    /// Width of the queries (and of the output).
    pub query_dim: i64,
    /// Width of the context for cross-attention; `None` for self-attention.
    pub cross_attention_dim: Option<i64>,
    /// Attention heads.
    pub heads: i64,
    /// Width of each head.
    pub dim_head: i64,
    /// Bias on to_q/to_k/to_v (false in transformer blocks, true in the VAE).
    pub bias: bool,
    /// GroupNorm applied to the input first (the VAE's attention), as (groups, eps).
    pub group_norm: Option<(i64, f64)>,
    /// Add the input back at the end (the VAE's attention).
    pub residual_connection: bool,
    /// The output is divided by this (1.0 in SD).
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    /// Transformer-block attention: no qkv bias, no norm, no residual.
    pub fn transformer(
        query_dim: i64,
        cross_attention_dim: Option<i64>,
        heads: i64,
        dim_head: i64,
    ) -> Self {
        AttentionConfig {
            query_dim,
            cross_attention_dim,
            heads,
            dim_head,
            bias: false,
            group_norm: None,
            residual_connection: false,
            rescale_output_factor: 1.0,
        }
    }
}

/// Tokens attended to beside the context with the same queries, the result
/// scaled and added before the output projection: IP-Adapter's decoupled
/// cross-attention (diffusers' `IPAdapterAttnProcessor2_0`, one entry per
/// adapter, in the adapters' order).
#[derive(Debug)]
pub struct ExtraTokens {
    /// The tokens through the adapter's `to_k_ip`: (batch, tokens, heads x dim).
    pub key: Tensor,
    /// The tokens through `to_v_ip`, shaped as `key`.
    pub value: Tensor,
    /// The adapter's scale; at 0 the adapter is skipped, as diffusers does.
    pub scale: f64,
}

/// diffusers' `Attention` (self or cross), with `to_q`, `to_k`, `to_v`, `to_out.0`
/// (or the VAE's `group_norm`) under their diffusers names.
#[derive(Debug)]
pub struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
    residual_connection: bool,
    rescale_output_factor: f64,
}

impl Attention {
    /// The layer under `vs`, uninitialised.
    pub fn new(vs: nn::Path<'_>, config: &AttentionConfig) -> Result<Self> {
        if config.heads <= 0 || config.dim_head <= 0 {
            return Err(CoreError::invalid(
                format!("Attention at '{}'", super::path_name(&vs)),
                format!(
                    "{} heads of width {} is not an attention layout",
                    config.heads, config.dim_head
                ),
            ));
        }
        let inner = config.heads * config.dim_head;
        let context = config.cross_attention_dim.unwrap_or(config.query_dim);
        Ok(Attention {
            group_norm: config
                .group_norm
                .map(|(groups, eps)| group_norm(&vs / "group_norm", groups, config.query_dim, eps)),
            to_q: linear(&vs / "to_q", config.query_dim, inner, config.bias),
            to_k: linear(&vs / "to_k", context, inner, config.bias),
            to_v: linear(&vs / "to_v", context, inner, config.bias),
            to_out: linear(&vs / "to_out" / 0, inner, config.query_dim, true),
            heads: config.heads,
            residual_connection: config.residual_connection,
            rescale_output_factor: config.rescale_output_factor,
        })
    }

    /// `hidden` is (batch, tokens, query_dim) or a (batch, channels, h, w)
    /// feature map; `context` is (batch, context_tokens, cross_attention_dim).
    pub fn forward(&self, hidden: &Tensor, context: Option<&Tensor>) -> Tensor {
        self.forward_with(hidden, context, &[])
    }

    /// [`forward`](Self::forward) also attending to `extra` tokens.
    pub fn forward_with(
        &self,
        hidden: &Tensor,
        context: Option<&Tensor>,
        extra: &[ExtraTokens],
    ) -> Tensor {
        let residual = hidden;
        let spatial = hidden.dim() == 4;
        // 1. a feature map becomes a sequence of pixels
        let mut x = if spatial {
            let (b, c, h, w) = hidden.size4().expect("checked: four dims");
            hidden.view([b, c, h * w]).transpose(1, 2)
        } else {
            hidden.shallow_clone()
        };
        if let Some(norm) = &self.group_norm {
            x = norm.forward(&x.transpose(1, 2)).transpose(1, 2);
        }
        // 2. project and split heads: (batch, heads, tokens, dim_head)
        let context = context.map_or_else(|| x.shallow_clone(), Tensor::shallow_clone);
        let q = split_heads(&self.to_q.forward(&x), self.heads);
        let k = split_heads(&self.to_k.forward(&context), self.heads);
        let v = split_heads(&self.to_v.forward(&context), self.heads);
        // 3. softmax(q k^T / sqrt(d)) v, by the fused kernel where the device
        //    has one; extra tokens' results added, scaled, one by one
        let mut attended = attend(&q, &k, &v);
        for tokens in extra.iter().filter(|t| t.scale != 0.0) {
            let (k, v) = (&tokens.key, &tokens.value);
            let extra = attend(&q, &split_heads(k, self.heads), &split_heads(v, self.heads));
            // out of place, as diffusers adds them
            #[allow(clippy::assign_op_pattern)]
            {
                attended = attended + extra * tokens.scale;
            }
        }
        let out = self.to_out.forward(&attended);
        // 4. back to a feature map, residual, rescale
        let out = if spatial {
            out.transpose(1, 2).reshape(residual.size())
        } else {
            out
        };
        // Out of place, as diffusers: the new tensor takes a dense layout from
        // both operands (an in-place add keeps the view's odd batch stride,
        // and later convolutions then round differently).
        let out = if self.residual_connection {
            out + residual
        } else {
            out
        };
        out / self.rescale_output_factor
    }
}

/// (batch, tokens, heads x dim) viewed as (batch, heads, tokens, dim), as
/// diffusers' processors split heads (`view` then `transpose`).
pub fn split_heads(t: &Tensor, heads: i64) -> Tensor {
    let (b, n, inner) = t.size3().expect("linear output has three dims");
    t.view([b, n, heads, inner / heads]).transpose(1, 2)
}

/// PyTorch's fused attention (no mask, scale 1/sqrt(dim)) over heads
/// (batch, heads, tokens, dim), merged back to (batch, tokens, heads x dim).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let out =
        Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, false, None, false);
    let (b, _, n, _) = out.size4().expect("attention output has four dims");
    out.transpose(1, 2).reshape([b, n, -1])
}
