//! Euler (Karras et al. 2022, Algorithm 2 without churn):
//! diffusers' `EulerDiscreteScheduler`.

use tch::Tensor;

use crate::config::{
    FinalSigmasType, InterpolationType, PredictionType, SchedulerConfig, TimestepType,
};
use crate::error::{Result, SchedulerError};
use crate::prediction::x0_from_sigma;
use crate::sigmas::{self, sigma_scheduler_methods, SigmaCore, SigmaRecipe};
use crate::{f32_like, NoiseSource, Scheduler};

const NAME: &str = "euler";

/// diffusers' `EulerDiscreteScheduler`.
#[derive(Debug)]
pub struct Euler {
    core: SigmaCore,
    prediction: PredictionType,
}

impl Euler {
    /// The sampler configured from `config`; a value it cannot use is an error naming the field.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        if config.timestep_type == Some(TimestepType::Continuous) {
            return Err(SchedulerError::config(
                "timestep_type",
                "continuous timesteps are not implemented",
            ));
        }
        let mut schedule = sigmas::noise_schedule(config, true)?;
        sigmas::clamp_terminal_alpha(&mut schedule, config);
        let mut recipe = SigmaRecipe::from_config(config, true)?;
        recipe.interpolation = config
            .interpolation_type
            .unwrap_or(InterpolationType::Linear);
        recipe.final_sigma = config.final_sigmas_type.unwrap_or(FinalSigmasType::Zero);
        recipe.sigma_min = config.sigma_min;
        recipe.sigma_max = config.sigma_max;
        Ok(Euler {
            core: SigmaCore::new(schedule, recipe),
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
        })
    }
}

impl Scheduler for Euler {
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
        _: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let sigma = self.core.sigma(NAME, i)?;
        let sample = f32_like(sample);
        // 1. denoised estimate at this sigma (no churn: sigma_hat == sigma)
        let x0 = x0_from_sigma(self.prediction, model_output, &sample, sigma);
        // 2. one Euler step of dx/dsigma = (x - x0) / sigma to the next sigma
        let derivative = (&sample - &x0) / sigma as f64;
        self.core.denoised = Some(x0);
        let dt = self.core.steps.sigmas[i + 1] - sigma;
        Ok((sample + derivative * dt as f64).to_kind(model_output.kind()))
    }
}
