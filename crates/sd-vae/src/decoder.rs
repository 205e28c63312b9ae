//! The VAE decoder: latents (batch, latent_channels, h, w) to an image
//! (batch, 3, 8h, 8w) in [-1, 1] (before clamping).

use sd_core::layers::{ResnetBlock2D, Upsample2D};
use sd_core::nn::{Conv2d, GroupNorm};
use tch::{nn::Path, Tensor};

use crate::config::VaeConfig;
use crate::encoder::resnet_stack;
use crate::error::Result;
use crate::mid::MidBlock;

#[derive(Debug)]
struct UpDecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

#[derive(Debug)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    pub fn new(vs: &Path<'_>, c: &VaeConfig) -> Result<Self> {
        let reversed: Vec<i64> = c.block_out_channels.iter().rev().copied().collect();
        let n = reversed.len();
        let mut up_blocks = Vec::new();
        let mut output = reversed[0];
        for (i, &width) in reversed.iter().enumerate() {
            let input = output;
            output = width;
            let block = vs / "up_blocks" / i;
            let resnets = resnet_stack(
                &block,
                c.layers_per_block + 1,
                input,
                output,
                c.norm_num_groups,
            )?;
            let upsampler =
                (i + 1 < n).then(|| Upsample2D::new(&block / "upsamplers" / 0, output, output));
            up_blocks.push(UpDecoderBlock { resnets, upsampler });
        }
        let first = c.block_out_channels[0];
        Ok(Decoder {
            conv_in: Conv2d::new(&(vs / "conv_in"), c.latent_channels, reversed[0], 3, 1, 1),
            mid_block: MidBlock::new(
                &(vs / "mid_block"),
                reversed[0],
                c.norm_num_groups,
                c.mid_block_add_attention,
            )?,
            up_blocks,
            conv_norm_out: GroupNorm::new(&(vs / "conv_norm_out"), c.norm_num_groups, first, 1e-6),
            conv_out: Conv2d::new(&(vs / "conv_out"), first, c.out_channels, 3, 1, 1),
        })
    }

    pub fn forward(&self, z: &Tensor) -> Tensor {
        let mut x = self.mid_block.forward(&self.conv_in.forward(z));
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(&x, None);
            }
            if let Some(up) = &block.upsampler {
                x = up.forward(&x, None);
            }
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward(&x).silu())
    }
}
