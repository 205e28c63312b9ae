//! The error type of `sd-clip`.

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
