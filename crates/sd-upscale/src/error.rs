//! The error type of `sd-upscale`.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpscaleError {
    /// A file whose weights make no upscaler this crate knows, or make one
    /// inconsistently (a missing or misshapen tensor).
    #[error("{path}: {message}")]
    Model {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// An input the model cannot take (not an RGB image batch, a tile too small).
    #[error("upscale input: {0}")]
    Input(String),

    /// From sd-core (files, weights, devices).
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    /// An error libtorch reported.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The crate's result type.
pub type Result<T, E = UpscaleError> = std::result::Result<T, E>;
