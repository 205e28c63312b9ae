//! PNDM's pseudo linear multistep half, PLMS (Liu et al. 2022):
//! diffusers' `PNDMScheduler` with `skip_prk_steps`, as SD configs set it.
//! The Runge-Kutta warm-up (`skip_prk_steps: false`) is not implemented.

use tch::Tensor;

use crate::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::ddim::alpha_add_noise;
use crate::error::{Result, SchedulerError};
use crate::prediction::require;
use crate::schedule::{self, leading, sqrt32, NoiseSchedule};
use crate::{check_index, check_steps, sigmas, NoiseSource, Scheduler};

const NAME: &str = "pndm";

/// diffusers' `PNDMScheduler` (PLMS steps).
#[derive(Debug)]
pub struct Pndm {
    schedule: NoiseSchedule,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: i64,
    final_alpha: f32,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
    /// Up to four past model outputs (newest last).
    ets: Vec<Tensor>,
    /// The sample the first, two-evaluation step started from.
    cur_sample: Option<Tensor>,
    counter: usize,
}

impl Pndm {
    /// The sampler configured from `config`; a value it cannot use is an error naming the field.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        if config.skip_prk_steps == Some(false) {
            return Err(SchedulerError::config(
                "skip_prk_steps",
                "false (the Runge-Kutta warm-up) is not implemented; PNDM runs as PLMS",
            ));
        }
        let schedule = sigmas::noise_schedule(config, false)?;
        let prediction = config.prediction_type.unwrap_or(PredictionType::Epsilon);
        let final_alpha = if config.set_alpha_to_one.unwrap_or(false) {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Ok(Pndm {
            schedule,
            prediction: require(
                NAME,
                prediction,
                &[PredictionType::Epsilon, PredictionType::VPrediction],
            )?,
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Leading),
            steps_offset: config.steps_offset.unwrap_or(0),
            final_alpha,
            num_inference_steps: 0,
            timesteps: Vec::new(),
            ets: Vec::new(),
            cur_sample: None,
            counter: 0,
        })
    }

    /// x_{t-1} from x_t and an epsilon estimate (formula 9 of the paper).
    fn prev_sample(&self, sample: &Tensor, t: i64, prev_t: i64, model_output: &Tensor) -> Tensor {
        let alpha_prod = self.schedule.alpha_prod(t, self.final_alpha);
        let alpha_prev = self.schedule.alpha_prod(prev_t, self.final_alpha);
        let (beta_prod, beta_prev) = (1.0 - alpha_prod, 1.0 - alpha_prev);
        // Coefficients lead where diffusers writes them first (see `leading`).
        let eps = match self.prediction {
            PredictionType::VPrediction => {
                model_output * leading(sqrt32(alpha_prod), model_output)
                    + sample * leading(sqrt32(beta_prod), sample)
            }
            _ => model_output.shallow_clone(),
        };
        let sample_coeff = sqrt32(alpha_prev / alpha_prod);
        let denom = alpha_prod * sqrt32(beta_prev) + sqrt32(alpha_prod * beta_prod * alpha_prev);
        sample * leading(sample_coeff, sample)
            - &eps * leading(alpha_prev - alpha_prod, &eps) / denom as f64
    }
}

impl Scheduler for Pndm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let num_train = self.schedule.num_train_timesteps();
        check_steps(NAME, num_inference_steps, num_train)?;
        // Ascending schedule, then the second-to-last entry doubled: the
        // first PLMS step evaluates the model twice around it.
        let mut ascending = schedule::spaced_timesteps(
            self.spacing,
            num_train,
            num_inference_steps,
            self.steps_offset,
            true,
        );
        ascending.reverse();
        let n = ascending.len();
        let mut plms: Vec<f64> = ascending[..n - 1].to_vec();
        if n >= 2 {
            plms.push(ascending[n - 2]);
        }
        plms.push(ascending[n - 1]);
        plms.reverse();
        self.timesteps = plms;
        self.num_inference_steps = num_inference_steps;
        self.ets.clear();
        self.cur_sample = None;
        self.counter = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_index(NAME, i, self.timesteps.len())?;
        let ratio = (self.schedule.num_train_timesteps() / self.num_inference_steps) as i64;
        let mut t = self.timesteps[i] as i64;
        let mut prev_t = t - ratio;
        // 1. the second evaluation of the first step lands back on its start
        if self.counter != 1 {
            if self.ets.len() > 3 {
                drop(self.ets.remove(0));
            }
            self.ets.push(model_output.shallow_clone());
        } else {
            prev_t = t;
            t += ratio;
        }
        // 2. linear multistep combination of the stored outputs
        let e = &self.ets;
        let n = e.len();
        let (eps, from) = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.shallow_clone());
            (model_output.shallow_clone(), sample.shallow_clone())
        } else if n == 1 && self.counter == 1 {
            let start = self
                .cur_sample
                .take()
                .unwrap_or_else(|| sample.shallow_clone());
            ((model_output + &e[0]) / 2.0, start)
        } else if n == 2 {
            ((&e[1] * 3.0 - &e[0]) / 2.0, sample.shallow_clone())
        } else if n == 3 {
            (
                (&e[2] * 23.0 - &e[1] * 16.0 + &e[0] * 5.0) / 12.0,
                sample.shallow_clone(),
            )
        } else {
            let sum = &e[3] * 55.0 - &e[2] * 59.0 + &e[1] * 37.0 - &e[0] * 9.0;
            (sum * (1.0 / 24.0), sample.shallow_clone())
        };
        self.counter += 1;
        Ok(self.prev_sample(&from, t, prev_t, &eps))
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_index(NAME, step_index, self.timesteps.len())?;
        Ok(alpha_add_noise(
            &self.schedule,
            original,
            noise,
            self.timesteps[step_index],
        ))
    }
}
