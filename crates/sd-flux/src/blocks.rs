//! FLUX's blocks (diffusers' `FluxTransformerBlock`, double-stream: image
//! and text weights of their own, one joint attention; and
//! `FluxSingleTransformerBlock`, single-stream: one fused pass over text and
//! image tokens together), with `FluxAttention`'s per-head RMS norms and
//! rotary positions.

use sd_core::layers::attend;
use sd_core::layers::dit::{modulate, plain_norm, FeedForward, Modulation};
use sd_core::nn::{param, Linear};
use tch::nn::Path;
use tch::{Kind, Tensor};

use crate::config::FluxConfig;
use crate::rope;

/// `torch.nn.RMSNorm` over each head (eps 1e-6, a learned scale).
#[derive(Debug)]
struct HeadNorm {
    weight: Tensor,
}

impl HeadNorm {
    fn new(vs: &Path<'_>, dim: i64) -> Self {
        HeadNorm {
            weight: param(vs, "weight", &[dim]),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let dim = self.weight.size();
        x.rms_norm(dim.as_slice(), Some(&self.weight), 1e-6)
    }
}

/// One stream's query/key/value projections, split into heads
/// (batch, tokens, heads, head width), queries and keys RMS-normed.
#[derive(Debug)]
struct Projections {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: HeadNorm,
    norm_k: HeadNorm,
    head_dim: i64,
}

impl Projections {
    fn new(vs: &Path<'_>, names: [&str; 5], config: &FluxConfig) -> Self {
        let (dim, head_dim) = (config.inner_dim(), config.attention_head_dim);
        let linear = |name: &str| Linear::new(&(vs / name), dim, dim, true);
        Projections {
            q: linear(names[0]),
            k: linear(names[1]),
            v: linear(names[2]),
            norm_q: HeadNorm::new(&(vs / names[3]), head_dim),
            norm_k: HeadNorm::new(&(vs / names[4]), head_dim),
            head_dim,
        }
    }

    fn forward(&self, x: &Tensor) -> [Tensor; 3] {
        let heads = |t: Tensor| {
            let (b, n, _) = t.size3().expect("linear output has three dims");
            t.view([b, n, -1, self.head_dim])
        };
        [
            self.norm_q.forward(&heads(self.q.forward(x))),
            self.norm_k.forward(&heads(self.k.forward(x))),
            heads(self.v.forward(x)),
        ]
    }
}

/// Attention over (batch, tokens, heads, width) rotated queries and keys,
/// merged back to (batch, tokens, heads x width) in the queries' dtype.
fn rotary_attention(q: &Tensor, k: &Tensor, v: &Tensor, rope: (&Tensor, &Tensor)) -> Tensor {
    let (q, k) = (rope::apply(q, rope), rope::apply(k, rope));
    let kind = q.kind();
    attend(&q.transpose(1, 2), &k.transpose(1, 2), &v.transpose(1, 2)).to_kind(kind)
}

/// diffusers' `FluxTransformerBlock`.
#[derive(Debug)]
pub(crate) struct DoubleBlock {
    norm1: Modulation,
    norm1_context: Modulation,
    image: Projections,
    text: Projections,
    to_out: Linear,
    to_add_out: Linear,
    ff: FeedForward,
    ff_context: FeedForward,
}

impl DoubleBlock {
    pub(crate) fn new(vs: &Path<'_>, config: &FluxConfig) -> Self {
        let dim = config.inner_dim();
        let attn = vs / "attn";
        let text_names = [
            "add_q_proj",
            "add_k_proj",
            "add_v_proj",
            "norm_added_q",
            "norm_added_k",
        ];
        DoubleBlock {
            norm1: Modulation::new(&(vs / "norm1"), dim, 6),
            norm1_context: Modulation::new(&(vs / "norm1_context"), dim, 6),
            image: Projections::new(&attn, ["to_q", "to_k", "to_v", "norm_q", "norm_k"], config),
            text: Projections::new(&attn, text_names, config),
            to_out: Linear::new(&(&attn / "to_out" / 0), dim, dim, true),
            to_add_out: Linear::new(&(&attn / "to_add_out"), dim, dim, true),
            ff: FeedForward::new(&(vs / "ff"), dim),
            ff_context: FeedForward::new(&(vs / "ff_context"), dim),
        }
    }

    /// (text tokens, image tokens) after the block.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        temb: &Tensor,
        rope: (&Tensor, &Tensor),
    ) -> (Tensor, Tensor) {
        let m = self.norm1.forward(temb);
        let cm = self.norm1_context.forward(temb);
        let nx = modulate(&plain_norm(x), &m[0], &m[1]);
        let nctx = modulate(&plain_norm(context), &cm[0], &cm[1]);
        let [q, k, v] = self.image.forward(&nx);
        let [tq, tk, tv] = self.text.forward(&nctx);
        let joint = |text: Tensor, image: Tensor| Tensor::cat(&[text, image], 1);
        let out = rotary_attention(&joint(tq, q), &joint(tk, k), &joint(tv, v), rope);
        let t = context.size()[1];
        let text_attn = self.to_add_out.forward(&out.narrow(1, 0, t).contiguous());
        let image_attn = self
            .to_out
            .forward(&out.narrow(1, t, out.size()[1] - t).contiguous());
        let x = x + m[2].unsqueeze(1) * image_attn;
        let ff = self.ff.forward(&modulate(&plain_norm(&x), &m[3], &m[4]));
        let x = &x + m[5].unsqueeze(1) * ff;
        let context = context + cm[2].unsqueeze(1) * text_attn;
        let ff = self
            .ff_context
            .forward(&modulate(&plain_norm(&context), &cm[3], &cm[4]));
        (clip_half(&context + cm[5].unsqueeze(1) * ff), x)
    }
}

/// diffusers' `FluxSingleTransformerBlock` over (text, image) tokens
/// concatenated.
#[derive(Debug)]
pub(crate) struct SingleBlock {
    norm: Modulation,
    qkv: Projections,
    proj_mlp: Linear,
    proj_out: Linear,
}

impl SingleBlock {
    pub(crate) fn new(vs: &Path<'_>, config: &FluxConfig) -> Self {
        let dim = config.inner_dim();
        let attn = vs / "attn";
        SingleBlock {
            norm: Modulation::new(&(vs / "norm"), dim, 3),
            qkv: Projections::new(&attn, ["to_q", "to_k", "to_v", "norm_q", "norm_k"], config),
            proj_mlp: Linear::new(&(vs / "proj_mlp"), dim, 4 * dim, true),
            proj_out: Linear::new(&(vs / "proj_out"), 5 * dim, dim, true),
        }
    }

    /// `tokens` (text then image) after the block.
    pub(crate) fn forward(
        &self,
        tokens: &Tensor,
        temb: &Tensor,
        rope: (&Tensor, &Tensor),
    ) -> Tensor {
        let m = self.norm.forward(temb);
        let normed = modulate(&plain_norm(tokens), &m[0], &m[1]);
        let mlp = self.proj_mlp.forward(&normed).gelu("tanh");
        let [q, k, v] = self.qkv.forward(&normed);
        let attn = rotary_attention(&q, &k, &v, rope);
        let out = self.proj_out.forward(&Tensor::cat(&[attn, mlp], 2));
        clip_half(tokens + m[2].unsqueeze(1) * out)
    }
}

/// diffusers clips f16 states to f16's range (the text stream's after a
/// double block, the joint stream's after a single one).
fn clip_half(x: Tensor) -> Tensor {
    match x.kind() {
        Kind::Half => x.clamp(-65504.0, 65504.0),
        _ => x,
    }
}
