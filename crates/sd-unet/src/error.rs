//! The error type of `sd-unet`.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum UnetError {
    /// A config value this crate cannot use, with the field named (and the
    /// file, once known).
    #[error("unet config: field '{field}': {message}")]
    Config { field: String, message: String },

    /// Inputs of the wrong shape or missing conditioning.
    #[error("unet input: {0}")]
    Input(String),

    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl UnetError {
    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        UnetError::Config {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Adds the config file to a field error.
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            UnetError::Config { field, message } => UnetError::Config {
                field: format!("{field} (in {})", path.display()),
                message,
            },
            other => other,
        }
    }
}

pub type Result<T, E = UnetError> = std::result::Result<T, E>;
