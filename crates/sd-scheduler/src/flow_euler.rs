//! Euler for flow matching: diffusers' `FlowMatchEulerDiscreteScheduler`
//! (SD3, SD3.5, FLUX). One step moves the sample along the predicted
//! velocity from this sigma to the next; with `stochastic_sampling` it
//! re-noises its clean estimate to the next sigma instead.

use tch::Tensor;

use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::flow::{scale_noise, FlowRecipe, FlowSteps};
use crate::schedule::leading;
use crate::{check_index, draw_noise, f32_like, NoiseSource, Scheduler};

const NAME: &str = "flow-euler";

/// diffusers' `FlowMatchEulerDiscreteScheduler`.
#[derive(Debug)]
pub struct FlowMatchEuler {
    recipe: FlowRecipe,
    steps: FlowSteps,
    stochastic: bool,
    denoised: Option<Tensor>,
}

impl FlowMatchEuler {
    /// The sampler configured from `config` (SD3's: `shift` 3.0); a value
    /// it cannot use is an error naming the field.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        Ok(FlowMatchEuler {
            recipe: FlowRecipe::from_config(config)?,
            steps: FlowSteps::default(),
            stochastic: config.stochastic_sampling == Some(true),
            denoised: None,
        })
    }

    /// Dynamic shifting's `mu` (diffusers' `set_timesteps(mu=...)`), for
    /// the next `set_timesteps`.
    pub fn set_mu(&mut self, mu: f64) {
        self.recipe.set_mu(mu);
    }
}

impl Scheduler for FlowMatchEuler {
    fn name(&self) -> &'static str {
        NAME
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.steps = self.recipe.steps(NAME, num_inference_steps)?;
        self.denoised = None;
        Ok(())
    }

    fn set_image_seq_len(&mut self, seq_len: usize) {
        self.recipe.set_image_seq_len(seq_len);
    }

    fn set_custom_sigmas(&mut self, sigmas: &[f64]) -> Result<()> {
        self.recipe.set_custom_sigmas(sigmas);
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.steps.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.steps.sigmas)
    }

    fn denoised(&self) -> Option<&Tensor> {
        self.denoised.as_ref()
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_index(NAME, i, self.steps.timesteps.len())?;
        let (sigma, next) = (self.steps.sigmas[i], self.steps.sigmas[i + 1]);
        let sample = f32_like(sample);
        // (diffusers writes the 0-d sigma first: `sigma * v`, `dt * v`)
        let x0 = &sample - model_output * leading(sigma, model_output);
        let prev = if self.stochastic {
            let fresh = draw_noise(noise, &sample)?;
            &x0 * leading(1.0 - next, &x0) + fresh * leading(next, &sample)
        } else {
            &sample + model_output * leading(next - sigma, model_output)
        };
        self.denoised = Some(x0);
        Ok(prev.to_kind(model_output.kind()))
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        check_index(NAME, i, self.steps.timesteps.len())?;
        Ok(scale_noise(original, noise, self.steps.sigmas[i], true))
    }
}
