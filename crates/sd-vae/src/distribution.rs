//! The encoder's latent distribution: a diagonal Gaussian per latent
//! element (diffusers' `DiagonalGaussianDistribution`).

use sd_core::rng::NoiseSource;
use tch::Tensor;

use crate::error::Result;

/// The encoder's diagonal Gaussian over latents.
#[derive(Debug)]
pub struct LatentDistribution {
    /// Its mean.
    pub mean: Tensor,
    /// Clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor,
    /// Its standard deviation.
    pub std: Tensor,
}

impl LatentDistribution {
    /// Splits encoder moments (batch, 2C, h, w) into mean and log-variance.
    pub fn from_moments(moments: &Tensor) -> Self {
        let halves = moments.chunk(2, 1);
        let logvar = halves[1].clamp(-30.0, 20.0);
        let std = (&logvar * 0.5).exp();
        LatentDistribution {
            mean: halves[0].shallow_clone(),
            logvar,
            std,
        }
    }

    /// A sample `mean + std * eps`, with eps drawn from `noise` in the
    /// VAE's dtype (on the CPU for seed parity, as diffusers), then moved
    /// to the mean's device.
    pub fn sample(&self, noise: &mut dyn NoiseSource) -> Result<Tensor> {
        let eps = noise
            .randn_as(&self.mean.size(), self.mean.kind())?
            .to_device(self.mean.device());
        Ok(&self.mean + &self.std * eps)
    }

    /// The distribution's mode (its mean), for deterministic encoding.
    pub fn mode(&self) -> Tensor {
        self.mean.shallow_clone()
    }
}
