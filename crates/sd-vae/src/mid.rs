//! The VAE's `UNetMidBlock2D`: resnet, single-head attention over pixels, resnet.

use sd_core::layers::{Attention, AttentionConfig, ResnetBlock2D, ResnetConfig};
use tch::{nn::Path, Tensor};

use crate::error::Result;

#[derive(Debug)]
pub struct MidBlock {
    first: ResnetBlock2D,
    attention: Option<Attention>,
    second: ResnetBlock2D,
}

impl MidBlock {
    pub fn new(vs: &Path<'_>, channels: i64, groups: i64, with_attention: bool) -> Result<Self> {
        let resnet = ResnetConfig {
            groups,
            ..ResnetConfig::new(channels, channels, None)
        };
        let attention = AttentionConfig {
            bias: true,
            group_norm: Some((groups, 1e-6)),
            residual_connection: true,
            ..AttentionConfig::transformer(channels, None, 1, channels)
        };
        Ok(MidBlock {
            first: ResnetBlock2D::new(vs / "resnets" / 0, &resnet)?,
            attention: if with_attention {
                Some(Attention::new(vs / "attentions" / 0, &attention)?)
            } else {
                None
            },
            second: ResnetBlock2D::new(vs / "resnets" / 1, &resnet)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut x = self.first.forward(x, None);
        if let Some(attention) = &self.attention {
            x = attention.forward(&x, None);
        }
        self.second.forward(&x, None)
    }
}
