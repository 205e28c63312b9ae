//! Euler ancestral: an Euler step to a lower sigma, then fresh noise back up
//! to the next sigma. diffusers' `EulerAncestralDiscreteScheduler`.

use tch::Tensor;

use crate::config::{PredictionType, SchedulerConfig};
use crate::error::Result;
use crate::prediction::{require, x0_from_sigma};
use crate::schedule::NoiseSchedule;
use crate::sigmas::{self, SigmaRecipe, SigmaSteps};
use crate::{check_index, check_steps, draw_noise, f32_like, NoiseSource, Scheduler};

const NAME: &str = "euler-a";

#[derive(Debug)]
pub struct EulerAncestral {
    schedule: NoiseSchedule,
    recipe: SigmaRecipe,
    prediction: PredictionType,
    steps: SigmaSteps,
}

impl EulerAncestral {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let mut schedule = sigmas::noise_schedule(config, true)?;
        sigmas::clamp_terminal_alpha(&mut schedule, config);
        let prediction = config.prediction_type.unwrap_or(PredictionType::Epsilon);
        Ok(EulerAncestral {
            schedule,
            recipe: SigmaRecipe::from_config(config, false)?,
            prediction: require(
                NAME,
                prediction,
                &[PredictionType::Epsilon, PredictionType::VPrediction],
            )?,
            steps: SigmaSteps::default(),
        })
    }
}

impl Scheduler for EulerAncestral {
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
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_index(NAME, i, self.steps.timesteps.len())?;
        let (sigma, sigma_to) = (self.steps.sigmas[i], self.steps.sigmas[i + 1]);
        let sample = f32_like(sample);
        // 1. denoised estimate
        let x0 = x0_from_sigma(self.prediction, model_output, &sample, sigma);
        // 2. split the move to sigma_to into a deterministic part down to
        //    sigma_down and fresh noise of size sigma_up
        let sigma_up =
            (sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let derivative = (&sample - x0) / sigma as f64;
        let prev = sample + derivative * (sigma_down - sigma) as f64;
        let fresh = draw_noise(noise, model_output)?;
        Ok((prev + fresh * sigma_up as f64).to_kind(model_output.kind()))
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
