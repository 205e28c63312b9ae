//! The error type of `sd-clip`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// A tokenizer file that cannot be used; `path` may end in `:LINE`.
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("cannot tokenize \"{prompt}\": {message}")]
    Encode { prompt: String, message: String },

    /// A text_encoder/config.json field that cannot be used.
    #[error("{path}: field '{field}': {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },

    #[error("prompt weighting: {0}")]
    Weighting(String),

    #[error("{0}")]
    InvalidInput(String),

    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = ClipError> = std::result::Result<T, E>;
