//! Timestep embeddings: the sinusoidal projection (diffusers'
//! `get_timestep_embedding`) and the two-layer MLP after it, shared by the
//! UNet and SD3's transformer.

use crate::nn::Linear;
use tch::{nn::Path, Kind, Tensor};

/// Sinusoidal features of (batch,) timesteps: (batch, dim), f32.
pub fn timestep_features(
    timesteps: &Tensor,
    dim: i64,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Tensor {
    let half = dim / 2;
    let device = timesteps.device();
    let exponent =
        Tensor::arange(half, (Kind::Float, device)) * -(10000f64.ln()) / (half as f64 - freq_shift);
    let angles = timesteps.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    let (sin, cos) = (angles.sin(), angles.cos());
    let features = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], -1)
    } else {
        Tensor::cat(&[sin, cos], -1)
    };
    if dim % 2 == 1 {
        features.constant_pad_nd([0, 1])
    } else {
        features
    }
}

/// `linear_1`, SiLU, `linear_2` (diffusers' `TimestepEmbedding`).
#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    /// The layer under `vs`, uninitialised.
    pub fn new(vs: &Path<'_>, input: i64, dim: i64) -> Self {
        TimestepEmbedding {
            linear_1: Linear::new(&(vs / "linear_1"), input, dim, true),
            linear_2: Linear::new(&(vs / "linear_2"), dim, dim, true),
        }
    }

    /// Applies the layer.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(x).silu())
    }
}
