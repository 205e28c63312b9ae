//! FLUX.1's rectified-flow transformer, diffusers' `FluxTransformer2DModel`:
//! double-stream blocks (image and text weights of their own, one joint
//! attention), single-stream blocks (one fused pass), three-axis rotary
//! positions over text and image ids, the distilled-guidance embedding of
//! FLUX.1-dev and its absence in FLUX.1-schnell. Loads through
//! `sd_core::DiffusersModel`, reporting missing, unexpected and misshapen
//! tensors. (The pipeline, files and LoRAs are issue 29's next steps.)
#![warn(missing_docs)]

pub mod bfl;
mod blocks;
pub mod config;
pub mod error;
mod model;
pub mod packing;
pub mod rope;

pub use config::FluxConfig;
pub use error::{FluxError, Result};
pub use model::{FluxInputs, FluxTransformer2DModel};
