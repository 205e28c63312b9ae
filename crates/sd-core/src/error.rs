//! The error type of `sd-core`.

use std::path::PathBuf;

use crate::load_report::LoadReport;

/// The crate's result type.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file that is not valid safetensors.
    #[error("{path}: not a valid safetensors file: {message}")]
    SafeTensors {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A PyTorch checkpoint (a pickle) this reader refuses or cannot read.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A file that is not a GGUF file this reader takes.
    #[error("{path}: not a valid GGUF file: {message}")]
    Gguf {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },

    /// A tensor whose dtype libtorch cannot hold.
    #[error("{path}: tensor '{name}' has dtype {dtype}, which libtorch cannot hold")]
    UnsupportedDType {
        /// The file at fault.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Its dtype in the file.
        dtype: String,
    },

    /// A JSON file that cannot be parsed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// Weights that do not fit the model: missing, unexpected or wrongly shaped tensors.
    #[error("weights do not fit the model ({files}):\n{report}")]
    Weights {
        /// The files read.
        files: String,
        /// What did not fit, by name.
        report: LoadReport,
    },

    /// A device string other than cpu, cuda or cuda:N.
    #[error("invalid device '{0}': expected cpu, cuda or cuda:N")]
    InvalidDevice(String),

    /// A CUDA device this libtorch or machine does not have.
    #[error("device '{0}' was asked for but CUDA is not available in this libtorch")]
    CudaUnavailable(String),

    /// A dtype string other than f32, f16 or bf16.
    #[error("invalid dtype '{0}': expected f32, f16 or bf16")]
    InvalidDType(String),

    /// A value that cannot be used (a bad request), with what it was named.
    #[error("{context}: {message}")]
    InvalidInput {
        /// What the value was: a field, option or input name.
        context: String,
        /// What is wrong.
        message: String,
    },

    /// A dtype whose attention kernel libtorch refuses on this CPU
    /// ([`crate::kernels::check_attention`]).
    #[error("{}", kernel_refusal(dtype, capability.as_deref(), reason))]
    KernelUnavailable {
        /// The dtype refused: f16 or bf16.
        dtype: &'static str,
        /// `ATEN_CPU_CAPABILITY` when it was set.
        capability: Option<String>,
        /// libtorch's own first line.
        reason: String,
    },

    /// An error libtorch reported.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

fn kernel_refusal(dtype: &str, capability: Option<&str>, reason: &str) -> String {
    match capability {
        Some(c) => format!(
            "libtorch cannot run {dtype} attention on this CPU with ATEN_CPU_CAPABILITY={c} \
             ({reason}): unset ATEN_CPU_CAPABILITY, or choose another dtype (f32 always runs)"
        ),
        None => format!(
            "libtorch cannot run {dtype} attention on this CPU ({reason}): \
             choose another dtype (f32 always runs)"
        ),
    }
}

impl CoreError {
    /// An [`CoreError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`CoreError::InvalidInput`] naming `context`.
    pub fn invalid(context: impl Into<String>, message: impl Into<String>) -> Self {
        CoreError::InvalidInput {
            context: context.into(),
            message: message.into(),
        }
    }
}
