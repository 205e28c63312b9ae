//! The error type of `sd-t5`.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum T5Error {
    /// A `config.json` field that cannot be used.
    #[error("{path}: field '{field}': {message}")]
    Config {
        /// The file at fault.
        path: PathBuf,
        /// The config field.
        field: String,
        /// What is wrong.
        message: String,
    },

    /// A `tokenizer.json` that cannot be used, or a prompt it cannot encode.
    #[error("{path}: {message}")]
    Tokenizer {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// Input ids of the wrong shape or kind.
    #[error("t5 input: {0}")]
    Input(String),

    /// From sd-core (files, weights, devices).
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    /// An error libtorch reported.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The crate's result type.
pub type Result<T, E = T5Error> = std::result::Result<T, E>;
