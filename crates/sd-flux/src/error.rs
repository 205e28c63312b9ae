//! The error type of `sd-flux`.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FluxError {
    /// A `transformer/config.json` field that cannot be used.
    #[error("{path}: field '{field}': {message}")]
    Config {
        /// The file at fault.
        path: PathBuf,
        /// The config field.
        field: String,
        /// What is wrong.
        message: String,
    },

    /// An input of the wrong shape, or one the model cannot take.
    #[error("flux transformer input: {0}")]
    Input(String),

    /// From sd-core (files, weights, devices).
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    /// An error libtorch reported.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The crate's result type.
pub type Result<T, E = FluxError> = std::result::Result<T, E>;
