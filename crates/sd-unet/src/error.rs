//! The error type of `sd-unet`.

use std::path::Path;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UNetError {
    /// A config value this crate cannot use, with the field named (and the
    /// file, once known).
    #[error("unet config: field '{field}': {message}")]
    Config {
        /// The config field.
        field: String,
        /// What is wrong.
        message: String,
    },

    /// Inputs of the wrong shape or missing conditioning.
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

impl UNetError {
    /// An [`UNetError::InvalidInput`] naming `context`.
    pub fn invalid(context: impl Into<String>, message: impl Into<String>) -> Self {
        UNetError::InvalidInput {
            context: context.into(),
            message: message.into(),
        }
    }

    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        UNetError::Config {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Adds the config file to a field error.
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            UNetError::Config { field, message } => UNetError::Config {
                field: format!("{field} (in {})", path.display()),
                message,
            },
            other => other,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = UNetError> = std::result::Result<T, E>;
