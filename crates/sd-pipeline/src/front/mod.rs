//! The request layer: what every frontend (the `sd` CLI, `sd serve`, the
//! `sd_rs` Python module, the Ray Serve app) speaks. A frontend maps its
//! own syntax (command-line options, A1111 JSON, Python arguments) to
//! [`Parameters`] and [`ModelSource`]; this module does the rest once:
//! LoRA tags, sampler names, validation against [`Limits`] with the same
//! messages, seeds, the [`Request`](crate::Request)s, the batch key, and
//! the PNG infotext. Errors name a [`Field`], which each frontend maps to
//! its own option or JSON name.

pub mod a1111;
mod batch;
mod encoders;
pub mod extras;
mod field;
mod params;
mod sampler;
mod source;

pub use batch::BatchKey;
pub use encoders::EncoderChoice;
pub use field::Field;
pub use params::{BatchSeeds, Checked, Limits, Parameters, Source};
pub use sampler::parse_sampler;
pub use source::ModelSource;

#[cfg(test)]
mod tests;
