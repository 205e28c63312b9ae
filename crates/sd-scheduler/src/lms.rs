//! Linear multistep (Karras et al. 2022): diffusers' `LMSDiscreteScheduler`.
//! The coefficients integrate the Lagrange basis over each sigma interval.
//! diffusers integrates with scipy's `quad` (QUADPACK's QAGS), whose first
//! 21-point Gauss-Kronrod rule is already within its tolerance for these
//! cubics, and evaluates the basis on f32 torch tensors; both are mirrored
//! here so the coefficients are the same f64 numbers.

use tch::Tensor;

use crate::config::{PredictionType, SchedulerConfig};
use crate::error::Result;
use crate::prediction::x0_from_sigma;
use crate::sigmas::{self, sigma_scheduler_methods, SigmaCore, SigmaRecipe};
use crate::{NoiseSource, Scheduler};

const NAME: &str = "lms";
const ORDER: usize = 4;

/// diffusers' `LMSDiscreteScheduler`.
#[derive(Debug)]
pub struct Lms {
    core: SigmaCore,
    prediction: PredictionType,
    /// Up to ORDER past derivatives, newest last.
    derivatives: Vec<Tensor>,
}

impl Lms {
    /// The sampler configured from `config`; a value it cannot use is an error naming the field.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        Ok(Lms {
            core: SigmaCore::new(
                sigmas::noise_schedule(config, false)?,
                SigmaRecipe::from_config(config, true)?,
            ),
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
            derivatives: Vec::new(),
        })
    }

    /// Integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial
    /// of `current` among the last `order` sigmas.
    fn coefficient(&self, order: usize, i: usize, current: usize) -> f64 {
        let sigmas = &self.core.steps.sigmas;
        // diffusers' `lms_derivative(tau)`: `prod *= (tau - s_k) / (s_cur - s_k)`
        // with the sigmas 0-d f32 tensors, so every operation is f32
        let basis = |tau: f64| {
            let tau = tau as f32;
            (0..order).filter(|&k| k != current).fold(1f32, |prod, k| {
                prod * ((tau - sigmas[i - k]) / (sigmas[i - current] - sigmas[i - k]))
            }) as f64
        };
        gauss_kronrod_21(basis, sigmas[i] as f64, sigmas[i + 1] as f64)
    }
}

/// QUADPACK's `qk21` (what scipy's `quad` returns when its first estimate
/// meets the tolerance): the 21-point Kronrod sum in QUADPACK's order of
/// summation, times the half-length.
fn gauss_kronrod_21(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    // abscissae of the Kronrod rule (the odd ones are the 10-point Gauss
    // nodes) and its weights; the last of each is the centre
    const XGK: [f64; 11] = [
        0.9956571630258081,
        0.9739065285171717,
        0.9301574913557082,
        0.8650633666889845,
        0.7808177265864169,
        0.6794095682990244,
        0.5627571346686047,
        0.4333953941292472,
        0.2943928627014602,
        0.14887433898163122,
        0.0,
    ];
    const WGK: [f64; 11] = [
        0.011694638867371874,
        0.032558162307964725,
        0.054755896574351995,
        0.07503967481091996,
        0.0931254545836976,
        0.10938715880229764,
        0.12349197626206584,
        0.13470921731147334,
        0.14277593857706009,
        0.14773910490133849,
        0.1494455540029169,
    ];
    let centre = 0.5 * (a + b);
    let half = 0.5 * (b - a);
    let mut kronrod = WGK[10] * f(centre);
    // the Gauss nodes first (odd indices), then the Kronrod-only ones
    for j in (1..10).step_by(2).chain((0..10).step_by(2)) {
        let offset = half * XGK[j];
        kronrod += WGK[j] * (f(centre - offset) + f(centre + offset));
    }
    kronrod * half
}

impl Scheduler for Lms {
    fn name(&self) -> &'static str {
        NAME
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.core.prepare(NAME, num_inference_steps)?;
        self.derivatives.clear();
        Ok(())
    }

    sigma_scheduler_methods!();

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let sigma = self.core.sigma(NAME, i)?;
        // 1. derivative dx/dsigma from the denoised estimate
        let x0 = x0_from_sigma(self.prediction, model_output, sample, sigma);
        self.derivatives.push((sample - x0) / sigma as f64);
        if self.derivatives.len() > ORDER {
            drop(self.derivatives.remove(0));
        }
        // 2. x + sum_k c_k * d_{i-k}, newest derivative first, summed
        //    before adding to x (the order diffusers' sum() adds in)
        let order = (i + 1).min(ORDER);
        let mut total: Option<Tensor> = None;
        for (current, derivative) in self.derivatives.iter().rev().enumerate().take(order) {
            let term = derivative * self.coefficient(order, i, current);
            total = Some(match total {
                Some(sum) => sum + term,
                None => term,
            });
        }
        Ok(match total {
            Some(total) => sample + total,
            None => sample.shallow_clone(),
        })
    }
}
