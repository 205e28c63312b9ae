//! The error type of `sd-pipeline`.

use std::path::PathBuf;

use crate::front::Field;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The model folder lacks something the pipeline needs.
    #[error("{path}: {message}")]
    Model {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A request value that cannot be used, with the field named: each
    /// frontend maps [`Field`] to its own option or JSON name.
    #[error("request: {field}: {message}")]
    InvalidInput {
        /// The field (or builder option) at fault.
        field: Field,
        /// What is wrong.
        message: String,
    },

    /// The per-step callback asked to stop.
    #[error("generation cancelled at step {step}")]
    Cancelled {
        /// The step (0-based) at which the callback asked to stop.
        step: usize,
    },

    /// From the tokenizer or a text encoder.
    #[error(transparent)]
    Clip(#[from] sd_clip::ClipError),

    /// From the UNet.
    #[error(transparent)]
    UNet(#[from] sd_unet::UNetError),

    /// From SD3's T5 encoder or its tokenizer.
    #[error(transparent)]
    T5(#[from] sd_t5::T5Error),

    /// From SD3's transformer.
    #[error(transparent)]
    Transformer(#[from] sd_mmdit::MmditError),

    /// From FLUX's transformer.
    #[error(transparent)]
    Flux(#[from] sd_flux::FluxError),

    /// From the VAE.
    #[error(transparent)]
    Vae(#[from] sd_vae::VaeError),

    /// From the sampler.
    #[error(transparent)]
    Scheduler(#[from] sd_scheduler::SchedulerError),

    /// An error from sd-ip-adapter (an adapter that does not fit).
    #[error(transparent)]
    IpAdapter(#[from] sd_ip_adapter::IpAdapterError),

    /// An error from sd-core (files, weights, devices).
    #[error(transparent)]
    Core(#[from] sd_core::CoreError),

    /// An error from sd-lora (LoRA and embedding files).
    #[error(transparent)]
    Lora(#[from] sd_lora::LoraError),

    /// From a ControlNet.
    #[error(transparent)]
    ControlNet(#[from] sd_controlnet::ControlNetError),

    /// An error libtorch reported.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl PipelineError {
    pub(crate) fn request(field: Field, message: impl Into<String>) -> Self {
        PipelineError::InvalidInput {
            field,
            message: message.into(),
        }
    }

    /// The first of `values` that is not a finite number, named.
    pub(crate) fn require_finite(values: &[(Field, f64)]) -> Result<()> {
        match values.iter().find(|(_, v)| !v.is_finite()) {
            Some((field, value)) => Err(Self::request(*field, format!("{value} is not a number"))),
            None => Ok(()),
        }
    }

    pub(crate) fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        PipelineError::Model {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;
