//! One generation, in the stages of diffusers' `StableDiffusionPipeline.__call__`
//! (and its img2img, inpaint and XL siblings), so that the same seed gives
//! the same latents:
//!
//! - [`checks`] (stage 0): the request refused early, with the field named;
//! - [`conditioning`] (1): prompts to text-encoder states, batched for CFG;
//! - [`latents`] (3): initial latents in diffusers' order of generator draws;
//! - [`denoise`] (2, 4, 5): timesteps, the denoising loop, the decode.
//!
//! [`request`] holds what a caller gives and gets back; [`batch`] runs
//! several requests as one UNet batch.

mod batch;
mod checks;
mod conditioning;
mod denoise;
mod hires;
mod latents;
mod request;

pub use denoise::{guide, StepCallback};
pub(crate) use hires::hires_name;
pub use hires::{HiresFix, HiresSize, HiresUpscaler, LatentResize};
pub use request::{
    random_seed, Conditioning, Generation, PromptEmbeddings, Request, Seed, SkipLayerGuidance,
    StepInfo, Task,
};
