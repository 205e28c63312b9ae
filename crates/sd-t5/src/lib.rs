//! The T5 v1.1 text encoder of Stable Diffusion 3 (`text_encoder_3`,
//! transformers' `T5EncoderModel`) and its tokenizer, matching transformers:
//! relative-position buckets, gated-GELU feed-forward, RMS norms with f32
//! statistics, and in f16 the `wo` projections kept in f32 as transformers
//! keeps them. Loads through `sd_core::DiffusersModel` (`config.json` and
//! `model*.safetensors`, sharded or not), reporting missing, unexpected and
//! misshapen tensors.
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod layers;
mod model;
mod streamed;
mod tokenizer;

pub use config::{FeedForward, T5Config};
pub use error::{Result, T5Error};
pub use model::T5EncoderModel;
pub use streamed::{StreamedT5, T5Keys};
pub use tokenizer::{T5Encoding, T5Tokenizer};
