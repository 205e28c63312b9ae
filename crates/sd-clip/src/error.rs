//! The error type of `sd-clip`.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClipError {
    /// A tokenizer file that cannot be used; `path` may end in `:LINE`.
    #[error("{path}: {message}")]
    Tokenizer {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A prompt the tokenizer cannot encode.
    #[error("cannot tokenize \"{prompt}\": {message}")]
    Encode {
        /// The prompt.
        prompt: String,
        /// What is wrong.
        message: String,
    },

    /// A text_encoder/config.json field that cannot be used.
    #[error("{path}: field '{field}': {message}")]
    Config {
        /// The file at fault.
        path: PathBuf,
        /// The config field.
        field: String,
        /// What is wrong.
        message: String,
    },

    /// Prompt-weighting syntax that cannot be parsed.
    #[error("prompt weighting: {0}")]
    Weighting(String),

    /// A value that cannot be used (a bad request), with what it was named.
    #[error("{context}: {message}")]
    InvalidInput {
        /// What the value was: a field, option or input name.
        context: String,
        /// What is wrong.
        message: String,
    },

    /// An error from sd-core (files, weights, devices).
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    /// An error libtorch reported.
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

/// The crate's result type.
pub type Result<T, E = ClipError> = std::result::Result<T, E>;
