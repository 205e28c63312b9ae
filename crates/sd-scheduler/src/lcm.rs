//! Latent Consistency Model multistep sampling (Luo et al. 2023):
//! diffusers' `LCMScheduler`. Each step jumps to a denoised estimate and
//! re-noises it to the next timestep, drawing fresh noise.

use tch::Tensor;

use crate::config::{BetaSchedule, PredictionType, SchedulerConfig};
use crate::ddim::alpha_add_noise;
use crate::error::{Result, SchedulerError};
use crate::prediction::x0_from_alpha;
use crate::schedule::{leading, sqrt32, NoiseSchedule};
use crate::{check_index, check_steps, draw_noise, sigmas, NoiseSource, Scheduler};

const NAME: &str = "lcm";

/// diffusers' `LCMScheduler`.
#[derive(Debug)]
pub struct Lcm {
    schedule: NoiseSchedule,
    prediction: PredictionType,
    original_inference_steps: usize,
    timestep_scaling: f64,
    clip_sample: Option<f64>,
    final_alpha: f32,
    timesteps: Vec<f64>,
    /// The last step's clean-sample estimate, for previews.
    denoised: Option<Tensor>,
}

impl Lcm {
    /// The sampler configured from `config`; a value it cannot use is an error naming the field.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let schedule = sigmas::noise_schedule_with(
            config,
            true,
            (0.00085, 0.012, BetaSchedule::ScaledLinear),
        )?;
        let original_inference_steps = config.original_inference_steps.unwrap_or(50);
        if original_inference_steps == 0
            || original_inference_steps > schedule.num_train_timesteps()
        {
            return Err(SchedulerError::config(
                "original_inference_steps",
                format!(
                    "{original_inference_steps} is outside 1..={}",
                    schedule.num_train_timesteps()
                ),
            ));
        }
        let final_alpha = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Ok(Lcm {
            schedule,
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
            original_inference_steps,
            timestep_scaling: config.timestep_scaling.unwrap_or(10.0),
            clip_sample: config
                .clip_sample
                .unwrap_or(false)
                .then(|| config.clip_sample_range.unwrap_or(1.0)),
            final_alpha,
            timesteps: Vec::new(),
            denoised: None,
        })
    }

    /// Consistency-model boundary scalings c_skip and c_out at timestep t.
    fn scalings(&self, t: i64) -> (f32, f32) {
        let sigma_data = 0.5f32;
        let scaled = (t as f64 * self.timestep_scaling) as f32;
        let c_skip = sigma_data * sigma_data / (scaled * scaled + sigma_data * sigma_data);
        let c_out = scaled / sqrt32(scaled * scaled + sigma_data * sigma_data);
        (c_skip, c_out)
    }
}

impl Scheduler for Lcm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        let num_train = self.schedule.num_train_timesteps();
        check_steps(NAME, steps, num_train)?;
        let original = self.original_inference_steps;
        if steps > original {
            return Err(SchedulerError::request(
                NAME,
                format!("{steps} steps is more than original_inference_steps ({original})"),
            ));
        }
        // The distillation schedule k-1, 2k-1, ..., then `steps` of them evenly picked, descending.
        let k = num_train / original;
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        self.timesteps = crate::schedule::linspace(0.0, original as f64, steps + 1)[..steps]
            .iter()
            .map(|&index| origin[index.floor() as usize] as f64)
            .collect();
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
        // 1. alphas at t and at the next timestep of the schedule
        let t = self.timesteps[i] as i64;
        let prev_t = self.timesteps.get(i + 1).map_or(t, |&p| p as i64);
        let alpha_prod = self.schedule.alpha_prod(t, self.final_alpha);
        let alpha_prev = self.schedule.alpha_prod(prev_t, self.final_alpha);
        // 2. the consistency function's denoised estimate
        let (c_skip, c_out) = self.scalings(t);
        let mut x0 = x0_from_alpha(self.prediction, model_output, sample, alpha_prod);
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range);
        }
        // (coefficients lead, as diffusers writes them: see `leading`)
        let denoised = &x0 * leading(c_out, &x0) + sample * leading(c_skip, sample);
        self.denoised = Some(denoised.shallow_clone());
        // 3. re-noise to the next timestep, except after the last step
        if i + 1 == self.timesteps.len() {
            return Ok(denoised);
        }
        let fresh = draw_noise(noise, &denoised)?;
        Ok(&denoised * leading(sqrt32(alpha_prev), &denoised)
            + &fresh * leading(sqrt32(1.0 - alpha_prev), &fresh))
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
