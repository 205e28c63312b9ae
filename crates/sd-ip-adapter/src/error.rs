//! The error type of `sd-ip-adapter`.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpAdapterError {
    /// A file that holds no IP-Adapter this crate reads, holds one
    /// inconsistently (a missing or misshapen tensor), or does not fit the
    /// model or image encoder it is given.
    #[error("{path}: {message}")]
    Adapter {
        /// The adapter file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// An input the adapter cannot take.
    #[error("ip-adapter input: {0}")]
    Input(String),

    /// From sd-core (files, weights, devices).
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    /// An error libtorch reported.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The crate's result type.
pub type Result<T, E = IpAdapterError> = std::result::Result<T, E>;
