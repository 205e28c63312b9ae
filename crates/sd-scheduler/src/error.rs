//! The error type of `sd-scheduler`.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// A config value that cannot be used, with the field named.
    #[error("scheduler config: field '{field}': {message}")]
    Config {
        /// The config field.
        field: String,
        /// What is wrong.
        message: String,
    },

    /// A sampler name that is not one of [`crate::SamplerKind::NAMES`].
    #[error("unknown scheduler '{0}': expected one of {names}, flow-euler, flow-heun", names = crate::SamplerKind::NAMES.join(", "))]
    UnknownSampler(String),

    /// A request outside what the sampler accepts (step counts, strength, timesteps).
    /// The context is the sampler's name.
    #[error("{context}: {message}")]
    InvalidInput {
        /// What the value was: a field, option or input name.
        context: String,
        /// What is wrong.
        message: String,
    },

    /// `step` or `scale_model_input` before `set_timesteps`, or past its end.
    #[error("{sampler}: step index {index} is outside the {len} prepared timesteps (call set_timesteps first)")]
    StepOutOfRange {
        /// The sampler's name.
        sampler: &'static str,
        /// The step index asked for.
        index: usize,
        /// How many timesteps were prepared.
        len: usize,
    },

    /// An error from sd-core (files, weights, devices).
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    /// An error libtorch reported.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl SchedulerError {
    /// An [`SchedulerError::InvalidInput`] naming `context`.
    pub fn invalid(context: impl Into<String>, message: impl Into<String>) -> Self {
        SchedulerError::InvalidInput {
            context: context.into(),
            message: message.into(),
        }
    }

    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        SchedulerError::Config {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn request(sampler: &'static str, message: impl Into<String>) -> Self {
        SchedulerError::InvalidInput {
            context: sampler.to_string(),
            message: message.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;
