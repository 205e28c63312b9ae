//! The error type of `sd-core`.

use std::path::PathBuf;

use crate::load_report::LoadReport;

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a valid safetensors file: {message}")]
    SafeTensors { path: PathBuf, message: String },

    #[error("{path}: tensor '{name}' has dtype {dtype}, which libtorch cannot hold")]
    UnsupportedDType {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("weights do not fit the model ({files}):\n{report}")]
    Weights { files: String, report: LoadReport },

    #[error("invalid device '{0}': expected cpu, cuda or cuda:N")]
    InvalidDevice(String),

    #[error("device '{0}' was asked for but CUDA is not available in this libtorch")]
    CudaUnavailable(String),

    #[error("invalid dtype '{0}': expected f32, f16 or bf16")]
    InvalidDType(String),

    #[error("{context}: {message}")]
    InvalidInput { context: String, message: String },

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl CoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn invalid(context: impl Into<String>, message: impl Into<String>) -> Self {
        CoreError::InvalidInput {
            context: context.into(),
            message: message.into(),
        }
    }
}
