//! The error type of `sd-pipeline`.

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
