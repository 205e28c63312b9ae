//! Heun for flow matching: diffusers' `FlowMatchHeunDiscreteScheduler`.
//! Each step but the last evaluates the model twice (Euler to the next
//! sigma, then the average of both velocities); the timesteps list each
//! evaluation, so the usual loop drives it.

use tch::Tensor;

use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::flow::{scale_noise, FlowRecipe, FlowSteps};
use crate::{check_index, f32_like, NoiseSource, Scheduler};

const NAME: &str = "flow-heun";

/// diffusers' `FlowMatchHeunDiscreteScheduler` (no churn: `s_churn` 0).
#[derive(Debug)]
pub struct FlowMatchHeun {
    recipe: FlowRecipe,
    /// Each evaluation's timestep: t0, then t1, t1, t2, t2, ...
    timesteps: Vec<f64>,
    /// sigma0, then sigma1, sigma1, ..., then 0.
    sigmas: Vec<f32>,
    /// The first stage's derivative, step size and sample, until the second.
    pending: Option<(Tensor, f32, Tensor)>,
}

impl FlowMatchHeun {
    /// The sampler configured from `config`: `num_train_timesteps` and
    /// `shift`, all diffusers' Heun has; other flow options are refused.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        for (field, set) in [
            (
                "use_dynamic_shifting",
                config.use_dynamic_shifting == Some(true),
            ),
            ("invert_sigmas", config.invert_sigmas == Some(true)),
            (
                "stochastic_sampling",
                config.stochastic_sampling == Some(true),
            ),
            ("use_karras_sigmas", config.use_karras_sigmas == Some(true)),
            (
                "use_exponential_sigmas",
                config.use_exponential_sigmas == Some(true),
            ),
            ("use_beta_sigmas", config.use_beta_sigmas == Some(true)),
            (
                "shift_terminal",
                config.shift_terminal.is_some_and(|t| t != 0.0),
            ),
        ] {
            if set {
                return Err(SchedulerError::config(
                    field,
                    "diffusers' FlowMatchHeunDiscreteScheduler has no such option; use flow-euler",
                ));
            }
        }
        Ok(FlowMatchHeun {
            recipe: FlowRecipe::from_config(config)?,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            pending: None,
        })
    }
}

impl Scheduler for FlowMatchHeun {
    fn name(&self) -> &'static str {
        NAME
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let FlowSteps { timesteps, sigmas } = self.recipe.steps(NAME, num_inference_steps)?;
        let twice = |values: &[f64]| values.iter().flat_map(|&v| [v, v]).collect::<Vec<_>>();
        self.timesteps = [&timesteps[..1], &twice(&timesteps[1..])].concat();
        let inner: Vec<f32> = sigmas[1..sigmas.len() - 1]
            .iter()
            .flat_map(|&s| [s, s])
            .collect();
        self.sigmas = [&sigmas[..1], &inner, &sigmas[sigmas.len() - 1..]].concat();
        self.pending = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn order(&self) -> usize {
        2
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_index(NAME, i, self.timesteps.len())?;
        let sample = f32_like(sample);
        let prev = match self.pending.take() {
            None => {
                // first stage: Euler from sigma to the next
                let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
                let denoised = &sample - model_output * sigma as f64;
                let derivative = (&sample - denoised) / sigma as f64;
                let dt = next - sigma;
                let prev = &sample + &derivative * dt as f64;
                self.pending = Some((derivative, dt, sample));
                prev
            }
            Some((first, dt, start)) => {
                // second stage: the mean of both velocities, from the start
                let sigma = self.sigmas[i];
                let denoised = &sample - model_output * sigma as f64;
                let derivative = (&sample - denoised) / sigma as f64;
                let derivative = (first + derivative) * 0.5;
                start + derivative * dt as f64
            }
        };
        Ok(prev.to_kind(model_output.kind()))
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        check_index(NAME, i, self.timesteps.len())?;
        Ok(scale_noise(original, noise, self.sigmas[i], false))
    }
}
