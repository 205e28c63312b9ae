//! The joint transformer block of SD3 (diffusers' `JointTransformerBlock`):
//! AdaLayerNorm-Zero modulation from the timestep+text embedding, one
//! attention over the image and text tokens together (`JointAttnProcessor2_0`),
//! SD3.5's optional query/key RMS norms and Medium's second, image-only
//! attention, and a tanh-GELU feed-forward for each stream.

use sd_core::layers::dit::{modulate, plain_norm, ContinuousNorm, FeedForward, Modulation};
use sd_core::layers::{attend, split_heads};
use sd_core::nn::{Linear, RmsNorm};
use tch::nn::Path;
use tch::Tensor;

use crate::config::{MmditConfig, QkNorm};

/// Projections of one stream's tokens into heads, with optional RMS norms.
#[derive(Debug)]
struct Projections {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
}

impl Projections {
    fn new(vs: &Path<'_>, names: [&str; 5], config: &MmditConfig) -> Self {
        let dim = config.inner_dim();
        let linear = |name: &str| Linear::new(&(vs / name), dim, dim, true);
        let norm = |name: &str| {
            config
                .qk_norm
                .map(|QkNorm::RmsNorm| RmsNorm::new(&(vs / name), config.attention_head_dim, 1e-6))
        };
        Projections {
            q: linear(names[0]),
            k: linear(names[1]),
            v: linear(names[2]),
            norm_q: norm(names[3]),
            norm_k: norm(names[4]),
        }
    }

    /// (q, k, v) as (batch, heads, tokens, head_dim).
    fn forward(&self, x: &Tensor, heads: i64) -> [Tensor; 3] {
        let norm = |t: Tensor, n: &Option<RmsNorm>| match n {
            Some(n) => n.forward(&t),
            None => t,
        };
        [
            norm(split_heads(&self.q.forward(x), heads), &self.norm_q),
            norm(split_heads(&self.k.forward(x), heads), &self.norm_k),
            split_heads(&self.v.forward(x), heads),
        ]
    }
}

/// diffusers' `Attention` with `JointAttnProcessor2_0`: image tokens, and
/// (joint) text tokens appended after them.
#[derive(Debug)]
pub(crate) struct JointAttention {
    image: Projections,
    text: Option<Projections>,
    to_out: Linear,
    to_add_out: Option<Linear>,
    heads: i64,
}

impl JointAttention {
    /// `joint`: with the text stream (`add_*` projections); `text_out`:
    /// with `to_add_out` (every block but the last).
    fn new(vs: &Path<'_>, config: &MmditConfig, joint: bool, text_out: bool) -> Self {
        let dim = config.inner_dim();
        JointAttention {
            image: Projections::new(vs, ["to_q", "to_k", "to_v", "norm_q", "norm_k"], config),
            text: joint.then(|| {
                let names = [
                    "add_q_proj",
                    "add_k_proj",
                    "add_v_proj",
                    "norm_added_q",
                    "norm_added_k",
                ];
                Projections::new(vs, names, config)
            }),
            to_out: Linear::new(&(vs / "to_out" / 0), dim, dim, true),
            to_add_out: text_out.then(|| Linear::new(&(vs / "to_add_out"), dim, dim, true)),
            heads: config.num_attention_heads,
        }
    }

    /// The image tokens' output and, when joint, the text tokens'.
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> (Tensor, Option<Tensor>) {
        let [mut q, mut k, mut v] = self.image.forward(x, self.heads);
        if let (Some(text), Some(context)) = (&self.text, context) {
            let [tq, tk, tv] = text.forward(context, self.heads);
            q = Tensor::cat(&[q, tq], 2);
            k = Tensor::cat(&[k, tk], 2);
            v = Tensor::cat(&[v, tv], 2);
        }
        let tokens = x.size()[1];
        let out = attend(&q, &k, &v);
        let image = self.to_out.forward(&out.narrow(1, 0, tokens));
        let text = context.map(|_| {
            let rest = out.narrow(1, tokens, out.size()[1] - tokens);
            match &self.to_add_out {
                Some(linear) => linear.forward(&rest),
                None => rest,
            }
        });
        (image, text)
    }
}

/// The text stream's norm: AdaLayerNorm-Zero, or in the last block (whose
/// text tokens only feed the attention) AdaLayerNorm-Continuous.
#[derive(Debug)]
enum TextNorm {
    Zero(Modulation),
    Continuous(ContinuousNorm),
}

/// diffusers' `JointTransformerBlock`.
#[derive(Debug)]
pub(crate) struct JointBlock {
    norm1: Modulation,
    norm1_context: TextNorm,
    attn: JointAttention,
    /// SD3.5 Medium's image-only second attention.
    attn2: Option<JointAttention>,
    ff: FeedForward,
    /// Every block but the last.
    ff_context: Option<FeedForward>,
}

impl JointBlock {
    pub(crate) fn new(vs: &Path<'_>, config: &MmditConfig, index: i64) -> Self {
        let dim = config.inner_dim();
        let last = index == config.num_layers - 1;
        let dual = config.dual_attention_layers.contains(&index);
        JointBlock {
            norm1: Modulation::new(&(vs / "norm1"), dim, if dual { 9 } else { 6 }),
            norm1_context: match last {
                true => TextNorm::Continuous(ContinuousNorm::new(&(vs / "norm1_context"), dim)),
                false => TextNorm::Zero(Modulation::new(&(vs / "norm1_context"), dim, 6)),
            },
            attn: JointAttention::new(&(vs / "attn"), config, true, !last),
            attn2: dual.then(|| JointAttention::new(&(vs / "attn2"), config, false, false)),
            ff: FeedForward::new(&(vs / "ff"), dim),
            ff_context: (!last).then(|| FeedForward::new(&(vs / "ff_context"), dim)),
        }
    }

    /// (text tokens, or `None` after the last block; image tokens).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        temb: &Tensor,
    ) -> (Option<Tensor>, Tensor) {
        let m = self.norm1.forward(temb);
        let normed = plain_norm(x);
        let nx = modulate(&normed, &m[0], &m[1]);
        let (nctx, cm) = match &self.norm1_context {
            TextNorm::Continuous(norm) => (norm.forward(context, temb), None),
            TextNorm::Zero(modulation) => {
                let cm = modulation.forward(temb);
                (modulate(&plain_norm(context), &cm[0], &cm[1]), Some(cm))
            }
        };
        let (attn, text_attn) = self.attn.forward(&nx, Some(&nctx));
        let mut x = x + m[2].unsqueeze(1) * attn;
        if let Some(attn2) = &self.attn2 {
            let nx2 = modulate(&normed, &m[6], &m[7]);
            x = &x + m[8].unsqueeze(1) * attn2.forward(&nx2, None).0;
        }
        let ff = self.ff.forward(&modulate(&plain_norm(&x), &m[3], &m[4]));
        let x = &x + m[5].unsqueeze(1) * ff;
        let (Some(cm), Some(ff_context), Some(text_attn)) = (cm, &self.ff_context, text_attn)
        else {
            return (None, x);
        };
        let context = context + cm[2].unsqueeze(1) * text_attn;
        let ff = ff_context.forward(&modulate(&plain_norm(&context), &cm[3], &cm[4]));
        (Some(&context + cm[5].unsqueeze(1) * ff), x)
    }
}
