//! The error type of `sd-vae`.

#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
