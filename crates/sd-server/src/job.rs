//! A job: a checked request of the request layer ([`Checked`]), what the
//! server records and echoes of it ([`JobParameters`]), and the queued work
//! with its seeds, cancellation flag and reply channel ([`Job`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sd_pipeline::front::{BatchKey, Checked, Source};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::ApiError;

/// The parameters as stored in the history and echoed in A1111's
/// `parameters` (images left out), under A1111's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobParameters {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub cfg_scale: f64,
    /// `None`: the model's native size (until the images are made).
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// A1111's name of the sampler that runs.
    pub sampler_name: String,
    pub batch_size: usize,
    pub n_iter: usize,
    /// A1111's "Clip skip" (1: the last layer).
    pub clip_skip: usize,
    /// img2img and inpainting only.
    pub denoising_strength: Option<f64>,
    /// The model's name (never its path).
    pub model: String,
}

impl JobParameters {
    /// What `checked` records, run by `sampler` (A1111 name) on `model`.
    pub fn of(checked: &Checked, sampler: &str, model: &str) -> Self {
        let p = checked.parameters();
        JobParameters {
            prompt: p.prompt.clone(),
            negative_prompt: p.negative_prompt.clone(),
            steps: p.steps,
            cfg_scale: p.guidance,
            width: p.width,
            height: p.height,
            sampler_name: sampler.to_string(),
            batch_size: p.batch_size,
            n_iter: p.n_iter,
            clip_skip: p.prompt_options.clip_skip + 1,
            denoising_strength: match &p.source {
                Source::Image { strength, .. } => Some(*strength),
                _ => None,
            },
            model: model.to_string(),
        }
    }
}

/// `"txt2img"`, `"img2img"` or `"inpaint"`.
pub fn kind(checked: &Checked) -> &'static str {
    match &checked.parameters().source {
        Source::Image { mask: Some(_), .. } => "inpaint",
        Source::Image { mask: None, .. } => "img2img",
        _ => "txt2img",
    }
}

/// The images of a finished job, as PNG bytes with their parameters.
#[derive(Debug, Clone)]
pub struct JobOutput {
    pub id: i64,
    pub pngs: Vec<Vec<u8>>,
    pub seeds: Vec<u64>,
    pub infotexts: Vec<String>,
    pub parameters: JobParameters,
    /// The jobs that shared this job's UNet batch (itself included).
    pub batch: Vec<i64>,
}

/// Queued work on the model's device.
pub struct Job {
    pub id: i64,
    pub checked: Box<Checked>,
    /// The seed each image records.
    pub seeds: Vec<u64>,
    pub cancel: CancelFlag,
    pub queued_at: Instant,
    pub reply: oneshot::Sender<Result<JobOutput, ApiError>>,
}

impl Job {
    /// `None` for jobs that run alone (img2img, several iterations).
    pub fn batch_key(&self) -> Option<BatchKey> {
        self.checked.batch_key()
    }

    /// Images this job makes.
    pub fn images(&self) -> usize {
        self.seeds.len()
    }
}

/// Set to cancel a job, queued or running: by `/sdapi/v1/interrupt`, by
/// `POST /api/v1/jobs/{id}/cancel`, or by the client going away.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
