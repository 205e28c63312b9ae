//! A job: what one request asked for ([`JobSpec`]), and the queued work
//! with its seeds, cancellation flag, deadline and reply channel ([`Job`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use image::{GrayImage, RgbImage};
use sd_pipeline::{LoraSpec, SamplerKind};
use tokio::sync::oneshot;

use crate::error::ApiError;

/// Where the latents start.
#[derive(Debug, Clone)]
pub enum Source {
    /// txt2img.
    Noise,
    /// img2img, or inpainting with a mask.
    Image {
        image: RgbImage,
        mask: Option<GrayImage>,
        strength: f64,
    },
}

/// A checked request.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// As given, `<lora:...>` tags included (what the PNG records).
    pub prompt: String,
    /// Without its LoRA tags: what the text encoder reads.
    pub text_prompt: String,
    /// The tags' LoRA files, merged for this job.
    pub loras: Vec<LoraSpec>,
    pub negative_prompt: String,
    pub steps: usize,
    pub cfg_scale: f64,
    /// `None`: random.
    pub seed: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// `None`: the model's own.
    pub sampler: Option<SamplerKind>,
    pub batch_size: usize,
    pub n_iter: usize,
    /// Text-encoder layers skipped from the last.
    pub clip_skip: usize,
    pub source: Source,
}

impl JobSpec {
    /// The seeds of every image, A1111's way: the first, then one up per image.
    pub fn seeds(&self) -> Vec<u64> {
        let first = self.seed.unwrap_or_else(sd_pipeline::random_seed);
        let count = (self.batch_size * self.n_iter) as u64;
        (0..count).map(|i| first.wrapping_add(i)).collect()
    }

    /// `"txt2img"`, `"img2img"` or `"inpaint"`.
    pub fn kind(&self) -> &'static str {
        match &self.source {
            Source::Noise => "txt2img",
            Source::Image { mask: None, .. } => "img2img",
            Source::Image { mask: Some(_), .. } => "inpaint",
        }
    }

    /// The parameters as stored and echoed (images left out).
    pub fn summary(&self, model: &str, sampler: &str) -> serde_json::Value {
        let strength = match &self.source {
            Source::Noise => None,
            Source::Image { strength, .. } => Some(*strength),
        };
        serde_json::json!({
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "steps": self.steps,
            "cfg_scale": self.cfg_scale,
            "width": self.width,
            "height": self.height,
            "sampler_name": sampler,
            "batch_size": self.batch_size,
            "n_iter": self.n_iter,
            "clip_skip": self.clip_skip + 1,
            "denoising_strength": strength,
            "model": model,
        })
    }
}

/// The images of a finished job, as PNG bytes with their parameters.
#[derive(Debug, Clone)]
pub struct JobOutput {
    pub id: i64,
    pub pngs: Vec<Vec<u8>>,
    pub seeds: Vec<u64>,
    pub infotexts: Vec<String>,
    pub parameters: serde_json::Value,
    /// The jobs that shared this job's UNet batch (itself included).
    pub batch: Vec<i64>,
}

/// Queued work on the model's device.
pub struct Job {
    pub id: i64,
    pub spec: Box<JobSpec>,
    pub seeds: Vec<u64>,
    pub cancel: CancelFlag,
    pub queued_at: Instant,
    pub reply: oneshot::Sender<Result<JobOutput, ApiError>>,
}

/// What several queued jobs must agree on to share one UNet batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchKey {
    width: Option<u32>,
    height: Option<u32>,
    steps: usize,
    sampler: Option<SamplerKind>,
    cfg_scale: u64,
    clip_skip: usize,
    loras: Vec<LoraSpec>,
}

impl Job {
    /// `None` for jobs that run alone (img2img, several iterations).
    pub fn batch_key(&self) -> Option<BatchKey> {
        let spec = &self.spec;
        if !matches!(spec.source, Source::Noise) || spec.n_iter != 1 {
            return None;
        }
        Some(BatchKey {
            width: spec.width,
            height: spec.height,
            steps: spec.steps,
            sampler: spec.sampler,
            cfg_scale: spec.cfg_scale.to_bits(),
            clip_skip: spec.clip_skip,
            loras: spec.loras.clone(),
        })
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
