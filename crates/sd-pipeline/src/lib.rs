//! Stable Diffusion pipelines: txt2img, img2img and inpainting for SD1.x,
//! SD2.x and SDXL diffusers folders, with seeds that match diffusers.
//!
//! ```no_run
//! use sd_pipeline::{Request, StableDiffusion};
//! # fn main() -> sd_pipeline::Result<()> {
//! let pipeline = StableDiffusion::builder().model_dir("stable-diffusion-v1-5").build()?;
//! let mut request = Request::new("a red circle on a white background");
//! request.steps = 30;
//! request.seed = 42.into();
//! let generation = pipeline.generate(&request)?;
//! generation.images[0].save("out.png").ok();
//! # Ok(()) }
//! ```

#[cfg(feature = "ndarray")]
pub mod arrays;
mod components;
mod cow;
pub mod error;
mod generate;
mod graph;
pub mod hub;
pub mod images;
pub mod model;
mod noise;
mod pipeline;
pub mod single_file;

pub use components::{Components, Devices, TextTower};
pub use error::{PipelineError, Result};
pub use generate::{
    guide, Conditioning, Generation, PromptEmbeddings, Request, Seed, StepCallback, StepInfo, Task,
};
pub use graph::UNetExecution;
pub use model::{ModelFamily, ModelIndex};
pub use pipeline::{StableDiffusion, StableDiffusionBuilder};
pub use sd_clip::PromptOptions;
pub use sd_core::DiffusersModel;
pub use sd_scheduler::{SamplerKind, Scheduler, SchedulerConfig};
