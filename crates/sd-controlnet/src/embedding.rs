//! `ControlNetConditioningEmbedding`: the small convolution stack that
//! brings a control image down to latent resolution (SiLU after each
//! convolution but the last, a stride-2 convolution per step down).

use sd_core::nn::Conv2d;
use tch::{nn::Path, Tensor};

/// `conv_in`, `blocks.*` (pairs: same width, then stride 2 to the next
/// width), `conv_out` (zero-initialised in training).
#[derive(Debug)]
pub struct ConditioningEmbedding {
    conv_in: Conv2d,
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
}

impl ConditioningEmbedding {
    /// The layers under `vs`: `channels` image channels in, `widths`
    /// (diffusers' `conditioning_embedding_out_channels`), `out` channels out.
    pub fn new(vs: &Path<'_>, channels: i64, widths: &[i64], out: i64) -> Self {
        let mut blocks = Vec::new();
        for pair in widths.windows(2) {
            let (input, output) = (pair[0], pair[1]);
            let i = blocks.len();
            blocks.push(Conv2d::new(&(vs / "blocks" / i), input, input, 3, 1, 1));
            blocks.push(Conv2d::new(
                &(vs / "blocks" / (i + 1)),
                input,
                output,
                3,
                2,
                1,
            ));
        }
        let last = widths[widths.len() - 1];
        ConditioningEmbedding {
            conv_in: Conv2d::new(&(vs / "conv_in"), channels, widths[0], 3, 1, 1),
            blocks,
            conv_out: Conv2d::new(&(vs / "conv_out"), last, out, 3, 1, 1),
        }
    }

    /// The embedding of a control image batch (batch, channels, H, W) in [0, 1].
    pub fn forward(&self, image: &Tensor) -> Tensor {
        let mut x = self.conv_in.forward(image).silu();
        for block in &self.blocks {
            x = block.forward(&x).silu();
        }
        self.conv_out.forward(&x)
    }
}
