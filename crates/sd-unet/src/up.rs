//! `CrossAttnUpBlock2D` and `UpBlock2D`: each resnet takes the previous
//! output concatenated with a skip state from the down path (newest first),
//! then an optional transformer; finally a 2x upsample.

use sd_core::layers::{ResnetBlock2D, ResnetConfig, Upsample2D};
use tch::{nn::Path, Tensor};

use crate::cross::{CrossContext, Numbering};
use crate::error::Result;
use crate::transformer::{Transformer2D, TransformerSettings};

#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Upsample2D>,
}

/// Channel counts of an up block, as diffusers derives them.
#[derive(Debug, Clone, Copy)]
pub struct UpChannels {
    /// Output channels of the matching down block's input (the last skip).
    pub input: i64,
    /// Output channels of the block below (the first resnet's input).
    pub previous: i64,
}

impl UpBlock {
    pub fn new(
        vs: &Path<'_>,
        channels: UpChannels,
        resnet: &ResnetConfig,
        layers: i64,
        transformer: Option<TransformerSettings>,
        upsample: bool,
    ) -> Result<Self> {
        let out = resnet.out_channels;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip = if i == layers - 1 { channels.input } else { out };
            let input = if i == 0 { channels.previous } else { out };
            let config = ResnetConfig {
                in_channels: input + skip,
                ..resnet.clone()
            };
            resnets.push(ResnetBlock2D::new(vs / "resnets" / i, &config)?);
            if let Some(settings) = &transformer {
                attentions.push(Transformer2D::new(&(vs / "attentions" / i), settings)?);
            }
        }
        Ok(UpBlock {
            resnets,
            attentions,
            upsampler: upsample.then(|| Upsample2D::new(vs / "upsamplers" / 0, out, out)),
        })
    }

    /// Numbers the block's cross-attention layers (`name`: `up_blocks.N`).
    pub(crate) fn number(&mut self, name: &str, numbering: &mut Numbering) {
        for (j, attention) in self.attentions.iter_mut().enumerate() {
            attention.number(&format!("{name}.attentions.{j}"), numbering);
        }
    }

    pub fn resnet_count(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` are this block's skip states in down-path order; they are
    /// consumed newest first. `size` forces the upsampled size.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &CrossContext<'_>,
        size: Option<(i64, i64)>,
    ) -> Tensor {
        let mut x = x.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = &skips[skips.len() - 1 - i];
            x = resnet.forward(&Tensor::cat(&[&x, skip], 1), Some(temb));
            if let Some(attention) = self.attentions.get(i) {
                x = attention.forward(&x, context);
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(&x, size),
            None => x,
        }
    }
}
