//! Blocks shared by the UNet, the VAE and the diffusion transformers, named like
//! diffusers' modules so that `VarStore` paths equal the keys of the
//! official safetensors.

mod attention;
pub mod dit;
mod resnet;
mod sampling;
mod timestep;

pub use attention::{attend, split_heads, Attention, AttentionConfig, ExtraTokens};
pub use resnet::{ResnetBlock2D, ResnetConfig};
pub use sampling::{Downsample2D, Upsample2D};
pub use timestep::{timestep_features, TimestepEmbedding};

use tch::nn;

pub use crate::nn::{Conv2d, GroupNorm, LayerNorm, Linear};

/// A `kernel`x`kernel` convolution that keeps the spatial size (stride 1).
pub fn conv2d_same(vs: nn::Path<'_>, in_channels: i64, out_channels: i64, kernel: i64) -> Conv2d {
    Conv2d::new(&vs, in_channels, out_channels, kernel, 1, kernel / 2)
}

/// GroupNorm with diffusers' defaults (affine).
pub fn group_norm(vs: nn::Path<'_>, groups: i64, channels: i64, eps: f64) -> GroupNorm {
    GroupNorm::new(&vs, groups, channels, eps)
}

/// A linear layer, with or without bias.
pub fn linear(vs: nn::Path<'_>, input: i64, output: i64, bias: bool) -> Linear {
    Linear::new(&vs, input, output, bias)
}

/// The dotted key prefix of a `VarStore` path, for error messages.
pub fn path_name(vs: &nn::Path<'_>) -> String {
    vs.components().collect::<Vec<_>>().join(".")
}
