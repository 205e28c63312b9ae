//! The error type of `sd-lora`.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoraError {
    /// A value that cannot be used (a bad request or a malformed file),
    /// with what it was named.
    #[error("{context}: {message}")]
    InvalidInput {
        /// What the value was: a file, key, option or input name.
        context: String,
        /// What is wrong.
        message: String,
    },

    /// No key of the file names a module of this model.
    #[error(
        "{path}: none of its {count} modules is in this model (for example {examples}); \
         the file looks made for {family}"
    )]
    NoMatch {
        /// The adapter file.
        path: PathBuf,
        /// How many modules the file has.
        count: usize,
        /// A few of its module names.
        examples: String,
        /// The model family the file seems made for.
        family: String,
    },

    /// The file changes a denoiser the model does not have (a UNet LoRA on
    /// SD3's transformer, or the other way round): only its text-encoder
    /// part would merge, which is not what it was made for.
    #[error(
        "{path}: it changes a {component}, and this model has none (the file looks made \
         for {family}); nothing was merged"
    )]
    OtherDenoiser {
        /// The adapter file.
        path: PathBuf,
        /// The denoiser it was made for (`unet`, `transformer`).
        component: &'static str,
        /// The model family the file seems made for.
        family: String,
    },

    /// A module's adapter does not fit the weight it names.
    #[error(
        "{path}: '{key}' is {got:?}, which does not fit the model's {expected:?} weight; \
         the file looks made for {family}"
    )]
    Shape {
        /// The adapter file.
        path: PathBuf,
        /// The file key (module name and part).
        key: String,
        /// The model weight's shape.
        expected: Vec<i64>,
        /// The shape of the factor that does not fit.
        got: Vec<i64>,
        /// The model family the file seems made for.
        family: String,
    },

    /// An error from sd-core (files, weights, devices).
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    /// An error libtorch reported.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl LoraError {
    /// An [`LoraError::InvalidInput`] naming `context`.
    pub fn invalid(context: impl Into<String>, message: impl Into<String>) -> Self {
        LoraError::InvalidInput {
            context: context.into(),
            message: message.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = LoraError> = std::result::Result<T, E>;
