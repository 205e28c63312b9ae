//! DPM-Solver++ (Lu et al. 2022), multistep, first and second order, ODE
//! and SDE variants: diffusers' `DPMSolverMultistepScheduler`, which the
//! CLI names dpm++2m, dpm++2m-karras and dpm++2m-sde.

use tch::Tensor;

use crate::config::{
    AlgorithmType, BetaSchedule, FinalSigmasType, PredictionType, SchedulerConfig, SolverType,
    TimestepSpacing,
};
use crate::error::{Result, SchedulerError};
use crate::prediction::x0_from_alpha_sigma;
use crate::schedule::{self, exp32, leading, ln32, NoiseSchedule};
use crate::{check_index, check_steps, draw_noise, f32_like, sigmas, NoiseSource, Scheduler};

/// diffusers' `DPMSolverMultistepScheduler` (DPM++ 2M, its Karras and SDE forms).
#[derive(Debug)]
pub struct DpmSolverMultistep {
    name: &'static str,
    schedule: NoiseSchedule,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: i64,
    sde: bool,
    heun: bool,
    solver_order: usize,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma: FinalSigmasType,
    karras: bool,
    exponential: bool,
    round_karras_timesteps: bool,
    lambda_min_clipped: f64,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    /// Converted (x0) model outputs of the last `solver_order` steps, newest last.
    outputs: Vec<Tensor>,
    lower_order_nums: usize,
}

/// alpha_t and sigma_t of the VP form from a VE sigma.
pub(crate) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / schedule::sqrt32(sigma * sigma + 1.0);
    (alpha, sigma * alpha)
}

/// `original` noised to `sigma` as diffusers' DPM-Solver and UniPC
/// `add_noise` do: alpha_t and sigma_t computed in the samples' dtype (their
/// sigmas are cast to it first).
pub(crate) fn alpha_sigma_add_noise(original: &Tensor, noise: &Tensor, sigma: f32) -> Tensor {
    let sigma = schedule::scalar_like(sigma, original);
    let alpha_t = (&sigma * &sigma + 1.0).sqrt().reciprocal();
    let sigma_t = &sigma * &alpha_t;
    original * alpha_t.double_value(&[]) + noise * sigma_t.double_value(&[])
}

/// The half-log-SNR lambda = log(alpha) - log(sigma).
pub(crate) fn lambda(alpha: f32, sigma: f32) -> f32 {
    ln32(alpha) - ln32(sigma)
}

impl DpmSolverMultistep {
    /// The sampler configured from `config`, reporting errors as `name`; a value it cannot use is an error naming the field.
    pub fn new(config: &SchedulerConfig, name: &'static str) -> Result<Self> {
        let sde = match config
            .algorithm_type
            .unwrap_or(AlgorithmType::DpmSolverPlusPlus)
        {
            AlgorithmType::DpmSolverPlusPlus | AlgorithmType::Deis => false,
            AlgorithmType::SdeDpmSolverPlusPlus => true,
            other => {
                return Err(SchedulerError::config(
                    "algorithm_type",
                    format!("{other:?} is not implemented (dpmsolver++ and sde-dpmsolver++ are)"),
                ))
            }
        };
        let heun = config.solver_type == Some(SolverType::Heun);
        let solver_order = config.solver_order.unwrap_or(2);
        if !(1..=2).contains(&solver_order) {
            return Err(SchedulerError::config(
                "solver_order",
                format!("{solver_order}: orders 1 and 2 are implemented"),
            ));
        }
        let karras = config.use_karras_sigmas == Some(true);
        let exponential = config.use_exponential_sigmas == Some(true);
        if karras && exponential {
            return Err(SchedulerError::config(
                "use_karras_sigmas",
                "only one of Karras and exponential sigmas",
            ));
        }
        if config.use_lu_lambdas == Some(true) || config.use_beta_sigmas == Some(true) {
            return Err(SchedulerError::config(
                "use_lu_lambdas",
                "Lu lambdas and beta sigmas are not implemented",
            ));
        }
        let mut schedule = sigmas::noise_schedule(config, true)?;
        sigmas::clamp_terminal_alpha(&mut schedule, config);
        Ok(DpmSolverMultistep {
            name,
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            steps_offset: config.steps_offset.unwrap_or(0),
            sde,
            heun,
            solver_order,
            lower_order_final: config.lower_order_final.unwrap_or(true),
            euler_at_final: config.euler_at_final.unwrap_or(false),
            final_sigma: config.final_sigmas_type.unwrap_or(FinalSigmasType::Zero),
            karras,
            exponential,
            round_karras_timesteps: config.beta_schedule != Some(BetaSchedule::SquaredcosCapV2),
            lambda_min_clipped: config.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
            schedule,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            outputs: Vec::new(),
            lower_order_nums: 0,
        })
    }

    /// The last usable training timestep + 1, after `lambda_min_clipped`.
    fn last_timestep(&self) -> usize {
        let n = self.schedule.num_train_timesteps();
        if self.lambda_min_clipped == f64::NEG_INFINITY {
            return n;
        }
        let clipped = self
            .schedule
            .alphas_cumprod
            .iter()
            .rev()
            .filter(|&&a| {
                (lambda(schedule::sqrt32(a), schedule::sqrt32(1.0 - a)) as f64)
                    < self.lambda_min_clipped
            })
            .count();
        n - clipped
    }
}

impl Scheduler for DpmSolverMultistep {
    fn name(&self) -> &'static str {
        self.name
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        let num_train = self.schedule.num_train_timesteps();
        check_steps(self.name, steps, num_train)?;
        let last = self.last_timestep() as f64;
        let timesteps =
            schedule::multistep_timesteps(self.spacing, last, num_train, steps, self.steps_offset);
        let training = self.schedule.training_sigmas();
        let log_sigmas = self.schedule.log_sigmas();
        let (mut sigmas, timesteps) = if self.karras || self.exponential {
            let (min, max) = (training[0] as f64, training[num_train - 1] as f64);
            schedule::resampled_sigmas(
                self.karras,
                min,
                max,
                steps,
                &log_sigmas,
                self.round_karras_timesteps,
            )
        } else {
            let sigmas = timesteps
                .iter()
                .map(|&t| schedule::interp(t, &training))
                .collect();
            (sigmas, timesteps)
        };
        sigmas.push(match self.final_sigma {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => training[0] as f64,
        });
        // diffusers stores the timesteps as int64.
        self.timesteps = timesteps.into_iter().map(f64::trunc).collect();
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        self.outputs.clear();
        self.lower_order_nums = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn denoised(&self) -> Option<&Tensor> {
        self.outputs.last()
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let len = self.timesteps.len();
        check_index(self.name, i, len)?;
        // 1. which order this step may use (lower near the end of short runs)
        let lower_final = i == len - 1
            && (self.euler_at_final
                || (self.lower_order_final && len < 15)
                || self.final_sigma == FinalSigmasType::Zero);
        // 2. remember the data prediction
        let (alpha_i, sigma_i) = alpha_sigma(self.sigmas[i]);
        let x0 = x0_from_alpha_sigma(self.prediction, model_output, sample, alpha_i, sigma_i);
        self.outputs.push(x0);
        if self.outputs.len() > self.solver_order {
            drop(self.outputs.remove(0));
        }
        let sample = f32_like(sample);
        let noise = if self.sde {
            Some(draw_noise(noise, &sample)?)
        } else {
            None
        };
        // 3. the update, in alpha/sigma/lambda of this and the next sigma
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
        let m0 = &self.outputs[self.outputs.len() - 1];
        let first_order = self.solver_order == 1 || self.lower_order_nums < 1 || lower_final;
        let d1 = if first_order {
            None
        } else {
            let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
            let h0 = lambda(alpha_s0, sigma_s0) - lambda(alpha_s1, sigma_s1);
            let r0 = h0 / h;
            let difference = m0 - &self.outputs[self.outputs.len() - 2];
            Some(&difference * leading(1.0 / r0, &difference))
        };
        // Every coefficient leads its product in diffusers (see `leading`):
        // in half precision it is rounded before multiplying the stored x0s.
        let prev = if let Some(noise) = noise {
            let decay = 1.0 - exp32(-2.0 * h);
            let mut x = &sample * leading(sigma_t / sigma_s0 * exp32(-h), &sample)
                + m0 * leading(alpha_t * decay, m0);
            if let Some(d1) = d1 {
                let c = if self.heun {
                    alpha_t * (decay / (-2.0 * h) + 1.0)
                } else {
                    0.5 * (alpha_t * decay)
                };
                x += &d1 * leading(c, &d1);
            }
            x + &noise * leading(sigma_t * schedule::sqrt32(decay), &noise)
        } else {
            let phi = alpha_t * (exp32(-h) - 1.0);
            let mut x = &sample * leading(sigma_t / sigma_s0, &sample) - m0 * leading(phi, m0);
            if let Some(d1) = d1 {
                x = if self.heun {
                    x + &d1 * leading(alpha_t * ((exp32(-h) - 1.0) / h + 1.0), &d1)
                } else {
                    x - &d1 * leading(0.5 * phi, &d1)
                };
            }
            x
        };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        Ok(prev.to_kind(model_output.kind()))
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_index(self.name, step_index, self.timesteps.len())?;
        Ok(alpha_sigma_add_noise(
            original,
            noise,
            self.sigmas[step_index],
        ))
    }
}
