//! Adapters for Stable Diffusion models: LoRA in every common file format
//! (kohya/A1111, diffusers/PEFT, older diffusers; for FLUX.1 also ComfyUI's,
//! XLabs' and Black Forest Labs' names), LyCORIS' LoCon (with
//! Tucker cores), LoHa and LoKr, merged into the weights and taken out
//! again exactly; and textual-inversion embeddings (diffusers, A1111 and
//! SDXL files).
//!
//! ```no_run
//! # fn main() -> sd_lora::Result<()> {
//! use sd_lora::{LoraFile, Merged, Targets};
//! let lora = LoraFile::open("style.safetensors")?;
//! # let targets = Targets::new(vec![]);
//! let mut merged = Merged::new();
//! let report = merged.apply(&lora, 0.8, &targets)?; // W += 0.8 * alpha/rank * up @ down
//! println!("{} modules merged, {} skipped", report.applied_total(), report.skipped.len());
//! merged.restore(&targets)?; // the original weights, bit for bit
//! # Ok(()) }
//! ```
//!
//! A pipeline builds [`Targets`] from its models' variables (sd-pipeline
//! does this for its UNet and text encoders).
#![warn(missing_docs)]

pub mod adapter;
pub mod embedding;
pub mod error;
mod family;
pub mod file;
mod flux;
pub mod keys;
pub mod merge;
pub mod tags;

pub use adapter::Adapter;
pub use embedding::EmbeddingFile;
pub use error::{LoraError, Result};
pub use file::LoraFile;
pub use keys::Component;
pub use merge::{ApplyReport, Merged, Target, Targets};
