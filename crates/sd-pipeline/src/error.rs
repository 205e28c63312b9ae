//! The error type of `sd-pipeline`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The model folder lacks something the pipeline needs.
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },

    /// A request value that cannot be used, with the field named.
    /// The context is the request field (or builder option) at fault.
    #[error("request: {context}: {message}")]
    InvalidInput { context: String, message: String },

    /// The per-step callback asked to stop.
    #[error("generation cancelled at step {step}")]
    Cancelled { step: usize },

    #[error(transparent)]
    Clip(#[from] sd_clip::ClipError),

    #[error(transparent)]
    UNet(#[from] sd_unet::UNetError),

    #[error(transparent)]
    Vae(#[from] sd_vae::VaeError),

    #[error(transparent)]
    Scheduler(#[from] sd_scheduler::SchedulerError),

    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl PipelineError {
    pub(crate) fn request(field: &'static str, message: impl Into<String>) -> Self {
        PipelineError::InvalidInput {
            context: field.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        PipelineError::Model {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;
