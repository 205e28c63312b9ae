//! Heun's second-order method (Karras et al. 2022, Algorithm 2):
//! diffusers' `HeunDiscreteScheduler`. Each step evaluates the model twice,
//! so the timestep list holds every evaluation: t0, t1, t1, t2, t2, ...

use tch::Tensor;

use crate::config::{PredictionType, SchedulerConfig};
use crate::error::Result;
use crate::prediction::x0_from_sigma;
use crate::schedule::NoiseSchedule;
use crate::sigmas::{self, SigmaRecipe, SigmaSteps};
use crate::{check_index, check_steps, NoiseSource, Scheduler};

const NAME: &str = "heun";

/// What the first evaluation of a step leaves for the second.
#[derive(Debug)]
struct FirstOrder {
    derivative: Tensor,
    dt: f32,
    sample: Tensor,
}

#[derive(Debug)]
pub struct Heun {
    schedule: NoiseSchedule,
    recipe: SigmaRecipe,
    prediction: PredictionType,
    clip_sample: Option<f64>,
    steps: SigmaSteps,
    pending: Option<FirstOrder>,
}

/// Repeats every entry but the first and the last twice (diffusers'
/// `repeat_interleave` layout for two-evaluation samplers).
pub(crate) fn interleave<T: Copy>(values: &[T], keep_last: bool) -> Vec<T> {
    let n = values.len();
    let mut out = vec![values[0]];
    let end = if keep_last { n - 1 } else { n };
    for &v in &values[1..end] {
        out.push(v);
        out.push(v);
    }
    if keep_last && n > 1 {
        out.push(values[n - 1]);
    }
    out
}

impl Heun {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        Ok(Heun {
            schedule: sigmas::noise_schedule(config, false)?,
            recipe: SigmaRecipe::from_config(config, true)?,
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
            clip_sample: config
                .clip_sample
                .unwrap_or(false)
                .then(|| config.clip_sample_range.unwrap_or(1.0)),
            steps: SigmaSteps::default(),
            pending: None,
        })
    }
}

impl Scheduler for Heun {
    fn name(&self) -> &'static str {
        NAME
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        check_steps(
            NAME,
            num_inference_steps,
            self.schedule.num_train_timesteps(),
        )?;
        let base = sigmas::sigma_steps(&self.schedule, num_inference_steps, &self.recipe);
        let timesteps: Vec<f64> = base.timesteps.iter().map(|&t| t as f32 as f64).collect();
        self.steps = SigmaSteps {
            timesteps: interleave(&timesteps, false),
            sigmas: interleave(&base.sigmas, true),
        };
        self.pending = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.steps.timesteps
    }

    fn order(&self) -> usize {
        2
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
        let first = self.pending.is_none();
        let (sigma, sigma_next) = if first {
            (self.steps.sigmas[i], self.steps.sigmas[i + 1])
        } else {
            (self.steps.sigmas[i - 1], self.steps.sigmas[i])
        };
        // 1. denoised estimate at the sigma this evaluation was made at
        let sigma_input = if first { sigma } else { sigma_next };
        let mut x0 = x0_from_sigma(self.prediction, model_output, sample, sigma_input);
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range);
        }
        match self.pending.take() {
            // 2a. first evaluation: an Euler step, remembered for the correction
            None => {
                let derivative = (sample - x0) / sigma as f64;
                let dt = sigma_next - sigma;
                let prev = sample + &derivative * dt as f64;
                self.pending = Some(FirstOrder {
                    derivative,
                    dt,
                    sample: sample.shallow_clone(),
                });
                Ok(prev)
            }
            // 2b. second evaluation: redo the step with the averaged slope
            Some(state) => {
                let derivative = (sample - x0) / sigma_next as f64;
                let derivative = (state.derivative + derivative) / 2.0;
                Ok(state.sample + derivative * state.dt as f64)
            }
        }
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
