//! The error type of `sd-train`.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The dataset cannot be used (unreadable image, missing caption, ...).
    #[error("training data: {0}")]
    Data(String),

    /// Options or a config that cannot be used.
    #[error("training: {0}")]
    Config(String),

    /// An error from sd-core (files, weights, devices).
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    /// From the tokenizer or a text encoder.
    #[error(transparent)]
    Clip(#[from] sd_clip::ClipError),

    /// From the UNet.
    #[error(transparent)]
    UNet(#[from] sd_unet::UNetError),

    /// From the VAE.
    #[error(transparent)]
    Vae(#[from] sd_vae::VaeError),

    /// From the sampler.
    #[error(transparent)]
    Scheduler(#[from] sd_scheduler::SchedulerError),

    /// From the pipeline.
    #[error(transparent)]
    Pipeline(#[from] sd_pipeline::PipelineError),

    /// An error libtorch reported.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The crate's result type.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
