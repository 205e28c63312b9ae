//! The error type of `sd-vae`.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaeError {
    /// A vae/config.json value this crate cannot use, with the field named.
    #[error("vae config: field '{field}': {message}")]
    Config {
        /// The config field.
        field: String,
        /// What is wrong.
        message: String,
    },

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

impl VaeError {
    /// An [`VaeError::InvalidInput`] naming `context`.
    pub fn invalid(context: impl Into<String>, message: impl Into<String>) -> Self {
        VaeError::InvalidInput {
            context: context.into(),
            message: message.into(),
        }
    }

    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        VaeError::Config {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Reads a config file with `parse`, naming the file in field errors.
    pub(crate) fn read_config<T>(
        path: &std::path::Path,
        parse: impl FnOnce(&str) -> Result<T>,
    ) -> Result<T> {
        let text = std::fs::read_to_string(path).map_err(|e| sd_core::CoreError::io(path, e))?;
        parse(&text).map_err(|error| match error {
            VaeError::Config { field, message } => VaeError::Config {
                field: format!("{field} (in {})", path.display()),
                message,
            },
            other => other,
        })
    }
}

/// The crate's result type.
pub type Result<T, E = VaeError> = std::result::Result<T, E>;
