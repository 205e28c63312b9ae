//! Seeded noise that matches diffusers' `torch.Generator("cpu").manual_seed(seed)`.
//!
//! Each [`CpuGenerator`] is libtorch's own CPU generator object (Mersenne
//! Twister, and torch's exact normal transform), not the process-wide one:
//! every run owns its stream, two runs in two threads never interleave, and a
//! run draws the same numbers as diffusers does with a CPU generator of that
//! seed: initial latents first, then each stochastic step's noise, in order.

use tch::{Kind, Tensor};

use crate::error::Result;
pub use crate::ffi::generator::CpuGenerator;

/// Where stochastic samplers get their noise. [`CpuGenerator`] is the one
/// that matches diffusers; tests may supply fixed noise instead.
pub trait NoiseSource {
    /// Standard normal noise of `shape` (f32, any device; the caller moves it).
    fn randn(&mut self, shape: &[i64]) -> Result<Tensor>;

    /// The same, drawn as `kind`. diffusers draws in the model's dtype, and
    /// torch draws f16/bf16 through another transform than f32 (other
    /// numbers, not a rounding of them): a half-precision run matches
    /// diffusers' seeds only when drawn this way. The default casts an f32 draw.
    fn randn_as(&mut self, shape: &[i64], kind: Kind) -> Result<Tensor> {
        Ok(self.randn(shape)?.to_kind(kind))
    }
}

impl NoiseSource for CpuGenerator {
    fn randn(&mut self, shape: &[i64]) -> Result<Tensor> {
        CpuGenerator::randn(self, shape)
    }

    fn randn_as(&mut self, shape: &[i64], kind: Kind) -> Result<Tensor> {
        CpuGenerator::randn_as(self, shape, kind)
    }
}
