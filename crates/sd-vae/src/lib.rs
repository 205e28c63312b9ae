//! The Stable Diffusion autoencoder (diffusers' `AutoencoderKL`): encode
//! images to latent distributions (img2img, inpainting) and decode latents
//! to pixels, built from `vae/config.json` with diffusers' weight names.
//! `scaling_factor` and `shift_factor` come from the config.
#![warn(missing_docs)]

pub mod autoencoder;
pub mod config;
mod decoder;
pub mod distribution;
mod encoder;
pub mod error;
pub mod ldm;
mod mid;
pub mod tiling;
pub mod tiny;
pub mod tiny_config;

pub use autoencoder::{AutoencoderKL, DecoderCall};
pub use config::VaeConfig;
pub use distribution::LatentDistribution;
pub use error::{Result, VaeError};
pub use sd_core::DiffusersModel;
pub use tiling::TileOptions;
pub use tiny::AutoencoderTiny;
pub use tiny_config::TinyVaeConfig;
