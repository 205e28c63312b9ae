//! diffusers' `scheduler/scheduler_config.json` as one serde struct.
//!
//! Every field is optional: an absent key means the chosen sampler's own
//! default, as `SchedulerClass.from_config` does in diffusers (real SD1.5
//! configs have no `timestep_spacing` or `prediction_type`). Keys a sampler
//! does not know are ignored, as diffusers ignores them. String options are
//! enums, so an unknown value fails at parse time with the field named.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SchedulerError};

/// How betas run from `beta_start` to `beta_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Linear in beta.
    Linear,
    /// Linear in sqrt(beta) (Stable Diffusion).
    ScaledLinear,
    /// Cosine schedule (Nichol and Dhariwal 2021).
    SquaredcosCapV2,
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise.
    Epsilon,
    /// v = alpha * noise - sigma * sample (SD2 768, zero-SNR models).
    VPrediction,
    /// The clean sample.
    Sample,
}

/// How inference timesteps are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// From 0 in equal strides, offset by `steps_offset`.
    Leading,
    /// Equal strides ending at the last training timestep.
    Trailing,
    /// Evenly over the training timesteps, both ends included.
    Linspace,
}

impl std::str::FromStr for TimestepSpacing {
    type Err = crate::error::SchedulerError;

    /// `leading`, `trailing` or `linspace`, as in scheduler_config.json.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "leading" => Ok(TimestepSpacing::Leading),
            "trailing" => Ok(TimestepSpacing::Trailing),
            "linspace" => Ok(TimestepSpacing::Linspace),
            other => Err(crate::error::SchedulerError::invalid(
                "timestep_spacing",
                format!("'{other}' is not leading, trailing or linspace"),
            )),
        }
    }
}

/// The sigma after the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmasType {
    /// Zero: a fully denoised result.
    Zero,
    /// The smallest training sigma.
    SigmaMin,
}

/// How sigmas are interpolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterpolationType {
    /// Linearly in timestep.
    Linear,
    /// Linearly in log sigma.
    LogLinear,
}

/// DPM-Solver variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlgorithmType {
    /// DPM-Solver++ (data prediction).
    #[serde(rename = "dpmsolver++")]
    DpmSolverPlusPlus,
    /// SDE DPM-Solver++.
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
    /// DPM-Solver (noise prediction; refused here).
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    /// SDE DPM-Solver (refused here).
    #[serde(rename = "sde-dpmsolver")]
    SdeDpmSolver,
    /// DEIS (deprecated in diffusers, which runs it as DPM-Solver++; so does this crate).
    #[serde(rename = "deis")]
    Deis,
}

/// DPM-Solver's `midpoint`/`heun` and UniPC's `bh1`/`bh2` share this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    /// Midpoint.
    Midpoint,
    /// Heun's.
    Heun,
    /// DEIS's log-rho (run as midpoint, as diffusers does for DPM-Solver).
    Logrho,
    /// UniPC B(h) = h.
    Bh1,
    /// UniPC B(h) = expm1(h).
    Bh2,
}

/// DDPM's variance choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// The posterior variance.
    FixedSmall,
    /// The posterior variance, in log space.
    FixedSmallLog,
    /// beta_t.
    FixedLarge,
    /// beta_t, in log space (refused here).
    FixedLargeLog,
    /// Predicted by the model (refused here).
    Learned,
    /// Interpolated by the model (refused here).
    LearnedRange,
}

/// Discrete or continuous timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepType {
    /// Integer training timesteps.
    Discrete,
    /// Continuous timesteps (refused here).
    Continuous,
}

/// The fields of diffusers' scheduler configs, with diffusers' names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// The diffusers class that wrote the file (`PNDMScheduler`, ...).
    #[serde(
        rename = "_class_name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub class_name: Option<String>,
    /// Training timesteps (1000).
    pub num_train_timesteps: Option<usize>,
    /// beta at the first timestep.
    pub beta_start: Option<f64>,
    /// beta at the last timestep.
    pub beta_end: Option<f64>,
    /// How betas run from start to end.
    pub beta_schedule: Option<BetaSchedule>,
    /// Explicit betas, overriding the schedule.
    pub trained_betas: Option<Vec<f64>>,
    /// What the model predicts: epsilon, v or the sample.
    pub prediction_type: Option<PredictionType>,
    /// How inference timesteps are spaced over the training ones.
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Added to leading-spaced timesteps (1 in SD1).
    pub steps_offset: Option<i64>,
    /// Clip predicted samples to `clip_sample_range`.
    pub clip_sample: Option<bool>,
    /// The range predicted samples are clipped to.
    pub clip_sample_range: Option<f64>,
    /// DDIM: the final step's previous alpha is 1.
    pub set_alpha_to_one: Option<bool>,
    /// Rescale to zero terminal SNR (Lin et al. 2023).
    pub rescale_betas_zero_snr: Option<bool>,
    /// Dynamic thresholding (pixel-space models; refused here).
    pub thresholding: Option<bool>,
    /// Karras et al. (2022) sigma spacing.
    pub use_karras_sigmas: Option<bool>,
    /// Exponentially spaced sigmas.
    pub use_exponential_sigmas: Option<bool>,
    /// Beta-distribution spaced sigmas.
    pub use_beta_sigmas: Option<bool>,
    /// The last sigma: zero or the smallest training sigma.
    pub final_sigmas_type: Option<FinalSigmasType>,
    /// How sigmas are interpolated between training timesteps.
    pub interpolation_type: Option<InterpolationType>,
    /// Overrides the smallest sigma.
    pub sigma_min: Option<f64>,
    /// Overrides the largest sigma.
    pub sigma_max: Option<f64>,
    /// Discrete or continuous timesteps.
    pub timestep_type: Option<TimestepType>,
    /// PNDM: only the PLMS half (`true`) is implemented.
    pub skip_prk_steps: Option<bool>,
    /// DDPM.
    pub variance_type: Option<VarianceType>,
    /// DPM-Solver and UniPC.
    pub solver_order: Option<usize>,
    /// The DPM-Solver variant.
    pub algorithm_type: Option<AlgorithmType>,
    /// The second-order update (midpoint or Heun; UniPC: bh1 or bh2).
    pub solver_type: Option<SolverType>,
    /// First-order final steps (stabler with few steps).
    pub lower_order_final: Option<bool>,
    /// An Euler final step.
    pub euler_at_final: Option<bool>,
    /// Clips the smallest log-SNR (cosine schedules).
    pub lambda_min_clipped: Option<f64>,
    /// Lu et al.'s uniform log-SNR steps.
    pub use_lu_lambdas: Option<bool>,
    /// UniPC.
    pub predict_x0: Option<bool>,
    /// UniPC: steps without the corrector.
    pub disable_corrector: Option<Vec<usize>>,
    /// LCM.
    pub original_inference_steps: Option<usize>,
    /// LCM's timestep scaling for its boundary conditions.
    pub timestep_scaling: Option<f64>,
    /// Flow matching: the sigma shift `shift * s / (1 + (shift - 1) * s)`
    /// (3.0 for SD3).
    pub shift: Option<f64>,
    /// Flow matching: shift by the image's size (`mu`) instead of `shift`.
    pub use_dynamic_shifting: Option<bool>,
    /// Flow matching, dynamic shifting: `mu` at `base_image_seq_len`.
    pub base_shift: Option<f64>,
    /// Flow matching, dynamic shifting: `mu` at `max_image_seq_len`.
    pub max_shift: Option<f64>,
    /// Flow matching, dynamic shifting: the smaller reference size in patches.
    pub base_image_seq_len: Option<usize>,
    /// Flow matching, dynamic shifting: the larger reference size in patches.
    pub max_image_seq_len: Option<usize>,
    /// Flow matching: how `mu` shifts the sigmas.
    pub time_shift_type: Option<TimeShiftType>,
    /// Flow matching: stretch the schedule to end at this sigma.
    pub shift_terminal: Option<f64>,
    /// Flow matching: sigmas as `1 - sigma`.
    pub invert_sigmas: Option<bool>,
    /// Flow matching: each step re-noises its clean estimate.
    pub stochastic_sampling: Option<bool>,
}

/// How flow matching's dynamic shift `mu` acts on a sigma `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeShiftType {
    /// `e^mu / (e^mu + (1/t - 1))`.
    Exponential,
    /// `mu / (mu + (1/t - 1))`.
    Linear,
}

impl SchedulerConfig {
    /// Parses JSON text; an unknown option value fails with its field named.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let field = error.path().to_string();
            SchedulerError::config(&field, error.into_inner().to_string())
        })
    }

    /// Reads `scheduler_config.json`; errors name the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| sd_core::CoreError::io(path, e))?;
        Self::from_json_str(&text).map_err(|error| match error {
            SchedulerError::Config { field, message } => SchedulerError::Config {
                field: format!("{field} (in {})", path.display()),
                message,
            },
            other => other,
        })
    }

    /// The SD1.5 config (`scheduled_linear` 0.00085..0.012, 1000 steps,
    /// `steps_offset` 1), the usual base for every sampler.
    pub fn stable_diffusion() -> Self {
        Self::from_json_str(include_str!("presets/stable_diffusion.json"))
            .expect("the embedded preset parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_sd15_config_with_absent_keys() {
        let text = r#"{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
            "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
            "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#;
        let config = SchedulerConfig::from_json_str(text).unwrap();
        assert_eq!(config.beta_schedule, Some(BetaSchedule::ScaledLinear));
        assert_eq!(config.prediction_type, None);
        assert_eq!(config.timestep_spacing, None);
        assert_eq!(config.class_name.as_deref(), Some("PNDMScheduler"));
    }

    #[test]
    fn unknown_values_name_their_field() {
        let err = SchedulerConfig::from_json_str(r#"{"beta_schedule": "cosine"}"#).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("'beta_schedule'") && text.contains("cosine"),
            "{text}"
        );
        let err = SchedulerConfig::from_json_str(r#"{"prediction_type": "flow"}"#).unwrap_err();
        assert!(err.to_string().contains("'prediction_type'"), "{err}");
        let err = SchedulerConfig::from_json_str(r#"{"num_train_timesteps": -3}"#).unwrap_err();
        assert!(err.to_string().contains("'num_train_timesteps'"), "{err}");
    }

    #[test]
    fn algorithm_names_are_diffusers_spelling() {
        let config =
            SchedulerConfig::from_json_str(r#"{"algorithm_type": "sde-dpmsolver++"}"#).unwrap();
        assert_eq!(
            config.algorithm_type,
            Some(AlgorithmType::SdeDpmSolverPlusPlus)
        );
    }
}
