//! ESRGAN's RRDBNet (spandrel's `RRDBNet`, the original layout): a first
//! convolution, residual-in-residual dense blocks with a long skip, 2x
//! nearest-neighbour upsamplings each followed by a convolution, and two
//! last convolutions; LeakyReLU(0.2) throughout. Real-ESRGAN's x2/x1 models
//! pixel-unshuffle the (reflect-padded) image first and crop the result.

use sd_core::nn::Conv2d;
use tch::{nn::Path, Tensor};

use crate::arch::EsrganConfig;

/// LeakyReLU with `slope`, as torch's kernel computes it (`x > 0 ? x : x * slope`).
pub(crate) fn leaky_relu(x: &Tensor, slope: f64) -> Tensor {
    x.where_self(&x.gt(0.0), &(x * slope))
}

/// A 3x3 convolution, padding 1.
fn conv3(vs: &Path<'_>, input: i64, output: i64) -> Conv2d {
    Conv2d::new(vs, input, output, 3, 1, 1)
}

/// Five convolutions over the growing concatenation of their inputs.
#[derive(Debug)]
struct DenseBlock {
    convs: [Conv2d; 5],
    /// ESRGAN+'s 1x1 path (`conv1x1`), added after the second and fourth.
    plus: Option<Conv2d>,
}

impl DenseBlock {
    fn new(vs: &Path<'_>, nf: i64, plus: bool) -> Self {
        const GROWTH: i64 = 32;
        let convs = [0, 1, 2, 3, 4].map(|i| {
            let output = if i == 4 { nf } else { GROWTH };
            conv3(
                &(vs / format!("conv{}", i + 1) / 0),
                nf + i * GROWTH,
                output,
            )
        });
        let plus = plus.then(|| Conv2d::no_bias(&(vs / "conv1x1"), nf, GROWTH, 1, 1, 0));
        DenseBlock { convs, plus }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let c = &self.convs;
        let act = |t: Tensor| leaky_relu(&t, 0.2);
        let x1 = act(c[0].forward(x));
        let mut x2 = act(c[1].forward(&Tensor::cat(&[x, &x1], 1)));
        if let Some(plus) = &self.plus {
            x2 += plus.forward(x);
        }
        let x3 = act(c[2].forward(&Tensor::cat(&[x, &x1, &x2], 1)));
        let mut x4 = act(c[3].forward(&Tensor::cat(&[x, &x1, &x2, &x3], 1)));
        if self.plus.is_some() {
            x4 += &x2;
        }
        let x5 = c[4].forward(&Tensor::cat(&[x, &x1, &x2, &x3, &x4], 1));
        x5 * 0.2 + x
    }
}

/// Three dense blocks and a scaled skip.
#[derive(Debug)]
struct Rrdb([DenseBlock; 3]);

impl Rrdb {
    fn forward(&self, x: &Tensor) -> Tensor {
        let out = self.0.iter().fold(x.shallow_clone(), |h, b| b.forward(&h));
        out * 0.2 + x
    }
}

/// The network.
#[derive(Debug)]
pub(crate) struct RrdbNet {
    config: EsrganConfig,
    first: Conv2d,
    blocks: Vec<Rrdb>,
    trunk: Conv2d,
    ups: Vec<Conv2d>,
    hr: Conv2d,
    last: Conv2d,
}

impl RrdbNet {
    pub(crate) fn new(vs: &Path<'_>, config: EsrganConfig) -> Self {
        let (nf, model) = (config.features, vs / "model");
        let sub = &model / 1 / "sub";
        let blocks = (0..config.blocks)
            .map(|b| {
                let block = &sub / b;
                Rrdb(
                    [1, 2, 3]
                        .map(|r| DenseBlock::new(&(&block / format!("RDB{r}")), nf, config.plus)),
                )
            })
            .collect();
        let up_count = config.upsamplings;
        RrdbNet {
            config,
            first: conv3(&(&model / 0), config.in_channels, nf),
            blocks,
            trunk: conv3(&(&sub / config.blocks), nf, nf),
            ups: (1..=up_count)
                .map(|u| conv3(&(&model / (3 * u)), nf, nf))
                .collect(),
            hr: conv3(&(&model / (3 * up_count + 2)), nf, nf),
            last: conv3(&(&model / (3 * up_count + 4)), nf, config.out_channels),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let Some(factor) = self.config.unshuffle else {
            return self.body(x);
        };
        let (h, w) = (x.size()[2], x.size()[3]);
        let (ph, pw) = (
            (factor - h % factor) % factor,
            (factor - w % factor) % factor,
        );
        let padded = match ph > 0 || pw > 0 {
            true => x.reflection_pad2d([0, pw, 0, ph]),
            false => x.shallow_clone(),
        };
        let scale = (1 << self.config.upsamplings) / factor;
        let out = self.body(&padded.pixel_unshuffle(factor));
        out.narrow(2, 0, h * scale).narrow(3, 0, w * scale)
    }

    fn body(&self, x: &Tensor) -> Tensor {
        let features = self.first.forward(x);
        let trunk = self
            .blocks
            .iter()
            .fold(features.shallow_clone(), |h, b| b.forward(&h));
        let mut h = &features + self.trunk.forward(&trunk);
        for up in &self.ups {
            let (height, width) = (h.size()[2], h.size()[3]);
            let upsampled = h.upsample_nearest2d([height * 2, width * 2], Some(2.0), Some(2.0));
            h = leaky_relu(&up.forward(&upsampled), 0.2);
        }
        let h = leaky_relu(&self.hr.forward(&h), 0.2);
        self.last.forward(&h)
    }
}
