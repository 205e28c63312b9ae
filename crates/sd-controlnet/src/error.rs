//! The error type of `sd-controlnet`.

use std::path::Path;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlNetError {
    /// A config value this crate cannot use, with the field named (and the
    /// file, once known).
    #[error("controlnet config: field '{field}': {message}")]
    Config {
        /// The config field.
        field: String,
        /// What is wrong.
        message: String,
    },

    /// A value that cannot be used (a bad request or a malformed file),
    /// with what it was named.
    #[error("{context}: {message}")]
    InvalidInput {
        /// What the value was: a file, key, option or input name.
        context: String,
        /// What is wrong.
        message: String,
    },

    /// An error from the UNet layers the ControlNet shares.
    #[error(transparent)]
    UNet(#[from] sd_unet::UNetError),

    /// An error from sd-core (files, weights, devices).
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    /// An error libtorch reported.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ControlNetError {
    /// An [`ControlNetError::InvalidInput`] naming `context`.
    pub fn invalid(context: impl Into<String>, message: impl Into<String>) -> Self {
        ControlNetError::InvalidInput {
            context: context.into(),
            message: message.into(),
        }
    }

    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        ControlNetError::Config {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Adds the config file to a field error.
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            ControlNetError::Config { field, message } => ControlNetError::Config {
                field: format!("{field} (in {})", path.display()),
                message,
            },
            ControlNetError::UNet(sd_unet::UNetError::Config { field, message }) => {
                ControlNetError::Config {
                    field: format!("{field} (in {})", path.display()),
                    message,
                }
            }
            other => other,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = ControlNetError> = std::result::Result<T, E>;
