//! Real-ESRGAN's SRVGGNetCompact: 3x3 convolutions with PReLU, the last one
//! making `scale^2` times the output channels for a pixel shuffle, plus the
//! nearest-neighbour enlargement of the input.

use sd_core::nn::{param, Conv2d};
use tch::{nn::Path, Tensor};

use crate::arch::CompactConfig;

/// The network.
#[derive(Debug)]
pub(crate) struct Compact {
    config: CompactConfig,
    /// Each convolution but the last, with its PReLU's per-channel slopes.
    layers: Vec<(Conv2d, Tensor)>,
    last: Conv2d,
}

impl Compact {
    pub(crate) fn new(vs: &Path<'_>, config: CompactConfig) -> Self {
        let body = vs / "body";
        let nf = config.features;
        let layers = (0..=config.convs)
            .map(|i| {
                let input = if i == 0 { config.in_channels } else { nf };
                let conv = Conv2d::new(&(&body / (2 * i)), input, nf, 3, 1, 1);
                (conv, param(&(&body / (2 * i + 1)), "weight", &[nf]))
            })
            .collect();
        let shuffled = config.out_channels * config.scale * config.scale;
        let last = Conv2d::new(&(&body / (2 * config.convs + 2)), nf, shuffled, 3, 1, 1);
        Compact {
            config,
            layers,
            last,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let h = self
            .layers
            .iter()
            .fold(x.shallow_clone(), |h, (conv, slope)| {
                let h = conv.forward(&h);
                // PReLU as torch computes it: x > 0 ? x : slope * x
                let slope = slope.to_kind(h.kind()).reshape([1, -1, 1, 1]);
                h.where_self(&h.gt(0.0), &(&slope * &h))
            });
        let s = self.config.scale;
        let out = self.last.forward(&h).pixel_shuffle(s);
        let (height, width) = (x.size()[2], x.size()[3]);
        let base = x.upsample_nearest2d([height * s, width * s], Some(s as f64), Some(s as f64));
        out + base
    }
}
