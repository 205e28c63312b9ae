//! diffusers' `ResnetBlock2D` (models/resnet.py), default time-embedding norm.

use tch::{nn, Tensor};

use super::{conv2d_same, group_norm, linear, Conv2d, GroupNorm, Linear};
use crate::error::{CoreError, Result};

/// The settings of diffusers' `ResnetBlock2D`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResnetConfig {
    /// Input channels.
    pub in_channels: i64,
    /// Output channels.
    pub out_channels: i64,
    /// Width of the time embedding; `None` in the VAE, which has none.
    pub temb_channels: Option<i64>,
    /// Group-norm groups of the first norm.
    pub groups: i64,
    /// GroupNorm groups after the time embedding; diffusers defaults it to `groups`.
    pub groups_out: Option<i64>,
    /// The group norms' epsilon.
    pub eps: f64,
    /// The residual sum is divided by this (1.0 in SD).
    pub output_scale_factor: f64,
}

impl ResnetConfig {
    /// The common case: 32 groups, eps 1e-6, no output scaling.
    pub fn new(in_channels: i64, out_channels: i64, temb_channels: Option<i64>) -> Self {
        ResnetConfig {
            in_channels,
            out_channels,
            temb_channels,
            groups: 32,
            groups_out: None,
            eps: 1e-6,
            output_scale_factor: 1.0,
        }
    }
}

/// diffusers' `ResnetBlock2D`: two norm-SiLU-conv stages, an optional time
/// embedding, and a 1x1 shortcut when the channel count changes.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// The block under `vs`, uninitialised.
    pub fn new(vs: nn::Path<'_>, config: &ResnetConfig) -> Result<Self> {
        let groups_out = config.groups_out.unwrap_or(config.groups);
        for (channels, groups) in [
            (config.in_channels, config.groups),
            (config.out_channels, groups_out),
        ] {
            if groups <= 0 || channels % groups != 0 {
                return Err(CoreError::invalid(
                    format!("ResnetBlock2D at '{}'", super::path_name(&vs)),
                    format!("{channels} channels do not split into {groups} norm groups"),
                ));
            }
        }
        let (cin, cout) = (config.in_channels, config.out_channels);
        Ok(ResnetBlock2D {
            norm1: group_norm(&vs / "norm1", config.groups, cin, config.eps),
            conv1: conv2d_same(&vs / "conv1", cin, cout, 3),
            time_emb_proj: config
                .temb_channels
                .map(|t| linear(&vs / "time_emb_proj", t, cout, true)),
            norm2: group_norm(&vs / "norm2", groups_out, cout, config.eps),
            conv2: conv2d_same(&vs / "conv2", cout, cout, 3),
            conv_shortcut: (cin != cout).then(|| conv2d_same(&vs / "conv_shortcut", cin, cout, 1)),
            output_scale_factor: config.output_scale_factor,
        })
    }

    /// `temb` is the (batch, temb_channels) time embedding, when the block has one.
    pub fn forward(&self, input: &Tensor, temb: Option<&Tensor>) -> Tensor {
        // 1. norm, SiLU, conv
        let mut hidden = self.conv1.forward(&self.norm1.forward(input).silu());
        // 2. add the projected time embedding per channel
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            hidden += proj.forward(&temb.silu()).unsqueeze(-1).unsqueeze(-1);
        }
        // 3. norm, SiLU, (dropout: identity at inference), conv
        hidden = self.conv2.forward(&self.norm2.forward(&hidden).silu());
        // 4. residual, through a 1x1 conv when the channel count changes
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(input),
            None => input.shallow_clone(),
        };
        let out = shortcut + hidden;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}
