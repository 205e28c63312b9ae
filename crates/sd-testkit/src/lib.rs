//! Test helpers shared by the sd-rs crates' tests (a dev-dependency, never
//! published), as diffusers' `tests/testing_utils.py`:
//!
//! - [`parity`]: the error model and numeric comparison against the reference
//!   outputs the harness (`reference/`) writes from diffusers.
//! - [`manifest`]: every weight name and shape of the full-size models, to
//!   check architectures whose real weights never appear here.
//! - [`scratch`]: a fresh folder per call, safe for tests running in parallel.
//! - [`files`]: safetensors files of any dtype, fp8 included (tch's writer has none).

pub mod files;
pub mod manifest;
pub mod parity;
pub mod scratch;

pub use scratch::scratch_dir;
