//! GGUF files as stable-diffusion.cpp (`sd -M convert`) and city96's
//! ComfyUI-GGUF converters write quantized UNets, transformers and T5
//! encoders: the header, metadata and tensor directory read with every
//! size and offset checked against the file ([`GgufFile`]), and the blocks
//! of each type dequantized to f32 exactly as the `gguf` Python package's
//! `gguf.quants.dequantize` computes them ([`dequantize`]); and the other
//! way, values quantized as `gguf.quants.quantize` does ([`quantize`]) into
//! a GGUF v3 file written one tensor at a time ([`write()`]).
//!
//! Pure Rust, no libtorch: the pipeline decides where the numbers go.
#![warn(missing_docs)]

mod error;
mod kquants;
mod quantize;
mod quants;
mod reader;
mod writer;

pub use error::{GgufError, Result};
pub use quantize::{quantize, WRITABLE, WRITABLE_NAMES};
pub use quants::{dequantize, dequantize_into, GgmlType, QUANTIZED};
pub use reader::{is_gguf, Directory, GgufFile, TensorInfo, Value};
pub use writer::{write, TensorPlan};
