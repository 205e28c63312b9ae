//! ControlNet for Stable Diffusion (diffusers' `ControlNetModel`): SD1.x,
//! SD2.x and SDXL, from diffusers folders or the original single files.
//!
//! A ControlNet is a trained copy of the UNet's encoder that also sees a
//! control image (edges, depth, pose...). Its zero convolutions turn each
//! skip state and the mid block's output into residuals
//! ([`sd_unet::ControlResiduals`]) that the UNet adds to its own
//! ([`sd_unet::UNet2DConditionModel::forward_controlled`]).
#![warn(missing_docs)]

pub mod config;
pub mod embedding;
pub mod error;
pub mod ldm;
mod model;

pub use config::{ChannelOrder, ControlFields, ControlNetConfig};
pub use error::{ControlNetError, Result};
pub use model::{ControlNetModel, ControlScale};
pub use sd_core::DiffusersModel;
