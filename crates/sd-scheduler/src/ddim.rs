//! DDIM (Song et al. 2020): diffusers' `DDIMScheduler`.

use tch::Tensor;

use crate::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::error::{Result, SchedulerError};
use crate::prediction::x0_from_alpha;
use crate::schedule::{self, leading, sqrt32, NoiseSchedule};
use crate::{check_index, check_steps, draw_noise, sigmas, NoiseSource, Scheduler};

const NAME: &str = "ddim";

/// diffusers' `DDIMScheduler`.
#[derive(Debug)]
pub struct Ddim {
    schedule: NoiseSchedule,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: i64,
    clip_sample: Option<f64>,
    final_alpha: f32,
    /// 0 is deterministic DDIM; 1 adds DDPM-like noise each step.
    eta: f64,
    timesteps: Vec<f64>,
    /// The last step's clean-sample estimate, for previews.
    denoised: Option<Tensor>,
}

impl Ddim {
    /// The sampler configured from `config`; a value it cannot use is an error naming the field.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let schedule = sigmas::noise_schedule(config, true)?;
        let final_alpha = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Ok(Ddim {
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Leading),
            steps_offset: config.steps_offset.unwrap_or(0),
            clip_sample: config
                .clip_sample
                .unwrap_or(true)
                .then(|| config.clip_sample_range.unwrap_or(1.0)),
            final_alpha,
            schedule,
            eta: 0.0,
            timesteps: Vec::new(),
            denoised: None,
        })
    }

    /// DDIM's eta (a step argument in diffusers): 0 deterministic, 1 stochastic.
    pub fn with_eta(mut self, eta: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&eta) {
            return Err(SchedulerError::request(
                NAME,
                format!("eta {eta} is outside [0, 1]"),
            ));
        }
        self.eta = eta;
        Ok(self)
    }

    fn previous_timestep(&self, t: i64) -> i64 {
        let n = self.timesteps.len() as i64;
        t - self.schedule.num_train_timesteps() as i64 / n
    }
}

impl Scheduler for Ddim {
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

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
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
        check_index(NAME, i, self.timesteps.len())?;
        // 1. alphas at t and at the previous (less noisy) timestep
        let t = self.timesteps[i] as i64;
        let prev_t = self.previous_timestep(t);
        let alpha_prod = self.schedule.alpha_prod(t, self.final_alpha);
        let alpha_prev = self.schedule.alpha_prod(prev_t, self.final_alpha);
        let beta_prod = 1.0 - alpha_prod;
        // 2. predicted x0 and the noise it implies
        let mut x0 = x0_from_alpha(self.prediction, model_output, sample, alpha_prod);
        // (coefficients first where diffusers writes them first: see `leading`)
        let eps = match self.prediction {
            PredictionType::Epsilon => model_output.shallow_clone(),
            PredictionType::Sample => {
                (sample - &x0 * leading(sqrt32(alpha_prod), &x0)) / sqrt32(beta_prod) as f64
            }
            PredictionType::VPrediction => {
                model_output * leading(sqrt32(alpha_prod), model_output)
                    + sample * leading(sqrt32(beta_prod), sample)
            }
        };
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range);
        }
        // 3. sigma_t = eta * sqrt(variance) (formula 16 of the paper)
        let variance = ((1.0 - alpha_prev) / beta_prod) * (1.0 - alpha_prod / alpha_prev);
        let std_dev = (self.eta as f32) * sqrt32(variance);
        // 4. x_{t-1} = sqrt(alpha_prev) x0 + direction pointing to x_t (+ noise)
        let direction = &eps * leading(sqrt32(1.0 - alpha_prev - std_dev * std_dev), &eps);
        let prev = &x0 * leading(sqrt32(alpha_prev), &x0) + direction;
        self.denoised = Some(x0);
        if self.eta > 0.0 {
            let fresh = draw_noise(noise, model_output)?;
            return Ok(prev + &fresh * leading(std_dev, &fresh));
        }
        Ok(prev)
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

/// `sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise` at training timestep `t`:
/// the forward process of the alpha-parameterised samplers.
pub(crate) fn alpha_add_noise(
    schedule: &NoiseSchedule,
    original: &Tensor,
    noise: &Tensor,
    t: f64,
) -> Tensor {
    // In the samples' dtype, as diffusers: alphas_cumprod cast first, then
    // alpha ** 0.5 and (1 - alpha) ** 0.5 computed in that precision.
    let alpha = schedule::scalar_like(schedule.alphas_cumprod[t as usize], original);
    let sqrt_alpha = alpha.sqrt().double_value(&[]);
    let sqrt_one_minus = (1f64 - &alpha).sqrt().double_value(&[]);
    original * sqrt_alpha + noise * sqrt_one_minus
}
