//! The error type of `sd-vae`.

#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    /// A vae/config.json value this crate cannot use, with the field named.
    #[error("vae config: field '{field}': {message}")]
    Config { field: String, message: String },

    #[error("vae input: {0}")]
    Input(String),

    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl VaeError {
    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        VaeError::Config {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = VaeError> = std::result::Result<T, E>;
