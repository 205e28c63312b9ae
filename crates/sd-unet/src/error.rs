//! The error type of `sd-unet`.

#[derive(Debug, thiserror::Error)]
pub enum UnetError {
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
