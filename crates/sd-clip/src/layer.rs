//! One CLIP encoder layer (transformers' `CLIPEncoderLayer`): pre-norm
//! causal self-attention and a two-layer MLP, each with a residual.

use sd_core::nn::{LayerNorm, Linear};
use tch::{nn::Path, Tensor};

use crate::config::{ClipTextConfig, HiddenAct};

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
}

impl EncoderLayer {
    pub fn new(vs: &Path<'_>, c: &ClipTextConfig) -> Self {
        let (h, attn) = (c.hidden_size, vs / "self_attn");
        EncoderLayer {
            layer_norm1: LayerNorm::new(&(vs / "layer_norm1"), h, c.layer_norm_eps),
            q_proj: Linear::new(&(&attn / "q_proj"), h, h, true),
            k_proj: Linear::new(&(&attn / "k_proj"), h, h, true),
            v_proj: Linear::new(&(&attn / "v_proj"), h, h, true),
            out_proj: Linear::new(&(&attn / "out_proj"), h, h, true),
            layer_norm2: LayerNorm::new(&(vs / "layer_norm2"), h, c.layer_norm_eps),
            fc1: Linear::new(&(vs / "mlp" / "fc1"), h, c.intermediate_size, true),
            fc2: Linear::new(&(vs / "mlp" / "fc2"), c.intermediate_size, h, true),
            heads: c.num_attention_heads,
            act: c.hidden_act,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        // 1. causal self-attention: each token sees itself and those before it
        let (b, n, h) = x.size3().expect("hidden states are (batch, tokens, width)");
        let normed = self.layer_norm1.forward(x);
        let split = |t: Tensor| t.view([b, n, self.heads, h / self.heads]).transpose(1, 2);
        let q = split(self.q_proj.forward(&normed));
        let k = split(self.k_proj.forward(&normed));
        let v = split(self.v_proj.forward(&normed));
        let attn = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            true,
            None,
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
