//! T5's blocks as transformers computes them: the RMS norm (statistics in
//! f32), self-attention with a relative-position bias and no query scaling,
//! and the (gated) feed-forward block.

pub use sd_core::nn::RmsNorm;
use sd_core::nn::{Embedding, Linear};
use tch::nn::Path;
use tch::{Kind, Tensor};

use crate::config::{FeedForward, T5Config};

/// `gelu_new`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, op by op
/// as transformers writes it (PyTorch's fused tanh GELU rounds otherwise).
fn gelu_new(x: &Tensor) -> Tensor {
    let inner = (x + x.pow_tensor_scalar(3.0) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
    (x * 0.5) * (inner.tanh() + 1.0)
}

/// transformers' `T5LayerFF`: norm, feed-forward, residual.
#[derive(Debug)]
pub struct FeedForwardLayer {
    norm: RmsNorm,
    /// `wi` (relu) or `wi_0` (gated: the GELU half).
    wi_0: Linear,
    /// The gated form's linear half.
    wi_1: Option<Linear>,
    wo: Linear,
    /// What `wo` computes in (its weight's kind, unless kept in 8 bits).
    wo_kind: Kind,
}

impl FeedForwardLayer {
    /// The layer under `vs` (`layer.1`); `wo` is made in `wo_kind`.
    pub fn new(vs: &Path<'_>, config: &T5Config, wo_kind: Kind) -> Self {
        let dense = vs / "DenseReluDense";
        let (d, ff) = (config.d_model, config.d_ff);
        let gated = config.feed_forward_proj == FeedForward::GatedGelu;
        // (made in `wo_kind` directly: a var store has one kind for the rest)
        let wo = Linear {
            weight: (&dense / "wo").add(
                "weight",
                Tensor::empty([d, ff], (wo_kind, vs.device())),
                true,
            ),
            bias: None,
        };
        FeedForwardLayer {
            norm: RmsNorm::new(&(vs / "layer_norm"), d, config.layer_norm_epsilon),
            wi_0: Linear::new(&(&dense / if gated { "wi_0" } else { "wi" }), d, ff, false),
            wi_1: gated.then(|| Linear::new(&(&dense / "wi_1"), d, ff, false)),
            wo,
            wo_kind,
        }
    }

    /// `x + wo(act(...))`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let normed = self.norm.forward(x);
        let hidden = match &self.wi_1 {
            Some(wi_1) => gelu_new(&self.wi_0.forward(&normed)) * wi_1.forward(&normed),
            None => self.wi_0.forward(&normed).relu(),
        };
        // transformers keeps `wo` in f32 for f16 models and casts its input
        let hidden = hidden.to_kind(self.wo.compute_kind(self.wo_kind));
        x + self.wo.forward(&hidden)
    }
}

/// transformers' `T5LayerSelfAttention`: norm, attention, residual. The
/// first block's holds the relative-position embedding every block uses.
#[derive(Debug)]
pub struct SelfAttentionLayer {
    norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: i64,
    head_dim: i64,
    relative_bias: Option<Embedding>,
}

impl SelfAttentionLayer {
    /// The layer under `vs` (`layer.0`).
    pub fn new(vs: &Path<'_>, config: &T5Config, has_relative_bias: bool) -> Self {
        let attention = vs / "SelfAttention";
        let (d, inner) = (config.d_model, config.num_heads * config.d_kv);
        let linear = |name: &str, i, o| Linear::new(&(&attention / name), i, o, false);
        SelfAttentionLayer {
            norm: RmsNorm::new(&(vs / "layer_norm"), d, config.layer_norm_epsilon),
            q: linear("q", d, inner),
            k: linear("k", d, inner),
            v: linear("v", d, inner),
            o: linear("o", inner, d),
            heads: config.num_heads,
            head_dim: config.d_kv,
            relative_bias: has_relative_bias.then(|| {
                Embedding::new(
                    &(&attention / "relative_attention_bias"),
                    config.relative_attention_num_buckets,
                    config.num_heads,
                )
            }),
        }
    }

    /// The position bias (1, heads, length, length) of this layer's
    /// relative-position embedding (the first block's).
    pub fn position_bias(&self, config: &T5Config, length: i64) -> Option<Tensor> {
        let table = self.relative_bias.as_ref()?;
        let device = table.weight.device();
        let positions = Tensor::arange(length, (Kind::Int64, device));
        let relative = positions.unsqueeze(0) - positions.unsqueeze(1);
        let buckets = relative_position_bucket(
            &relative,
            config.relative_attention_num_buckets,
            config.relative_attention_max_distance,
        );
        Some(
            table
                .forward(&buckets)
                .permute([2, 0, 1])
                .unsqueeze(0)
                .contiguous(),
        )
    }

    /// `x + o(attention(norm(x)))` with the shared `bias` as the additive
    /// mask (PyTorch's SDPA, scale 1, as transformers' sdpa path).
    pub fn forward(&self, x: &Tensor, bias: &Tensor) -> Tensor {
        let normed = self.norm.forward(x);
        let (b, l) = (x.size()[0], x.size()[1]);
        let heads = |t: Tensor| t.view([b, l, self.heads, self.head_dim]).transpose(1, 2);
        let (q, k, v) = (
            heads(self.q.forward(&normed)),
            heads(self.k.forward(&normed)),
            heads(self.v.forward(&normed)),
        );
        let out = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(bias),
            0.0,
            false,
            Some(1.0),
            false,
        );
        let out = out.transpose(1, 2).contiguous().reshape([b, l, -1]);
        x + self.o.forward(&out)
    }
}

/// transformers' bidirectional `_relative_position_bucket`: half the
/// buckets for each direction, exact up to half of those, logarithmic up
/// to `max_distance`. The log runs in libtorch, as transformers' does.
fn relative_position_bucket(relative: &Tensor, num_buckets: i64, max_distance: i64) -> Tensor {
    let half = num_buckets / 2;
    let direction = relative.gt(0).to_kind(Kind::Int64) * half;
    let distance = relative.abs();
    let max_exact = half / 2;
    let is_small = distance.lt(max_exact);
    let scaled = (distance.to_kind(Kind::Float) / max_exact as f64).log()
        / (max_distance as f64 / max_exact as f64).ln()
        * (half - max_exact) as f64;
    let large = (scaled.to_kind(Kind::Int64) + max_exact).clamp_max(half - 1);
    direction + distance.where_self(&is_small, &large)
}

/// transformers' `T5Block` of an encoder: self-attention, then feed-forward;
/// in f16 the hidden states are clamped short of infinity after each.
#[derive(Debug)]
pub struct Block {
    /// Self-attention (`layer.0`).
    pub attention: SelfAttentionLayer,
    feed_forward: FeedForwardLayer,
}

impl Block {
    /// Block `index` under `vs`; block 0 holds the position embedding.
    pub fn new(vs: &Path<'_>, config: &T5Config, index: i64, wo_kind: Kind) -> Self {
        let layer = vs / "layer";
        Block {
            attention: SelfAttentionLayer::new(&(&layer / 0), config, index == 0),
            feed_forward: FeedForwardLayer::new(&(&layer / 1), config, wo_kind),
        }
    }

    /// The block on `x` with the shared position `bias`.
    pub fn forward(&self, x: &Tensor, bias: &Tensor) -> Tensor {
        let x = clamp_f16(self.attention.forward(x, bias));
        clamp_f16(self.feed_forward.forward(&x))
    }
}

/// transformers' f16 guard: clamp to the largest finite half (less 1000
/// when an infinity is present).
fn clamp_f16(x: Tensor) -> Tensor {
    if x.kind() != Kind::Half {
        return x;
    }
    let max = 65504.0;
    let limit = if x.isinf().any().int64_value(&[]) != 0 {
        max - 1000.0
    } else {
        max
    };
    x.clamp(-limit, limit)
}
