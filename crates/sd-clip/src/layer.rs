//! One CLIP encoder layer (transformers' `CLIPEncoderLayer`): pre-norm
//! self-attention (causal in the text tower) and a two-layer MLP, each with
//! a residual.

use sd_core::nn::{LayerNorm, Linear};
use tch::{nn::Path, Tensor};

use crate::config::{ClipTextConfig, HiddenAct};

/// What shapes a layer, from either tower's config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerShape {
    pub hidden: i64,
    pub intermediate: i64,
    pub heads: i64,
    pub eps: f64,
    pub act: HiddenAct,
    /// Text: each token sees itself and those before it. The image tower
    /// attends everywhere, and passes transformers' `head_dim**-0.5` to the
    /// fused kernel (for the text tower's widths that is the kernel's own
    /// default, so its numbers stay as they were).
    pub causal: bool,
}

impl LayerShape {
    pub fn text(c: &ClipTextConfig) -> Self {
        LayerShape {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps,
            act: c.hidden_act,
            causal: true,
        }
    }
}

#[derive(Debug)]
pub struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: i64,
    act: HiddenAct,
    causal: bool,
}

impl EncoderLayer {
    pub fn new(vs: &Path<'_>, c: &LayerShape) -> Self {
        let (h, attn, eps) = (c.hidden, vs / "self_attn", c.eps);
        EncoderLayer {
            layer_norm1: LayerNorm::new(&(vs / "layer_norm1"), h, eps),
            q_proj: Linear::new(&(&attn / "q_proj"), h, h, true),
            k_proj: Linear::new(&(&attn / "k_proj"), h, h, true),
            v_proj: Linear::new(&(&attn / "v_proj"), h, h, true),
            out_proj: Linear::new(&(&attn / "out_proj"), h, h, true),
            layer_norm2: LayerNorm::new(&(vs / "layer_norm2"), h, eps),
            fc1: Linear::new(&(vs / "mlp" / "fc1"), h, c.intermediate, true),
            fc2: Linear::new(&(vs / "mlp" / "fc2"), c.intermediate, h, true),
            heads: c.heads,
            act: c.act,
            causal: c.causal,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        // 1. self-attention (causal in the text tower)
        let (b, n, h) = x.size3().expect("hidden states are (batch, tokens, width)");
        let normed = self.layer_norm1.forward(x);
        let split = |t: Tensor| t.view([b, n, self.heads, h / self.heads]).transpose(1, 2);
        let q = split(self.q_proj.forward(&normed));
        let k = split(self.k_proj.forward(&normed));
        let v = split(self.v_proj.forward(&normed));
        let scale = (!self.causal).then(|| ((h / self.heads) as f64).powf(-0.5));
        let attn = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            self.causal,
            scale,
            false,
        );
        let x = x + self
            .out_proj
            .forward(&attn.transpose(1, 2).reshape([b, n, h]));
        // 2. MLP
        let hidden = self.fc1.forward(&self.layer_norm2.forward(&x));
        let hidden = match self.act {
            HiddenAct::QuickGelu => &hidden * (&hidden * 1.702).sigmoid(),
            HiddenAct::Gelu => hidden.gelu("none"),
        };
        x + self.fc2.forward(&hidden)
    }
}
