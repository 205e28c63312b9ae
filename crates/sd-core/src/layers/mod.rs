//! Blocks used by both the UNet and the VAE, named like diffusers' modules
//! so that `VarStore` paths equal the keys of the official safetensors.

mod attention;
mod resnet;

pub use attention::{Attention, AttentionConfig};
pub use resnet::{ResnetBlock2D, ResnetConfig};

use tch::nn;

/// A `kernel`×`kernel` convolution that keeps the spatial size (stride 1).
pub fn conv2d_same(
    vs: nn::Path<'_>,
    in_channels: i64,
    out_channels: i64,
    kernel: i64,
) -> nn::Conv2D {
    let config = nn::ConvConfig {
        padding: kernel / 2,
        ..Default::default()
    };
    nn::conv2d(vs, in_channels, out_channels, kernel, config)
}

/// GroupNorm with diffusers' defaults (affine).
pub fn group_norm(vs: nn::Path<'_>, groups: i64, channels: i64, eps: f64) -> nn::GroupNorm {
    let config = nn::GroupNormConfig {
        eps,
        ..Default::default()
    };
    nn::group_norm(vs, groups, channels, config)
}

/// A linear layer, with or without bias.
pub fn linear(vs: nn::Path<'_>, input: i64, output: i64, bias: bool) -> nn::Linear {
    let config = nn::LinearConfig {
        bias,
        ..Default::default()
    };
    nn::linear(vs, input, output, config)
}

/// The dotted key prefix of a `VarStore` path, for error messages.
pub fn path_name(vs: &nn::Path<'_>) -> String {
    vs.components().collect::<Vec<_>>().join(".")
}
