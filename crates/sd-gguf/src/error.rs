//! The crate's error: every problem names the file and what in it is wrong.

use std::path::PathBuf;

/// What went wrong reading a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a GGUF file this reader takes.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A tensor's type has no dequantization here.
    #[error("{tensor}: GGML type {kind} cannot be dequantized here (supported: {supported})")]
    Unsupported {
        /// The tensor.
        tensor: String,
        /// The type's name or number.
        kind: String,
        /// The types that can.
        supported: &'static str,
    },
    /// Bytes and values that are not whole blocks of each other.
    #[error("{tensor}: {bytes} bytes of {kind} are not the blocks of {values} values")]
    Length {
        /// The tensor.
        tensor: String,
        /// The bytes given.
        bytes: usize,
        /// The values asked for.
        values: usize,
        /// The type's name.
        kind: String,
    },
}

/// The crate's result.
pub type Result<T> = std::result::Result<T, GgufError>;
