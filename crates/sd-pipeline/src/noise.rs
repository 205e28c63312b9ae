//! A run's noise: one seeded generator for the whole batch (diffusers with
//! one CPU generator), or one per image (diffusers with a list of them).

use sd_core::rng::{CpuGenerator, NoiseSource};
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::generate::Seed;

pub enum BatchNoise {
    Single(CpuGenerator),
    PerImage(Vec<CpuGenerator>),
}

impl BatchNoise {
    /// The generator(s) `seed` asks for.
    pub fn new(seed: &Seed) -> Result<Self> {
        match seed {
            Seed::Batch(seed) => Ok(BatchNoise::Single(CpuGenerator::new(*seed)?)),
            Seed::PerImage(seeds) => Self::per_image(seeds),
        }
    }

    pub fn per_image(seeds: &[u64]) -> Result<Self> {
        Ok(BatchNoise::PerImage(
            seeds
                .iter()
                .map(|&s| CpuGenerator::new(s))
                .collect::<sd_core::Result<_>>()?,
        ))
    }

    /// The first image's generator (for the VAE sample of a shared init image).
    pub fn first(&mut self) -> &mut dyn NoiseSource {
        match self {
            BatchNoise::Single(g) => g,
            BatchNoise::PerImage(gs) => &mut gs[0],
        }
    }
}

impl NoiseSource for BatchNoise {
    fn randn(&mut self, shape: &[i64]) -> sd_core::Result<Tensor> {
        self.randn_as(shape, Kind::Float)
    }

    fn randn_as(&mut self, shape: &[i64], kind: Kind) -> sd_core::Result<Tensor> {
        match self {
            BatchNoise::Single(g) => g.randn_as(shape, kind),
            BatchNoise::PerImage(gs) if shape.first() == Some(&(gs.len() as i64)) => {
                let mut one = shape.to_vec();
                one[0] = 1;
                let parts = gs
                    .iter_mut()
                    .map(|g| g.randn_as(&one, kind))
                    .collect::<sd_core::Result<Vec<_>>>()?;
                Ok(Tensor::cat(&parts, 0))
            }
            BatchNoise::PerImage(gs) => gs[0].randn_as(shape, kind),
        }
    }
}
