//! Stable Diffusion pipelines: txt2img, img2img and inpainting for SD1.x,
//! SD2.x, SDXL and SD3/SD3.5 diffusers folders, with seeds that match diffusers.
//!
//! ```
//! use sd_pipeline::{Request, StableDiffusion};
//! # fn main() -> sd_pipeline::Result<()> {
//! # let model_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sd-cli/shapes");
//! // `model_dir`: a diffusers folder (SD1.x, SD2.x, SDXL, SD3; here the project's small shapes model)
//! let pipeline = StableDiffusion::builder().model_dir(model_dir).build()?;
//! let mut request = Request::new("a large blue triangle on a white background").with_seed(42);
//! request.steps = 20;
//! let generation = pipeline.generate(&request)?;
//! let image = &generation.images[0]; // an image::RgbImage
//! assert_eq!(image.dimensions(), (32, 32));
//! image.save(std::env::temp_dir().join("triangle.png")).ok();
//! # Ok(()) }
//! ```
//!
//! Single-file checkpoints ([`StableDiffusionBuilder::single_file`]), the hub
//! cache ([`StableDiffusionBuilder::hub_repo`]), image-to-image and inpainting
//! ([`Request::image_to_image`], [`Request::inpaint`]), your own sampler and a
//! per-step callback ([`StableDiffusion::generate_with`]) build on the same
//! two types.
#![warn(missing_docs)]

mod adapters;
#[cfg(feature = "ndarray")]
pub mod arrays;
mod builder;
pub mod compiled;
mod components;
mod control;
pub mod convert;
mod cow;
mod denoiser;
mod denoiser_file;
mod encoder_files;
pub mod error;
pub mod front;
mod generate;
mod graph;
pub mod hub;
mod image_prompt;
pub mod images;
mod ip_scale;
pub mod model;
mod noise;
pub mod parameters;
mod pipeline;
mod placement;
#[cfg(feature = "preprocess")]
pub mod preprocess;
mod preview;
pub mod resample;
pub mod sd3;
pub mod single_file;
mod single_file_sd3;
mod t5;

pub use adapters::LoraSpec;
pub use builder::StableDiffusionBuilder;
pub use compiled::DecodeExecution;
pub use components::{Components, Devices, TextTower};
pub use control::{Control, LoadedControlNet};
pub use denoiser::Denoiser;
pub use encoder_files::EncoderFiles;
pub use error::{PipelineError, Result};
pub use generate::{
    guide, random_seed, Conditioning, Generation, HiresFix, HiresSize, HiresUpscaler, LatentResize,
    PromptEmbeddings, Request, Seed, SkipLayerGuidance, StepCallback, StepInfo, Task,
};
pub use graph::UNetExecution;
pub use image_prompt::{BlockScales, ImagePrompt, IpScale};
pub use model::{ModelFamily, ModelIndex};
pub use parameters::GenerationParameters;
pub use pipeline::{ModelDefaults, StableDiffusion};
pub use preview::TinyVaeUse;
pub use sd_clip::PromptOptions;
pub use sd_core::DiffusersModel;
pub use sd_lora::ApplyReport;
pub use t5::{T5Encoder, T5Loading, T5Tower};
// What an application and a sampler of its own need, without depending on
// tch or sd-scheduler themselves.
pub use sd_scheduler::{
    schedule, NoiseSource, SamplerKind, Scheduler, SchedulerConfig, SchedulerError, TimestepSpacing,
};
pub use tch;

// The README's Rust examples compile as doctests (only under rustdoc's
// doctest cfg: the published crate embeds nothing outside its folder).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
mod readme {}
