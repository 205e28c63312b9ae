//! The model's output turned into a prediction of the clean sample, for each
//! prediction type, in the parameterisations diffusers uses. One home
//! for these formulas; scalars are f32 as in diffusers' 0-d tensors.

use tch::Tensor;

use crate::config::PredictionType;
use crate::error::{Result, SchedulerError};
use crate::schedule::{leading, sqrt32};

/// `x0` from an alpha-parameterised step (DDIM, DDPM, LCM), where
/// `alpha_prod` is `alphas_cumprod[t]`.
pub fn x0_from_alpha(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    alpha_prod: f32,
) -> Tensor {
    let beta_prod = 1.0 - alpha_prod;
    let (sqrt_alpha, sqrt_beta) = (sqrt32(alpha_prod), sqrt32(beta_prod));
    // diffusers: (sample - beta ** 0.5 * eps) / alpha ** 0.5, and
    // alpha ** 0.5 * sample - beta ** 0.5 * v (leading coefficients).
    match prediction {
        PredictionType::Epsilon => {
            (sample - model_output * leading(sqrt_beta, model_output)) / sqrt_alpha as f64
        }
        PredictionType::Sample => model_output.shallow_clone(),
        PredictionType::VPrediction => {
            sample * leading(sqrt_alpha, sample) - model_output * leading(sqrt_beta, model_output)
        }
    }
}

/// `x0` in the data-prediction form of the multistep solvers (DPM-Solver,
/// UniPC: diffusers' `convert_model_output`), from the `alpha_t` and
/// `sigma_t` of the current sigma.
pub fn x0_from_alpha_sigma(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    alpha_t: f32,
    sigma_t: f32,
) -> Tensor {
    // diffusers: (sample - sigma_t * eps) / alpha_t, alpha_t * sample - sigma_t * v
    match prediction {
        PredictionType::Epsilon => {
            (sample - model_output * leading(sigma_t, model_output)) / alpha_t as f64
        }
        PredictionType::Sample => model_output.shallow_clone(),
        PredictionType::VPrediction => {
            sample * leading(alpha_t, sample) - model_output * leading(sigma_t, model_output)
        }
    }
}

/// `x0` from a sigma-parameterised step (Euler and the Karras family).
pub fn x0_from_sigma(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Tensor {
    match prediction {
        // diffusers: sample - sigma * eps (a leading coefficient)
        PredictionType::Epsilon => sample - model_output * leading(sigma, model_output),
        PredictionType::Sample => model_output.shallow_clone(),
        PredictionType::VPrediction => {
            let scale = -sigma / sqrt32(sigma * sigma + 1.0);
            model_output * scale as f64 + sample / (sigma * sigma + 1.0) as f64
        }
    }
}

/// Rejects prediction types a sampler does not implement (as diffusers
/// raises for them), at construction rather than mid-run.
pub fn require(
    sampler: &'static str,
    prediction: PredictionType,
    supported: &[PredictionType],
) -> Result<PredictionType> {
    if supported.contains(&prediction) {
        Ok(prediction)
    } else {
        Err(SchedulerError::config(
            "prediction_type",
            format!("{sampler} does not support {prediction:?}"),
        ))
    }
}
