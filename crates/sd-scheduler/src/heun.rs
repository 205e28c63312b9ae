//! Heun's second-order method (Karras et al. 2022, Algorithm 2):
//! diffusers' `HeunDiscreteScheduler`. Each step evaluates the model twice,
//! so the timestep list holds every evaluation: t0, t1, t1, t2, t2, ...

use tch::Tensor;

use crate::config::{PredictionType, SchedulerConfig};
use crate::error::Result;
use crate::prediction::x0_from_sigma;
use crate::sigmas::{self, sigma_scheduler_methods, SigmaCore, SigmaRecipe, SigmaSteps};
use crate::{check_steps, NoiseSource, Scheduler};

const NAME: &str = "heun";

/// What the first evaluation of a step leaves for the second.
#[derive(Debug)]
struct FirstOrder {
    derivative: Tensor,
    dt: f32,
    sample: Tensor,
}

/// diffusers' `HeunDiscreteScheduler`.
#[derive(Debug)]
pub struct Heun {
    core: SigmaCore,
    prediction: PredictionType,
    clip_sample: Option<f64>,
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
    /// The sampler configured from `config`; a value it cannot use is an error naming the field.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        Ok(Heun {
            core: SigmaCore::new(
                sigmas::noise_schedule(config, false)?,
                SigmaRecipe::from_config(config, true)?,
            ),
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
            clip_sample: config
                .clip_sample
                .unwrap_or(false)
                .then(|| config.clip_sample_range.unwrap_or(1.0)),
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
            self.core.schedule.num_train_timesteps(),
        )?;
        let base = sigmas::sigma_steps(&self.core.schedule, num_inference_steps, &self.core.recipe);
        let timesteps: Vec<f64> = base.timesteps.iter().map(|&t| t as f32 as f64).collect();
        self.core.steps = SigmaSteps {
            timesteps: interleave(&timesteps, false),
            sigmas: interleave(&base.sigmas, true),
        };
        self.pending = None;
        Ok(())
    }

    fn order(&self) -> usize {
        2
    }

    sigma_scheduler_methods!();

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        self.core.sigma(NAME, i)?;
        let first = self.pending.is_none();
        let (sigma, sigma_next) = if first {
            (self.core.steps.sigmas[i], self.core.steps.sigmas[i + 1])
        } else {
            (self.core.steps.sigmas[i - 1], self.core.steps.sigmas[i])
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
}
