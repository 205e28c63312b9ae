//! The multimodal diffusion transformer (MMDiT) of Stable Diffusion 3 and
//! 3.5, diffusers' `SD3Transformer2DModel`: joint attention over image and
//! text tokens, AdaLayerNorm-Zero, SD3.5's query/key RMS norms and SD3.5
//! Medium's dual attention (MMDiT-X), skip-layer guidance's `skip_layers`.
//! Loads through `sd_core::DiffusersModel`, reporting missing, unexpected
//! and misshapen tensors.
#![warn(missing_docs)]

mod blocks;
pub mod config;
pub mod error;
mod model;
pub mod sai;

pub use config::{MmditConfig, QkNorm};
pub use error::{MmditError, Result};
pub use model::SD3Transformer2DModel;
