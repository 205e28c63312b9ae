//! What the handlers and the worker share: settings, database, queue,
//! counters, the served model, and where the running job is.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use image::RgbImage;
use sd_pipeline::front::ModelSource;
use sd_pipeline::SamplerKind;

use crate::config::ServerConfig;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::queue::Queue;

/// The running job's progress, for `/sdapi/v1/progress`.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The jobs of the running batch (empty when idle).
    pub jobs: Vec<i64>,
    /// Steps done and in all.
    pub step: usize,
    pub total: usize,
    pub started: Option<Instant>,
    /// The latest preview (first image of the batch).
    pub preview: Option<RgbImage>,
}

pub struct Shared {
    pub config: ServerConfig,
    pub db: Db,
    pub queue: Queue,
    pub metrics: Metrics,
    pub images_dir: PathBuf,
    progress: Mutex<Progress>,
    /// The served model and its default sampler.
    model: Mutex<(ModelSource, SamplerKind)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn new(config: ServerConfig, db: Db, images_dir: PathBuf, sampler: SamplerKind) -> Self {
        Shared {
            queue: Queue::new(config.limits.queue_capacity),
            model: Mutex::new((config.model.clone(), sampler)),
            config,
            db,
            metrics: Metrics::default(),
            images_dir,
            progress: Mutex::default(),
        }
    }

    pub fn model_and_sampler(&self) -> (ModelSource, SamplerKind) {
        lock(&self.model).clone()
    }

    pub fn set_model(&self, model: ModelSource, sampler: SamplerKind) {
        *lock(&self.model) = (model, sampler);
    }

    pub fn progress(&self) -> Progress {
        lock(&self.progress).clone()
    }

    pub fn report_step(&self, jobs: &[i64], step: usize, total: usize, preview: Option<RgbImage>) {
        let mut progress = lock(&self.progress);
        if progress.jobs != jobs {
            *progress = Progress {
                jobs: jobs.to_vec(),
                started: Some(Instant::now()),
                ..Progress::default()
            };
        }
        progress.step = step + 1;
        progress.total = total;
        if preview.is_some() {
            progress.preview = preview;
        }
    }

    pub fn clear_progress(&self) {
        *lock(&self.progress) = Progress::default();
    }
}
