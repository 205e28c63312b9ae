//! The error type of `sd-vae`.

#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    /// A vae/config.json value this crate cannot use, with the field named.
    #[error("vae config: field '{field}': {message}")]
    Config { field: String, message: String },

    /// A value that cannot be used (a bad request), with what it was named.
    #[error("{context}: {message}")]
    InvalidInput { context: String, message: String },

    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

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
}

pub type Result<T, E = VaeError> = std::result::Result<T, E>;
