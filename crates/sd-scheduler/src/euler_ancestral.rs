//! Euler ancestral: an Euler step to a lower sigma, then fresh noise back up
//! to the next sigma. diffusers' `EulerAncestralDiscreteScheduler`.

use tch::Tensor;

use crate::config::{PredictionType, SchedulerConfig};
use crate::error::Result;
use crate::prediction::{require, x0_from_sigma};
use crate::schedule::sqrt32;
use crate::sigmas::{self, sigma_scheduler_methods, SigmaCore, SigmaRecipe};
use crate::{draw_noise, f32_like, NoiseSource, Scheduler};

const NAME: &str = "euler-a";

/// diffusers' `EulerAncestralDiscreteScheduler`.
#[derive(Debug)]
pub struct EulerAncestral {
    core: SigmaCore,
    prediction: PredictionType,
}

impl EulerAncestral {
    /// The sampler configured from `config`; a value it cannot use is an error naming the field.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let mut schedule = sigmas::noise_schedule(config, true)?;
        sigmas::clamp_terminal_alpha(&mut schedule, config);
        let prediction = config.prediction_type.unwrap_or(PredictionType::Epsilon);
        Ok(EulerAncestral {
            core: SigmaCore::new(schedule, SigmaRecipe::from_config(config, false)?),
            prediction: require(
                NAME,
                prediction,
                &[PredictionType::Epsilon, PredictionType::VPrediction],
            )?,
        })
    }
}

impl Scheduler for EulerAncestral {
    fn name(&self) -> &'static str {
        NAME
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.core.prepare(NAME, num_inference_steps)
    }

    sigma_scheduler_methods!();

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let sigma = self.core.sigma(NAME, i)?;
        let sigma_to = self.core.steps.sigmas[i + 1];
        let sample = f32_like(sample);
        // 1. denoised estimate
        let x0 = x0_from_sigma(self.prediction, model_output, &sample, sigma);
        // 2. split the move to sigma_to into a deterministic part down to
        //    sigma_down and fresh noise of size sigma_up
        let sigma_up =
            sqrt32(sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma));
        let sigma_down = sqrt32(sigma_to * sigma_to - sigma_up * sigma_up);
        let derivative = (&sample - &x0) / sigma as f64;
        self.core.denoised = Some(x0);
        let prev = sample + derivative * (sigma_down - sigma) as f64;
        let fresh = draw_noise(noise, model_output)?;
        Ok((prev + fresh * sigma_up as f64).to_kind(model_output.kind()))
    }
}
