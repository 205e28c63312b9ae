//! Pieces of diffusion transformers shared by SD3's MMDiT and FLUX
//! (diffusers' `AdaLayerNormZero`'s modulation, `AdaLayerNormContinuous`,
//! the tanh-GELU `FeedForward`), named like diffusers' modules.

use crate::nn::Linear;
use tch::nn::Path;
use tch::Tensor;

/// LayerNorm without affine parameters, eps 1e-6.
pub fn plain_norm(x: &Tensor) -> Tensor {
    let dim = *x.size().last().expect("a feature dimension");
    x.layer_norm([dim], None::<Tensor>, None::<Tensor>, 1e-6, true)
}

/// `norm(x) * (1 + scale) + shift`, per sample.
pub fn modulate(normed: &Tensor, shift: &Tensor, scale: &Tensor) -> Tensor {
    normed * (scale.unsqueeze(1) + 1.0) + shift.unsqueeze(1)
}

/// `linear(silu(temb))` split into `n` modulation vectors.
#[derive(Debug)]
pub struct Modulation {
    linear: Linear,
    n: i64,
}

impl Modulation {
    /// `n` vectors of `dim` from `linear` (under `vs`), uninitialised.
    pub fn new(vs: &Path<'_>, dim: i64, n: i64) -> Self {
        Modulation {
            linear: Linear::new(&(vs / "linear"), dim, n * dim, true),
            n,
        }
    }

    /// The `n` vectors for `temb` (batch, dim), each (batch, dim).
    pub fn forward(&self, temb: &Tensor) -> Vec<Tensor> {
        self.linear.forward(&temb.silu()).chunk(self.n, 1)
    }
}

/// diffusers' `AdaLayerNormContinuous` (the last block's text norm and the
/// output norm): `scale, shift` (in that order) from `linear(silu(temb))`.
#[derive(Debug)]
pub struct ContinuousNorm {
    linear: Linear,
}

impl ContinuousNorm {
    /// The norm under `vs` (its `linear`), uninitialised.
    pub fn new(vs: &Path<'_>, dim: i64) -> Self {
        ContinuousNorm {
            linear: Linear::new(&(vs / "linear"), dim, 2 * dim, true),
        }
    }

    /// `x` normalised and modulated by `temb`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Tensor {
        let emb = self.linear.forward(&temb.silu().to_kind(x.kind()));
        let parts = emb.chunk(2, 1);
        modulate(&plain_norm(x), &parts[1], &parts[0])
    }
}

/// diffusers' `FeedForward` with `gelu-approximate`: `net.0.proj`, tanh
/// GELU (PyTorch's), `net.2`.
#[derive(Debug)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    /// `dim` -> 4 x `dim` -> `dim`, under `vs`, uninitialised.
    pub fn new(vs: &Path<'_>, dim: i64) -> Self {
        let net = vs / "net";
        FeedForward {
            proj: Linear::new(&(&net / 0 / "proj"), dim, 4 * dim, true),
            out: Linear::new(&(&net / 2), 4 * dim, dim, true),
        }
    }

    /// Applies the feed-forward.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.out.forward(&self.proj.forward(x).gelu("tanh"))
    }
}
