//! The error type of `sd-scheduler`.

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A config value that cannot be used, with the field named.
    #[error("scheduler config: field '{field}': {message}")]
    Config { field: String, message: String },

    /// A sampler name that is not one of [`crate::SamplerKind::NAMES`].
    #[error("unknown scheduler '{0}': expected one of {names}", names = crate::SamplerKind::NAMES.join(", "))]
    UnknownSampler(String),

    /// A request outside what the sampler accepts (step counts, strength, timesteps).
    #[error("{sampler}: {message}")]
    InvalidRequest {
        sampler: &'static str,
        message: String,
    },

    /// `step` or `scale_model_input` before `set_timesteps`, or past its end.
    #[error("{sampler}: step index {index} is outside the {len} prepared timesteps (call set_timesteps first)")]
    StepOutOfRange {
        sampler: &'static str,
        index: usize,
        len: usize,
    },

    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl SchedulerError {
    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        SchedulerError::Config {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn request(sampler: &'static str, message: impl Into<String>) -> Self {
        SchedulerError::InvalidRequest {
            sampler,
            message: message.into(),
        }
    }
}

pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;
