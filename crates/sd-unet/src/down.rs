//! `CrossAttnDownBlock2D` and `DownBlock2D`: resnets (each followed by a
//! transformer in the cross-attention kind), then a stride-2 downsample.

use sd_core::layers::{Downsample2D, ResnetBlock2D, ResnetConfig};
use tch::{nn::Path, Tensor};

use crate::cross::{CrossContext, Numbering};
use crate::error::Result;
use crate::transformer::{Transformer2D, TransformerSettings};

#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    /// Empty for `DownBlock2D`.
    attentions: Vec<Transformer2D>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vs: &Path<'_>,
        in_channels: i64,
        resnet: &ResnetConfig,
        layers: i64,
        transformer: Option<TransformerSettings>,
        downsample: bool,
        padding: i64,
    ) -> Result<Self> {
        let out = resnet.out_channels;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let config = ResnetConfig {
                in_channels: if i == 0 { in_channels } else { out },
                ..resnet.clone()
            };
            resnets.push(ResnetBlock2D::new(vs / "resnets" / i, &config)?);
            if let Some(settings) = &transformer {
                attentions.push(Transformer2D::new(&(vs / "attentions" / i), settings)?);
            }
        }
        Ok(DownBlock {
            resnets,
            attentions,
            downsampler: downsample
                .then(|| Downsample2D::new(vs / "downsamplers" / 0, out, out, padding)),
        })
    }

    /// Numbers the block's cross-attention layers (`name`: `down_blocks.N`).
    pub(crate) fn number(&mut self, name: &str, numbering: &mut Numbering) {
        for (j, attention) in self.attentions.iter_mut().enumerate() {
            attention.number(&format!("{name}.attentions.{j}"), numbering);
        }
    }

    /// The block's output and the states the up path will concatenate back.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &CrossContext<'_>,
    ) -> (Tensor, Vec<Tensor>) {
        let mut x = x.shallow_clone();
        let mut skips = Vec::new();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&x, Some(temb));
            if let Some(attention) = self.attentions.get(i) {
                x = attention.forward(&x, context);
            }
            skips.push(x.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(&x);
            skips.push(x.shallow_clone());
        }
        (x, skips)
    }
}
