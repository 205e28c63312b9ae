//! The VAE encoder: image (batch, 3, H, W) to the moments (mean, log-variance)
//! of the latent distribution, (batch, 2 * latent_channels, H/8, W/8).

use sd_core::layers::{Downsample2D, ResnetBlock2D, ResnetConfig};
use sd_core::nn::{Conv2d, GroupNorm};
use tch::{nn::Path, Tensor};

use crate::config::VaeConfig;
use crate::error::Result;
use crate::mid::MidBlock;

/// The `resnets` of an encoder down block or a decoder up block: `count`
/// blocks without a time embedding, the first taking `input` channels to
/// `output`.
pub(crate) fn resnet_stack(
    block: &Path<'_>,
    count: i64,
    input: i64,
    output: i64,
    groups: i64,
) -> Result<Vec<ResnetBlock2D>> {
    let resnets = (0..count)
        .map(|j| {
            let config = ResnetConfig {
                groups,
                ..ResnetConfig::new(if j == 0 { input } else { output }, output, None)
            };
            ResnetBlock2D::new(block / "resnets" / j, &config)
        })
        .collect::<sd_core::Result<_>>()?;
    Ok(resnets)
}

#[derive(Debug)]
struct DownEncoderBlock {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

#[derive(Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    pub fn new(vs: &Path<'_>, c: &VaeConfig) -> Result<Self> {
        let boc = &c.block_out_channels;
        let n = boc.len();
        let mut down_blocks = Vec::new();
        let mut output = boc[0];
        for (i, &width) in boc.iter().enumerate() {
            let input = output;
            output = width;
            let block = vs / "down_blocks" / i;
            let resnets =
                resnet_stack(&block, c.layers_per_block, input, output, c.norm_num_groups)?;
            let downsampler = (i + 1 < n)
                .then(|| Downsample2D::new(&block / "downsamplers" / 0, output, output, 0));
            down_blocks.push(DownEncoderBlock {
                resnets,
                downsampler,
            });
        }
        let last = boc[n - 1];
        Ok(Encoder {
            conv_in: Conv2d::new(&(vs / "conv_in"), c.in_channels, boc[0], 3, 1, 1),
            down_blocks,
            mid_block: MidBlock::new(
                &(vs / "mid_block"),
                last,
                c.norm_num_groups,
                c.mid_block_add_attention,
            )?,
            conv_norm_out: GroupNorm::new(&(vs / "conv_norm_out"), c.norm_num_groups, last, 1e-6),
            conv_out: Conv2d::new(&(vs / "conv_out"), last, 2 * c.latent_channels, 3, 1, 1),
        })
    }

    pub fn forward(&self, image: &Tensor) -> Tensor {
        let mut x = self.conv_in.forward(image);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(&x, None);
            }
            if let Some(down) = &block.downsampler {
                x = down.forward(&x);
            }
        }
        x = self.mid_block.forward(&x);
        self.conv_out
            .forward(&self.conv_norm_out.forward(&x).silu())
    }
}
