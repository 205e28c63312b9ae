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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmasType {
    Zero,
    SigmaMin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterpolationType {
    Linear,
    LogLinear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlgorithmType {
    #[serde(rename = "dpmsolver++")]
    DpmSolverPlusPlus,
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    #[serde(rename = "sde-dpmsolver")]
    SdeDpmSolver,
    #[serde(rename = "deis")]
    Deis,
}

/// DPM-Solver's `midpoint`/`heun` and UniPC's `bh1`/`bh2` share this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    Midpoint,
    Heun,
    Logrho,
    Bh1,
    Bh2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    FixedSmall,
    FixedSmallLog,
    FixedLarge,
    FixedLargeLog,
    Learned,
    LearnedRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepType {
    Discrete,
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
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<BetaSchedule>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<PredictionType>,
    pub timestep_spacing: Option<TimestepSpacing>,
    pub steps_offset: Option<i64>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    pub set_alpha_to_one: Option<bool>,
    pub rescale_betas_zero_snr: Option<bool>,
    pub thresholding: Option<bool>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub final_sigmas_type: Option<FinalSigmasType>,
    pub interpolation_type: Option<InterpolationType>,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub timestep_type: Option<TimestepType>,
    /// PNDM: only the PLMS half (`true`) is implemented.
    pub skip_prk_steps: Option<bool>,
    /// DDPM.
    pub variance_type: Option<VarianceType>,
    /// DPM-Solver and UniPC.
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<AlgorithmType>,
    pub solver_type: Option<SolverType>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub lambda_min_clipped: Option<f64>,
    pub use_lu_lambdas: Option<bool>,
    /// UniPC.
    pub predict_x0: Option<bool>,
    pub disable_corrector: Option<Vec<usize>>,
    /// LCM.
    pub original_inference_steps: Option<usize>,
    pub timestep_scaling: Option<f64>,
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
