//! The error type of `sd-scheduler`.

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
