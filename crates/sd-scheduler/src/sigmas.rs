//! What the sigma-parameterised samplers share (Euler, Euler ancestral,
//! LMS, Heun, KDPM2): resolving the common config keys, the inference
//! sigmas and timesteps, input scaling and the forward process.

use tch::Tensor;

use crate::config::{
    BetaSchedule, FinalSigmasType, InterpolationType, SchedulerConfig, TimestepSpacing,
};
use crate::error::{Result, SchedulerError};
use crate::schedule::{self, BetaConfig, NoiseSchedule};

/// The training schedule from the keys every sampler reads, with diffusers'
/// class defaults (linear 0.0001..0.02) where a key is absent.
pub fn noise_schedule(config: &SchedulerConfig, zero_snr_supported: bool) -> Result<NoiseSchedule> {
    noise_schedule_with(
        config,
        zero_snr_supported,
        (0.0001, 0.02, BetaSchedule::Linear),
    )
}

/// [`noise_schedule`] with other defaults for beta_start, beta_end and the schedule.
pub fn noise_schedule_with(
    config: &SchedulerConfig,
    zero_snr_supported: bool,
    (start, end, kind): (f64, f64, BetaSchedule),
) -> Result<NoiseSchedule> {
    if config.thresholding == Some(true) {
        return Err(SchedulerError::config(
            "thresholding",
            "dynamic thresholding is not implemented",
        ));
    }
    NoiseSchedule::new(&BetaConfig {
        num_train_timesteps: config.num_train_timesteps.unwrap_or(1000),
        beta_start: config.beta_start.unwrap_or(start),
        beta_end: config.beta_end.unwrap_or(end),
        beta_schedule: config.beta_schedule.unwrap_or(kind),
        trained_betas: config.trained_betas.clone(),
        rescale_betas_zero_snr: zero_snr_supported && config.rescale_betas_zero_snr == Some(true),
    })
}

/// Zero-SNR schedules end at alpha-bar 0, an infinite sigma; these samplers
/// clamp it to 2^-24 as diffusers does.
pub fn clamp_terminal_alpha(schedule: &mut NoiseSchedule, config: &SchedulerConfig) {
    if config.rescale_betas_zero_snr == Some(true) {
        if let Some(last) = schedule.alphas_cumprod.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
}

/// How a sigma sampler derives its inference sigmas.
#[derive(Debug, Clone)]
pub struct SigmaRecipe {
    pub spacing: TimestepSpacing,
    pub steps_offset: i64,
    pub interpolation: InterpolationType,
    pub karras: bool,
    pub exponential: bool,
    /// KDPM2 rounds the timesteps it derives from Karras sigmas.
    pub round_karras_timesteps: bool,
    /// Timesteps derived from Karras/exponential sigmas are cast to f32
    /// (Euler, LMS, Heun); KDPM2 keeps numpy's f64.
    pub f32_timesteps: bool,
    pub final_sigma: FinalSigmasType,
    /// Config overrides of the Karras/exponential range (Euler only).
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
}

impl SigmaRecipe {
    /// The keys the sigma samplers read, with their defaults (linspace spacing).
    pub fn from_config(config: &SchedulerConfig, karras_supported: bool) -> Result<Self> {
        let karras = karras_supported && config.use_karras_sigmas == Some(true);
        let exponential = karras_supported && config.use_exponential_sigmas == Some(true);
        if karras && exponential {
            return Err(SchedulerError::config(
                "use_karras_sigmas",
                "only one of use_karras_sigmas and use_exponential_sigmas can be set",
            ));
        }
        if karras_supported && config.use_beta_sigmas == Some(true) {
            return Err(SchedulerError::config(
                "use_beta_sigmas",
                "beta sigmas are not implemented",
            ));
        }
        Ok(SigmaRecipe {
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            steps_offset: config.steps_offset.unwrap_or(0),
            interpolation: InterpolationType::Linear,
            karras,
            exponential,
            round_karras_timesteps: false,
            f32_timesteps: true,
            final_sigma: FinalSigmasType::Zero,
            sigma_min: None,
            sigma_max: None,
        })
    }
}

/// Inference timesteps (one per step) and sigmas (one more, the final one).
#[derive(Debug, Clone, Default)]
pub struct SigmaSteps {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f32>,
}

pub fn sigma_steps(schedule: &NoiseSchedule, num_steps: usize, recipe: &SigmaRecipe) -> SigmaSteps {
    let num_train = schedule.num_train_timesteps();
    let mut timesteps: Vec<f64> = schedule::spaced_timesteps(
        recipe.spacing,
        num_train,
        num_steps,
        recipe.steps_offset,
        false,
    )
    .into_iter()
    .map(|t| t as f32 as f64)
    .collect();
    let training = schedule.training_sigmas();
    let log_sigmas = schedule.log_sigmas();
    let mut sigmas: Vec<f64> = match recipe.interpolation {
        InterpolationType::Linear => timesteps
            .iter()
            .map(|&t| schedule::interp(t, &training))
            .collect(),
        InterpolationType::LogLinear => {
            let (lo, hi) = (log_sigmas[num_train - 1] as f64, log_sigmas[0] as f64);
            let line = Tensor::linspace(
                lo,
                hi,
                num_steps as i64 + 1,
                (tch::Kind::Float, tch::Device::Cpu),
            )
            .exp();
            Vec::<f32>::try_from(line)
                .expect("1-d f32")
                .into_iter()
                .map(f64::from)
                .collect()
        }
    };
    if recipe.karras || recipe.exponential {
        let sigma_min = recipe.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
        let sigma_max = recipe.sigma_max.unwrap_or(sigmas[0]);
        (sigmas, timesteps) = schedule::resampled_sigmas(
            recipe.karras,
            sigma_min,
            sigma_max,
            num_steps,
            &log_sigmas,
            recipe.round_karras_timesteps,
        );
        if recipe.f32_timesteps {
            timesteps.iter_mut().for_each(|t| *t = *t as f32 as f64);
        }
    }
    let last = match recipe.final_sigma {
        FinalSigmasType::Zero => 0.0,
        FinalSigmasType::SigmaMin => training[0] as f64,
    };
    sigmas.push(last);
    SigmaSteps {
        timesteps,
        sigmas: sigmas.into_iter().map(|s| s as f32).collect(),
    }
}

/// The initial noise scale: the largest sigma, or sqrt(max^2 + 1) with
/// leading spacing (diffusers' `init_noise_sigma`).
pub fn init_noise_sigma(sigmas: &[f32], spacing: TimestepSpacing) -> f64 {
    let max = sigmas.iter().copied().fold(f32::MIN, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
        TimestepSpacing::Leading => schedule::sqrt32(max * max + 1.0) as f64,
    }
}

/// `sample / sqrt(sigma^2 + 1)`: the model sees unit-variance input.
pub fn scale_input(sample: &Tensor, sigma: f32) -> Tensor {
    sample / schedule::sqrt32(sigma * sigma + 1.0) as f64
}

/// `original + noise * sigma`: the forward process in sigma form.
pub fn add_noise(original: &Tensor, noise: &Tensor, sigma: f32) -> Tensor {
    // diffusers casts its sigmas to the samples' dtype first
    original + noise * crate::schedule::leading(sigma, original)
}

/// The schedule, recipe and prepared steps of a sigma sampler.
#[derive(Debug)]
pub struct SigmaCore {
    pub schedule: NoiseSchedule,
    pub recipe: SigmaRecipe,
    pub steps: SigmaSteps,
    /// The last step's denoised estimate, for previews.
    pub denoised: Option<tch::Tensor>,
}

impl SigmaCore {
    pub fn new(schedule: NoiseSchedule, recipe: SigmaRecipe) -> Self {
        SigmaCore {
            schedule,
            recipe,
            steps: SigmaSteps::default(),
            denoised: None,
        }
    }

    /// Checks the step count and computes one sigma per step (plus the last).
    pub fn prepare(&mut self, sampler: &'static str, num_steps: usize) -> Result<()> {
        crate::check_steps(sampler, num_steps, self.schedule.num_train_timesteps())?;
        self.steps = sigma_steps(&self.schedule, num_steps, &self.recipe);
        self.denoised = None;
        Ok(())
    }

    /// The sigma at a checked step index.
    pub fn sigma(&self, sampler: &'static str, index: usize) -> Result<f32> {
        crate::check_index(sampler, index, self.steps.timesteps.len())?;
        Ok(self.steps.sigmas[index])
    }
}

/// The `Scheduler` methods every sigma sampler shares, delegated to its
/// `core: SigmaCore` field.
macro_rules! sigma_scheduler_methods {
    () => {
        fn timesteps(&self) -> &[f64] {
            &self.core.steps.timesteps
        }

        fn sigmas(&self) -> Option<&[f32]> {
            Some(&self.core.steps.sigmas)
        }

        fn denoised(&self) -> Option<&tch::Tensor> {
            self.core.denoised.as_ref()
        }

        fn init_noise_sigma(&self) -> f64 {
            crate::sigmas::init_noise_sigma(&self.core.steps.sigmas, self.core.recipe.spacing)
        }

        fn scale_model_input(&self, sample: &tch::Tensor, i: usize) -> crate::Result<tch::Tensor> {
            Ok(crate::sigmas::scale_input(
                sample,
                self.core.sigma(self.name(), i)?,
            ))
        }

        fn add_noise(
            &self,
            original: &tch::Tensor,
            noise: &tch::Tensor,
            i: usize,
        ) -> crate::Result<tch::Tensor> {
            Ok(crate::sigmas::add_noise(
                original,
                noise,
                self.core.sigma(self.name(), i)?,
            ))
        }
    };
}
pub(crate) use sigma_scheduler_methods;
