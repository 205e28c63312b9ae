//! Shared foundation of the sd-rs crates.
//!
//! - [`error`]: the crate's error type, used by every other crate through `#[from]`.
//! - [`device`]: parsing `cpu` / `cuda:N` and `f32` / `f16` / `bf16`.
//! - [`weights`]: loading diffusers-layout safetensors into a `tch` `VarStore`,
//!   memory-mapped, with missing, unexpected and wrongly shaped tensors reported by name.
//! - [`manifest`]: the weight names and shapes of a model, as committed manifests.
//! - [`nn`]: the basic layers (Linear, Conv2d, norms, Embedding), created uninitialised.
//! - [`layers`]: blocks used by both the UNet and the VAE (ResnetBlock2D, Attention).
//! - [`rng`]: per-run seeded CPU generators that match `torch.Generator("cpu")`.
//! - [`parity`]: numeric comparison against reference outputs, for tests.
//! - [`cuda_graph`], [`cuda_memory`]: CUDA graph capture/replay and peak GPU memory,
//!   through a small C++ shim over libtorch (built when the wheel has the CUDA headers).

pub mod alloc;
pub mod cuda_graph;
pub mod cuda_memory;
pub mod device;
pub mod error;
pub mod layers;
pub mod manifest;
pub mod nn;
pub mod parity;
pub mod rng;
pub mod weights;

pub use error::{CoreError, Result};
pub mod shared;
