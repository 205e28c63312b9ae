//! Training for the sd-rs models (the process the design follows): encode
//! an image to latents with the autoencoder, add a known amount of noise at
//! a random timestep (the forward process), and train the UNet to predict
//! that noise from the noisy latents, the timestep and the caption's text
//! embeddings. Also autoencoder training (reconstruction + KL), EMA,
//! AdamW with warm-up and cosine decay, diffusers-layout checkpoints, a
//! procedural shapes dataset and an analyser that scores prompt adherence.
#![warn(missing_docs)]

pub mod analyzer;
pub mod dataset;
pub mod error;
pub mod eval;
pub mod lora;
pub mod model;
pub mod recipe;
pub mod shapes;
pub mod trainer;

pub use dataset::{Dataset, FolderDataset, Sample};
pub use error::{Result, TrainError};
pub use shapes::ShapesDataset;
pub use trainer::TrainOptions;
