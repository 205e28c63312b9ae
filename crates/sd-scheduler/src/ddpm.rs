//! DDPM (Ho et al. 2020) ancestral sampling: diffusers' `DDPMScheduler`
//! with the fixed variances (`fixed_small`, `fixed_small_log`, `fixed_large`).

use tch::Tensor;

use crate::config::{PredictionType, SchedulerConfig, TimestepSpacing, VarianceType};
use crate::ddim::alpha_add_noise;
use crate::error::{Result, SchedulerError};
use crate::prediction::x0_from_alpha;
use crate::schedule::{self, leading, NoiseSchedule};
use crate::{check_index, check_steps, draw_noise, sigmas, NoiseSource, Scheduler};

const NAME: &str = "ddpm";

/// diffusers' `DDPMScheduler`.
#[derive(Debug)]
pub struct Ddpm {
    schedule: NoiseSchedule,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: i64,
    clip_sample: Option<f64>,
    variance_type: VarianceType,
    timesteps: Vec<f64>,
}

impl Ddpm {
    /// The sampler configured from `config`; a value it cannot use is an error naming the field.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let variance_type = config.variance_type.unwrap_or(VarianceType::FixedSmall);
        if matches!(
            variance_type,
            VarianceType::Learned | VarianceType::LearnedRange | VarianceType::FixedLargeLog
        ) {
            return Err(SchedulerError::config(
                "variance_type",
                format!("{variance_type:?} is not implemented (fixed_small, fixed_small_log and fixed_large are)"),
            ));
        }
        Ok(Ddpm {
            schedule: sigmas::noise_schedule(config, true)?,
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Leading),
            steps_offset: config.steps_offset.unwrap_or(0),
            clip_sample: config
                .clip_sample
                .unwrap_or(true)
                .then(|| config.clip_sample_range.unwrap_or(1.0)),
            variance_type,
            timesteps: Vec::new(),
        })
    }
}

impl Scheduler for Ddpm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let num_train = self.schedule.num_train_timesteps();
        check_steps(NAME, num_inference_steps, num_train)?;
        self.timesteps = schedule::spaced_timesteps(
            self.spacing,
            num_train,
            num_inference_steps,
            self.steps_offset,
            true,
        );
        Ok(())
    }

    fn set_custom_timesteps(&mut self, timesteps: &[f64]) -> Result<()> {
        self.timesteps =
            checked_custom_timesteps(NAME, timesteps, self.schedule.num_train_timesteps())?;
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
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_index(NAME, i, self.timesteps.len())?;
        // 1. alphas and betas at t and at the next timestep of the schedule
        let t = self.timesteps[i] as i64;
        let prev_t = self.timesteps.get(i + 1).map_or(-1, |&p| p as i64);
        let alpha_prod = self.schedule.alpha_prod(t, 1.0);
        let alpha_prev = self.schedule.alpha_prod(prev_t, 1.0);
        let (beta_prod, beta_prev) = (1.0 - alpha_prod, 1.0 - alpha_prev);
        let current_alpha = alpha_prod / alpha_prev;
        let current_beta = 1.0 - current_alpha;
        // 2. predicted x0, clipped if configured
        let mut x0 = x0_from_alpha(self.prediction, model_output, sample, alpha_prod);
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range);
        }
        // 3. mean of q(x_{t-1} | x_t, x0) (formula 7 of the paper)
        let x0_coeff = (schedule::sqrt32(alpha_prev) * current_beta) / beta_prod;
        let sample_coeff = schedule::sqrt32(current_alpha) * beta_prev / beta_prod;
        // (coefficients lead, as diffusers writes them: see `leading`)
        let mean = &x0 * leading(x0_coeff, &x0) + sample * leading(sample_coeff, sample);
        if t <= 0 {
            return Ok(mean);
        }
        // 4. plus noise of the chosen variance
        let variance = ((1.0 - alpha_prev) / (1.0 - alpha_prod) * current_beta).max(1e-20);
        let scale = match self.variance_type {
            VarianceType::FixedSmall => schedule::sqrt32(variance),
            VarianceType::FixedSmallLog => schedule::exp32(0.5 * schedule::ln32(variance)),
            VarianceType::FixedLarge => schedule::sqrt32(current_beta),
            _ => unreachable!("rejected in Ddpm::new"),
        };
        let fresh = draw_noise(noise, model_output)?;
        Ok(mean + &fresh * leading(scale, &fresh))
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

/// A custom timestep list: strictly descending, within the training range.
pub(crate) fn checked_custom_timesteps(
    sampler: &'static str,
    timesteps: &[f64],
    num_train: usize,
) -> Result<Vec<f64>> {
    if timesteps.is_empty() {
        return Err(SchedulerError::request(
            sampler,
            "the custom timestep list is empty",
        ));
    }
    if let Some(pair) = timesteps.windows(2).find(|w| w[1] >= w[0]) {
        return Err(SchedulerError::request(
            sampler,
            format!(
                "custom timesteps must be strictly descending, but {} is followed by {}",
                pair[0], pair[1]
            ),
        ));
    }
    if timesteps[0] >= num_train as f64 || timesteps[timesteps.len() - 1] < 0.0 {
        return Err(SchedulerError::request(
            sampler,
            format!("custom timesteps must lie in [0, {num_train})"),
        ));
    }
    Ok(timesteps.to_vec())
}
