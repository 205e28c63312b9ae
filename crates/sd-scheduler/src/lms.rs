//! Linear multistep (Karras et al. 2022): diffusers' `LMSDiscreteScheduler`.
//! The coefficients integrate the Lagrange basis over each sigma interval;
//! they are polynomials of degree < 4, so 4-point Gauss-Legendre is exact
//! (diffusers calls scipy's adaptive quadrature for the same integrals).

use tch::Tensor;

use crate::config::{PredictionType, SchedulerConfig};
use crate::error::Result;
use crate::prediction::x0_from_sigma;
use crate::sigmas::{self, sigma_scheduler_methods, SigmaCore, SigmaRecipe};
use crate::{NoiseSource, Scheduler};

const NAME: &str = "lms";
const ORDER: usize = 4;

#[derive(Debug)]
pub struct Lms {
    core: SigmaCore,
    prediction: PredictionType,
    /// Up to ORDER past derivatives, newest last.
    derivatives: Vec<Tensor>,
}

impl Lms {
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
        let s = |k: usize| sigmas[i - k] as f64;
        let basis = |tau: f64| {
            (0..order)
                .filter(|&k| k != current)
                .map(|k| (tau - s(k)) / (s(current) - s(k)))
                .product::<f64>()
        };
        gauss_legendre_4(basis, sigmas[i] as f64, sigmas[i + 1] as f64)
    }
}

fn gauss_legendre_4(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    const NODES: [f64; 2] = [0.339_981_043_584_856_3, 0.861_136_311_594_052_6];
    const WEIGHTS: [f64; 2] = [0.652_145_154_862_546_1, 0.347_854_845_137_453_9];
    let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
    let mut sum = 0.0;
    for (x, w) in NODES.iter().zip(WEIGHTS) {
        sum += w * (f(mid - half * x) + f(mid + half * x));
    }
    sum * half
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
