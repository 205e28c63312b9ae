//! Shared foundation of the sd-rs crates.
//!
//! - [`error`]: the crate's error type, used by every other crate through `#[from]`.
//! - [`device`]: parsing `cpu` / `cuda:N` and `f32` / `f16` / `bf16`.
//! - [`model`]: [`DiffusersModel`], the loading shared by the CLIP, UNet and VAE models.
//! - [`weights`]: loading diffusers-layout safetensors into a `tch` `VarStore`,
//!   memory-mapped, with missing, unexpected and wrongly shaped tensors reported by name.
//! - [`mapped`]: one mapped safetensors file, and CPU tensors that live in its bytes.
//! - [`nn`]: the basic layers (Linear, Conv2d, norms, Embedding), created uninitialised.
//! - [`layers`]: blocks used by both the UNet and the VAE (ResnetBlock2D, Attention).
//! - [`kernels`]: whether libtorch can run attention in a dtype on this CPU.
//! - [`rng`]: per-run seeded CPU generators that match `torch.Generator("cpu")`.
//! - [`ffi`]: the Rust sides of the C++ shims: per-run CPU generators, GPU uploads,
//!   CUDA graph capture/replay and peak GPU memory (the CUDA ones built when the
//!   wheel has the CUDA headers).
//! - [`alloc`], [`shared`]: allocator tuning, and `Frozen` for sharing models across threads.
#![warn(missing_docs)]

pub mod alloc;
pub mod device;
pub mod error;
pub mod family;
pub mod ffi;
pub mod kernels;
pub mod layers;
pub mod load_report;
pub mod mapped;
pub mod model;
pub mod nn;
pub mod packed;
mod packed_ops;
pub mod pickle;
pub mod rng;
pub mod weights;

pub mod shared;

pub use error::{CoreError, Result};

/// Held by the unit tests that draw from libtorch's global generator: it is
/// one per process, and the test harness runs tests on parallel threads (a
/// seed set by one test was consumed by another's draw).
#[cfg(test)]
pub(crate) static GLOBAL_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
pub use model::DiffusersModel;
