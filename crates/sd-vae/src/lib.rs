//! sd-vae: see the crate description. Work in progress: this crate holds its
//! error type so far; the components arrive with their issues.

pub mod error;

pub use error::VaeError;
