//! The Stable Diffusion UNet (diffusers' `UNet2DConditionModel`) for
//! SD1.x, SD2.x, SDXL and inpainting checkpoints, built from
//! `unet/config.json` with diffusers' weight names, so official safetensors
//! load without conversion.
#![warn(missing_docs)]

pub mod config;
mod cross;
mod down;
pub mod embeddings;
pub mod encoder;
pub mod error;
pub mod ldm;
mod mid;
mod transformer;
mod unet;
mod up;

pub use config::UNetConfig;
pub use cross::{CrossAttentionLayer, ImageTokens};
pub use encoder::{AddedConditions, Encoded, UNetEncoder};
pub use error::{Result, UNetError};
pub use sd_core::layers::ExtraTokens;
pub use sd_core::DiffusersModel;
pub use unet::{Conditions, ControlResiduals, UNet2DConditionModel};
