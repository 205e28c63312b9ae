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

    /// A value that cannot be used (a bad request), with what it was named.
    #[error("{context}: {message}")]
    InvalidInput { context: String, message: String },

    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ClipError {
    /// An [`ClipError::InvalidInput`] naming `context`.
    pub fn invalid(context: impl Into<String>, message: impl Into<String>) -> Self {
        ClipError::InvalidInput {
            context: context.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = ClipError> = std::result::Result<T, E>;
