//! Flow matching's schedule (SD3, SD3.5, FLUX): sigmas from 1 (noise) to 0
//! (data), shifted towards noise by `shift` or by the image's size (`mu`),
//! as diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps` computes
//! them: the endpoints from its float32 training table, the rest in numpy's
//! float64, rounded to float32 at the end. The model predicts a velocity
//! `v = noise - data`, so a sample at sigma is `sigma * noise + (1 - sigma) * data`.

use tch::Tensor;

use crate::config::{SchedulerConfig, TimeShiftType};
use crate::error::{Result, SchedulerError};
use crate::numpy::linspace;
use crate::schedule::{exponential_sigmas, karras_sigmas, leading, scalar_like};

/// How a flow-matching run's sigmas are made, from the config.
#[derive(Debug, Clone)]
pub(crate) struct FlowRecipe {
    num_train_timesteps: usize,
    shift: f64,
    dynamic: Option<DynamicShift>,
    shift_terminal: Option<f64>,
    spacing: SigmaSpacing,
    invert: bool,
    /// Sigmas given by the pipeline (FLUX's `linspace(1, 1/n, n)`), as
    /// diffusers holds them: rounded to float32.
    custom: Option<Vec<f32>>,
}

/// Resolution-dependent shifting: `mu` from the image's size in patches,
/// on the line through (base_seq_len, base_shift) and (max_seq_len, max_shift).
#[derive(Debug, Clone)]
struct DynamicShift {
    kind: TimeShiftType,
    base_shift: f64,
    max_shift: f64,
    base_seq_len: usize,
    max_seq_len: usize,
    /// Set by the pipeline (or a caller) before `set_timesteps`.
    mu: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SigmaSpacing {
    Linear,
    Karras,
    Exponential,
}

impl FlowRecipe {
    /// The recipe of `config`; options flow matching lacks, or that
    /// exclude each other, are errors naming the field.
    pub(crate) fn from_config(config: &SchedulerConfig) -> Result<Self> {
        let chosen = [
            ("use_karras_sigmas", config.use_karras_sigmas),
            ("use_exponential_sigmas", config.use_exponential_sigmas),
            ("use_beta_sigmas", config.use_beta_sigmas),
        ]
        .into_iter()
        .filter(|(_, on)| *on == Some(true))
        .map(|(name, _)| name)
        .collect::<Vec<_>>();
        let spacing = match chosen.as_slice() {
            [] => SigmaSpacing::Linear,
            ["use_karras_sigmas"] => SigmaSpacing::Karras,
            ["use_exponential_sigmas"] => SigmaSpacing::Exponential,
            ["use_beta_sigmas"] => {
                return Err(SchedulerError::config(
                    "use_beta_sigmas",
                    "beta-distribution sigmas are not implemented; use karras or exponential",
                ))
            }
            _ => {
                return Err(SchedulerError::config(
                    chosen[1],
                    format!("{} are alternatives: choose one", chosen.join(" and ")),
                ))
            }
        };
        let shift = config.shift.unwrap_or(1.0);
        if !(shift.is_finite() && shift > 0.0) {
            return Err(SchedulerError::config(
                "shift",
                format!("{shift}: a positive number"),
            ));
        }
        let dynamic = (config.use_dynamic_shifting == Some(true)).then(|| DynamicShift {
            kind: config.time_shift_type.unwrap_or(TimeShiftType::Exponential),
            base_shift: config.base_shift.unwrap_or(0.5),
            max_shift: config.max_shift.unwrap_or(1.15),
            base_seq_len: config.base_image_seq_len.unwrap_or(256),
            max_seq_len: config.max_image_seq_len.unwrap_or(4096),
            mu: None,
        });
        // (0 means none, as diffusers' falsy check reads it)
        let shift_terminal = config.shift_terminal.filter(|&t| t != 0.0);
        if let Some(terminal) = shift_terminal {
            if !(terminal > 0.0 && terminal < 1.0) {
                return Err(SchedulerError::config(
                    "shift_terminal",
                    format!("{terminal}: a sigma in (0, 1)"),
                ));
            }
        }
        Ok(FlowRecipe {
            num_train_timesteps: config.num_train_timesteps.unwrap_or(1000),
            shift,
            dynamic,
            shift_terminal,
            spacing,
            invert: config.invert_sigmas == Some(true),
            custom: None,
        })
    }

    /// Sigmas for the next run (diffusers' `set_timesteps(sigmas=...)`):
    /// shifted as the config says, in float32 as diffusers computes them
    /// from a given list.
    pub(crate) fn set_custom_sigmas(&mut self, sigmas: &[f64]) {
        self.custom = Some(sigmas.iter().map(|&s| s as f32).collect());
    }

    /// Sets dynamic shifting's `mu` (ignored without it).
    pub(crate) fn set_mu(&mut self, mu: f64) {
        if let Some(dynamic) = &mut self.dynamic {
            dynamic.mu = Some(mu);
        }
    }

    /// `mu` for an image of `seq_len` patches, as diffusers' SD3 and FLUX
    /// pipelines compute it (`calculate_shift`).
    pub(crate) fn set_image_seq_len(&mut self, seq_len: usize) {
        if let Some(d) = &mut self.dynamic {
            let m = (d.max_shift - d.base_shift) / (d.max_seq_len as f64 - d.base_seq_len as f64);
            let b = d.base_shift - m * d.base_seq_len as f64;
            d.mu = Some(seq_len as f64 * m + b);
        }
    }

    /// `shift * s / (1 + (shift - 1) * s)` on the float32 training table, as
    /// diffusers' constructor computes it: the table's first and last sigma.
    fn training_extremes(&self) -> (f64, f64) {
        let n = self.num_train_timesteps as f32;
        let shifted = |t: f32| {
            let s = t / n;
            match self.dynamic {
                Some(_) => s,
                None => {
                    let shift = self.shift as f32;
                    shift * s / (1.0 + (self.shift - 1.0) as f32 * s)
                }
            }
        };
        (shifted(n) as f64, shifted(1.0) as f64)
    }

    /// The run's timesteps and sigmas (with the final one appended) for
    /// `num_steps` steps.
    pub(crate) fn steps(&self, sampler: &'static str, num_steps: usize) -> Result<FlowSteps> {
        // (diffusers takes more steps than training timesteps here; so do we)
        crate::check_steps(sampler, num_steps, usize::MAX)?;
        if let Some(custom) = &self.custom {
            return self.custom_steps(sampler, custom, num_steps);
        }
        let n = self.num_train_timesteps as f64;
        let (sigma_max, sigma_min) = self.training_extremes();
        let mut sigmas: Vec<f64> = linspace(sigma_max * n, sigma_min * n, num_steps)
            .into_iter()
            .map(|t| t / n)
            .collect();
        match &self.dynamic {
            Some(d) => {
                let mu = d.mu.ok_or_else(|| {
                    SchedulerError::request(
                        sampler,
                        "use_dynamic_shifting needs mu (or the image size) before set_timesteps",
                    )
                })?;
                sigmas
                    .iter_mut()
                    .for_each(|s| *s = time_shift(d.kind, mu, *s));
            }
            None => {
                let shift = self.shift;
                sigmas
                    .iter_mut()
                    .for_each(|s| *s = shift * *s / (1.0 + (shift - 1.0) * *s));
            }
        }
        if let Some(terminal) = self.shift_terminal {
            let scale = (1.0 - sigmas[sigmas.len() - 1]) / (1.0 - terminal);
            sigmas
                .iter_mut()
                .for_each(|s| *s = 1.0 - (1.0 - *s) / scale);
        }
        let (first, last) = (sigmas[0], sigmas[sigmas.len() - 1]);
        sigmas = match self.spacing {
            SigmaSpacing::Linear => sigmas,
            SigmaSpacing::Karras => karras_sigmas(last, first, num_steps),
            SigmaSpacing::Exponential => exponential_sigmas(last, first, num_steps),
        };
        Ok(self.finish(sigmas.into_iter().map(|s| s as f32).collect()))
    }

    /// [`FlowRecipe::steps`] from sigmas the pipeline gave: diffusers holds
    /// them as a float32 array, so the shift is computed in float32 (its
    /// Python floats meet the array as float32 numbers).
    fn custom_steps(
        &self,
        sampler: &'static str,
        custom: &[f32],
        num_steps: usize,
    ) -> Result<FlowSteps> {
        if custom.len() != num_steps {
            let message = format!("{} custom sigmas for {num_steps} steps", custom.len());
            return Err(SchedulerError::request(sampler, message));
        }
        let mut sigmas = custom.to_vec();
        match &self.dynamic {
            Some(d) => {
                let mu = d.mu.ok_or_else(|| {
                    SchedulerError::request(
                        sampler,
                        "use_dynamic_shifting needs mu (or the image size)",
                    )
                })?;
                let (e, m) = (mu.exp() as f32, mu as f32);
                sigmas.iter_mut().for_each(|s| {
                    *s = match d.kind {
                        TimeShiftType::Exponential => e / (e + (1.0 / *s - 1.0)),
                        TimeShiftType::Linear => m / (m + (1.0 / *s - 1.0)),
                    }
                });
            }
            None => {
                let shift = self.shift as f32;
                let less = (self.shift - 1.0) as f32;
                sigmas
                    .iter_mut()
                    .for_each(|s| *s = shift * *s / (1.0 + less * *s));
            }
        }
        if let Some(terminal) = self.shift_terminal {
            let scale = (1.0 - sigmas[sigmas.len() - 1]) / (1.0 - terminal as f32);
            sigmas
                .iter_mut()
                .for_each(|s| *s = 1.0 - (1.0 - *s) / scale);
        }
        let (first, last) = (sigmas[0] as f64, sigmas[sigmas.len() - 1] as f64);
        let sigmas = match self.spacing {
            SigmaSpacing::Linear => sigmas,
            SigmaSpacing::Karras => to_f32(karras_sigmas(last, first, num_steps)),
            SigmaSpacing::Exponential => to_f32(exponential_sigmas(last, first, num_steps)),
        };
        Ok(self.finish(sigmas))
    }

    /// Inverted if asked, the timesteps from the sigmas, the final sigma.
    fn finish(&self, mut sigmas: Vec<f32>) -> FlowSteps {
        let train = self.num_train_timesteps as f32;
        if self.invert {
            sigmas.iter_mut().for_each(|s| *s = 1.0 - *s);
        }
        let timesteps = sigmas.iter().map(|&s| (s * train) as f64).collect();
        sigmas.push(if self.invert { 1.0 } else { 0.0 });
        FlowSteps { timesteps, sigmas }
    }
}

fn to_f32(values: Vec<f64>) -> Vec<f32> {
    values.into_iter().map(|v| v as f32).collect()
}

/// The sigmas diffusers' FLUX pipelines give the scheduler for `steps`
/// steps: numpy's `linspace(1.0, 1 / steps, steps)`.
pub fn flux_sigmas(steps: usize) -> Vec<f64> {
    linspace(1.0, 1.0 / steps.max(1) as f64, steps)
}

/// diffusers' `time_shift` with its `sigma` argument 1.
fn time_shift(kind: TimeShiftType, mu: f64, t: f64) -> f64 {
    match kind {
        TimeShiftType::Exponential => mu.exp() / (mu.exp() + (1.0 / t - 1.0)),
        TimeShiftType::Linear => mu / (mu + (1.0 / t - 1.0)),
    }
}

/// A prepared run: the model's timesteps and the sigmas, one more than the steps.
#[derive(Debug, Clone, Default)]
pub(crate) struct FlowSteps {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f32>,
}

/// `sigma * noise + (1 - sigma) * original`, the forward process (diffusers'
/// `scale_noise`). Euler's first casts its sigma table to the samples'
/// dtype (`cast_table`: in f16/bf16 `1 - sigma` is then computed there);
/// Heun's keeps sigma in f32, and each 0-d coefficient is rounded as it
/// meets the half-precision tensor.
pub(crate) fn scale_noise(
    original: &Tensor,
    noise: &Tensor,
    sigma: f32,
    cast_table: bool,
) -> Tensor {
    if cast_table {
        let sigma = scalar_like(sigma, original).to_device(original.device());
        let keep: Tensor = sigma.ones_like() - &sigma;
        return noise * &sigma + original * keep;
    }
    noise * leading(sigma, noise) + original * leading(1.0 - sigma, original)
}
