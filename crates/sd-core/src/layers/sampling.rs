//! diffusers' `Downsample2D` and `Upsample2D` with a convolution.

use tch::{nn, Tensor};

use crate::nn::Conv2d;

/// Halves height and width with a stride-2 3x3 conv (`name.conv`).
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    /// The VAE pads (0, 1, 0, 1) itself and convolves with padding 0.
    asymmetric_pad: bool,
}

impl Downsample2D {
    /// `padding` 1 in the UNet; 0 in the VAE (which then pads right/bottom by one).
    pub fn new(vs: nn::Path<'_>, in_channels: i64, out_channels: i64, padding: i64) -> Self {
        Downsample2D {
            conv: Conv2d::new(&(&vs / "conv"), in_channels, out_channels, 3, 2, padding),
            asymmetric_pad: padding == 0,
        }
    }

    /// Applies the layer.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.asymmetric_pad {
            self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(x)
        }
    }
}

/// Doubles height and width (nearest neighbour), then a 3x3 conv (`name.conv`).
#[derive(Debug)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// The layer under `vs`, uninitialised.
    pub fn new(vs: nn::Path<'_>, channels: i64, out_channels: i64) -> Self {
        Upsample2D {
            conv: Conv2d::new(&(&vs / "conv"), channels, out_channels, 3, 1, 1),
        }
    }

    /// `size` forces the output size (when the input was not a multiple of
    /// the total downsampling factor).
    pub fn forward(&self, x: &Tensor, size: Option<(i64, i64)>) -> Tensor {
        let up = match size {
            Some((h, w)) => x.upsample_nearest2d([h, w], None, None),
            None => {
                let (_, _, h, w) = x.size4().expect("a feature map");
                x.upsample_nearest2d([h * 2, w * 2], Some(2.0), Some(2.0))
            }
        };
        self.conv.forward(&up)
    }
}
