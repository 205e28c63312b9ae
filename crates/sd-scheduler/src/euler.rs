//! Euler (Karras et al. 2022, Algorithm 2 without churn):
//! diffusers' `EulerDiscreteScheduler`.

use tch::Tensor;

use crate::config::{
    FinalSigmasType, InterpolationType, PredictionType, SchedulerConfig, TimestepType,
};
use crate::error::{Result, SchedulerError};
use crate::prediction::x0_from_sigma;
use crate::schedule::NoiseSchedule;
use crate::sigmas::{self, SigmaRecipe, SigmaSteps};
use crate::{check_index, check_steps, f32_like, NoiseSource, Scheduler};

const NAME: &str = "euler";

#[derive(Debug)]
pub struct Euler {
    schedule: NoiseSchedule,
    recipe: SigmaRecipe,
    prediction: PredictionType,
    steps: SigmaSteps,
}

impl Euler {
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
            schedule,
            recipe,
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
            steps: SigmaSteps::default(),
        })
    }
}

impl Scheduler for Euler {
    fn name(&self) -> &'static str {
        NAME
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        check_steps(
            NAME,
            num_inference_steps,
            self.schedule.num_train_timesteps(),
        )?;
        self.steps = sigmas::sigma_steps(&self.schedule, num_inference_steps, &self.recipe);
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.steps.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.steps.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        sigmas::init_noise_sigma(&self.steps.sigmas, self.recipe.spacing)
    }

    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        check_index(NAME, step_index, self.steps.timesteps.len())?;
        Ok(sigmas::scale_input(sample, self.steps.sigmas[step_index]))
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_index(NAME, i, self.steps.timesteps.len())?;
        let sample = f32_like(sample);
        // 1. denoised estimate at this sigma (no churn: sigma_hat == sigma)
        let sigma = self.steps.sigmas[i];
        let x0 = x0_from_sigma(self.prediction, model_output, &sample, sigma);
        // 2. one Euler step of dx/dsigma = (x - x0) / sigma to the next sigma
        let derivative = (&sample - x0) / sigma as f64;
        let dt = self.steps.sigmas[i + 1] - sigma;
        Ok((sample + derivative * dt as f64).to_kind(model_output.kind()))
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_index(NAME, step_index, self.steps.timesteps.len())?;
        Ok(sigmas::add_noise(
            original,
            noise,
            self.steps.sigmas[step_index],
        ))
    }
}
