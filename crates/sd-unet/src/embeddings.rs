//! Timestep embeddings (they live in `sd_core::layers`, shared with SD3's
//! transformer; re-exported here for existing callers).

pub use sd_core::layers::{timestep_features, TimestepEmbedding};
