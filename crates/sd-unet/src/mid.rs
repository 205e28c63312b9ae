//! `UNetMidBlock2DCrossAttn`: resnet, transformer, resnet at the lowest resolution.

use sd_core::layers::{ResnetBlock2D, ResnetConfig};
use tch::{nn::Path, Tensor};

use crate::cross::{CrossContext, Numbering};
use crate::error::Result;
use crate::transformer::{Transformer2D, TransformerSettings};

#[derive(Debug)]
pub struct MidBlock {
    first: ResnetBlock2D,
    attention: Transformer2D,
    second: ResnetBlock2D,
}

impl MidBlock {
    pub fn new(
        vs: &Path<'_>,
        resnet: &ResnetConfig,
        transformer: &TransformerSettings,
    ) -> Result<Self> {
        Ok(MidBlock {
            first: ResnetBlock2D::new(vs / "resnets" / 0, resnet)?,
            attention: Transformer2D::new(&(vs / "attentions" / 0), transformer)?,
            second: ResnetBlock2D::new(vs / "resnets" / 1, resnet)?,
        })
    }

    /// Numbers the block's cross-attention layers (diffusers lists them last).
    pub(crate) fn number(&mut self, numbering: &mut Numbering) {
        self.attention.number("mid_block.attentions.0", numbering);
    }

    pub(crate) fn forward(&self, x: &Tensor, temb: &Tensor, context: &CrossContext<'_>) -> Tensor {
        let x = self.first.forward(x, Some(temb));
        let x = self.attention.forward(&x, context);
        self.second.forward(&x, Some(temb))
    }
}
