//! CLIP for Stable Diffusion: the tokenizer and the text encoders of SD1.x
//! (CLIP ViT-L/14), SD2.x (OpenCLIP ViT-H/14) and SDXL (both CLIP-L and
//! OpenCLIP bigG), matching transformers' `CLIPTokenizer`, `CLIPTextModel`
//! and `CLIPTextModelWithProjection`; and the image tower IP-Adapters use
//! (`CLIPVisionModelWithProjection`, with `CLIPImageProcessor`'s preprocessing).
#![warn(missing_docs)]

pub mod conditioning;
pub mod config;
pub mod encoder;
pub mod error;
pub mod image_processor;
mod layer;
pub mod ldm;
pub mod tokenizer;
pub mod vision;
pub mod weighting;

pub use conditioning::{encode, EmbeddingLayer, PromptEmbedding, PromptOptions};
pub use config::{ClipTextConfig, HiddenAct};
pub use encoder::{ClipOutput, ClipTextModel};
pub use error::{ClipError, Result};
pub use sd_core::DiffusersModel;
pub use tokenizer::{ClipTokenizer, TokenIds};
pub use vision::{ClipVisionConfig, ClipVisionModel, ClipVisionOutput};
