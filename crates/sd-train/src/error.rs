//! The error type of `sd-train`.

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The dataset cannot be used (unreadable image, missing caption, ...).
    #[error("training data: {0}")]
    Data(String),

    #[error("training: {0}")]
    Config(String),

    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    #[error(transparent)]
    Clip(#[from] sd_clip::ClipError),

    #[error(transparent)]
    UNet(#[from] sd_unet::UNetError),

    #[error(transparent)]
    Vae(#[from] sd_vae::VaeError),

    #[error(transparent)]
    Scheduler(#[from] sd_scheduler::SchedulerError),

    #[error(transparent)]
    Pipeline(#[from] sd_pipeline::PipelineError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
