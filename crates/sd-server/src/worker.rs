//! The worker thread: owns the pipeline, takes work from the queue in
//! order, runs it, writes the PNGs, records the outcome and answers the
//! waiting request. Progress and previews go to [`Shared::progress`].

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use sd_pipeline::front::ModelSource;
use sd_pipeline::parameters::encode_png;
use sd_pipeline::{PipelineError, Request, StableDiffusion};

use crate::db::Status;
use crate::error::ApiError;
use crate::job::{Job, JobOutput, JobParameters};
use crate::queue::Work;
use crate::state::Shared;

/// Starts the worker on its own thread with `pipeline` loaded.
pub fn spawn(shared: Arc<Shared>, pipeline: StableDiffusion) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("sd-worker".into())
        .spawn(move || run(&shared, pipeline))
        .expect("the OS starts a thread")
}

fn run(shared: &Shared, mut pipeline: StableDiffusion) {
    let max_images = shared.config.max_batch_images.max(1);
    while let Some(work) = shared.queue.take(max_images) {
        match work {
            Work::Generate(jobs) => generate(shared, &mut pipeline, jobs),
            Work::LoadModel { name, path, reply } => {
                let loaded = ModelSource::detect(&path.to_string_lossy())
                    .and_then(|source| Ok((shared.config.builder(&source).build()?, source)));
                let _ = reply.send(match loaded {
                    Ok((new, source)) => {
                        pipeline = new;
                        shared.set_model(source, pipeline.sampler());
                        Ok(())
                    }
                    Err(e) => Err(ApiError::field(
                        "sd_model_checkpoint",
                        format!("{name}: cannot load: {e}"),
                    )),
                });
            }
        }
    }
}

/// How one job of a run ended.
type Outcome = Result<Vec<RgbImage>, ApiError>;

fn generate(shared: &Shared, pipeline: &mut StableDiffusion, jobs: Vec<Job>) {
    let (cancelled, jobs): (Vec<Job>, Vec<Job>) =
        jobs.into_iter().partition(|j| j.cancel.is_cancelled());
    for job in cancelled {
        let id = job.id;
        finish(shared, job, Err(cancelled_error()), &[id]);
    }
    if jobs.is_empty() {
        return;
    }
    for job in &jobs {
        if let Err(e) = shared.db.mark_running(job.id) {
            eprintln!("sd serve: {e}");
        }
    }
    let started = Instant::now();
    // Jobs of one batch share their LoRAs (the batch key has them).
    let outcomes = match merge_loras(pipeline, jobs[0].checked.loras()) {
        Err(e) => jobs.iter().map(|_| Err(e.clone())).collect(),
        Ok(()) if jobs.len() == 1 => vec![run_alone(shared, pipeline, &jobs[0], started)],
        Ok(()) => run_batched(shared, pipeline, &jobs, started),
    };
    shared.clear_progress();
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        let outcome = if job.cancel.is_cancelled() {
            Err(cancelled_error())
        } else {
            outcome
        };
        finish(shared, job, outcome, &ids);
    }
}

/// Merges the job's LoRAs unless they are merged already; a file that
/// cannot be merged was named by the prompt.
fn merge_loras(
    pipeline: &mut StableDiffusion,
    loras: &[sd_pipeline::LoraSpec],
) -> Result<(), ApiError> {
    if pipeline.loras() == loras {
        return Ok(());
    }
    pipeline
        .set_loras(loras)
        .map(drop)
        .map_err(|e| ApiError::field("prompt", format!("cannot merge its LoRAs: {e}")))
}

pub(crate) fn cancelled_error() -> ApiError {
    ApiError::status(409, "cancelled", "the job was cancelled")
}

/// One job, its `n_iter` iterations one after another.
fn run_alone(shared: &Shared, pipeline: &StableDiffusion, job: &Job, started: Instant) -> Outcome {
    let mut images = Vec::new();
    for request in job.checked.requests() {
        images.extend(run_request(shared, pipeline, &request, &[job], started)?);
    }
    Ok(images)
}

/// Several txt2img jobs of one shape as one UNet batch: each image
/// conditioned on its own job's prompts, with its own seed.
fn run_batched(
    shared: &Shared,
    pipeline: &StableDiffusion,
    jobs: &[Job],
    started: Instant,
) -> Vec<Outcome> {
    // (a job that shares a batch is one run: its batch key says so)
    let requests: Vec<Request> = jobs.iter().flat_map(|j| j.checked.requests()).collect();
    let batch = match pipeline.combine_requests(&requests) {
        Ok(Some(batch)) => batch,
        // Prompts of different shapes (long prompts): one after another.
        Ok(None) => {
            return jobs
                .iter()
                .map(|job| run_alone(shared, pipeline, job, started))
                .collect()
        }
        Err(e) => return jobs.iter().map(|_| Err(pipeline_error(&e))).collect(),
    };
    let job_refs: Vec<&Job> = jobs.iter().collect();
    match run_request(shared, pipeline, &batch, &job_refs, started) {
        Ok(mut images) => jobs
            .iter()
            .map(|job| Ok(images.drain(..job.images()).collect()))
            .collect(),
        Err(e) => jobs.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// Runs `request` for `jobs`, reporting progress; stops when every job is
/// cancelled or the time limit passes.
fn run_request(
    shared: &Shared,
    pipeline: &StableDiffusion,
    request: &Request,
    jobs: &[&Job],
    started: Instant,
) -> Outcome {
    let scheduler = pipeline
        .scheduler_for(request)
        .map_err(|e| pipeline_error(&e))?;
    let limit = shared.config.limits.job_timeout;
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    let mut timed_out = false;
    let result = pipeline.generate_with(request, scheduler, &mut |info| {
        let latents = info.denoised.unwrap_or(info.latents);
        let preview = pipeline
            .preview(latents)
            .ok()
            .and_then(|images| images.into_iter().next());
        shared.report_step(&ids, info.step, info.total, preview);
        if started.elapsed() > limit {
            timed_out = true;
            return ControlFlow::Break(());
        }
        if jobs.iter().all(|j| j.cancel.is_cancelled()) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    match result {
        Ok(generation) => Ok(generation.images),
        Err(PipelineError::Cancelled { .. }) if timed_out => Err(time_limit(limit)),
        Err(PipelineError::Cancelled { .. }) => Err(cancelled_error()),
        Err(e) => Err(pipeline_error(&e)),
    }
}

fn time_limit(limit: Duration) -> ApiError {
    ApiError::status(
        504,
        "time_limit",
        format!("the job ran past the time limit of {} s", limit.as_secs()),
    )
}

/// A refused request names the A1111 field; anything else is a 500.
fn pipeline_error(error: &PipelineError) -> ApiError {
    match error {
        PipelineError::InvalidInput { .. } => ApiError::from_request(error),
        other => ApiError::status(500, "generation_failed", other.to_string()),
    }
}

/// Writes a finished job's PNGs, records the outcome and answers.
pub(crate) fn finish(shared: &Shared, job: Job, outcome: Outcome, batch: &[i64]) {
    let outcome = outcome.and_then(|images| write_images(shared, &job, &images, batch));
    let (status, error, files) = match &outcome {
        Ok((_, files)) => (Status::Done, None, files.clone()),
        Err(e) if e.error == "cancelled" => (Status::Cancelled, Some(e.detail.clone()), vec![]),
        Err(e) => (Status::Failed, Some(e.detail.clone()), vec![]),
    };
    let recorded: Vec<(u64, String)> = job.seeds.iter().copied().zip(files).collect();
    if let Err(e) = shared
        .db
        .finish(job.id, status, error.as_deref(), &recorded)
    {
        eprintln!("sd serve: job {}: {e}", job.id);
    }
    shared.metrics.job(
        status,
        job.queued_at.elapsed().as_secs_f64(),
        recorded.len(),
    );
    // Here, for every way a job ends (a job cancelled while queued is
    // taken, and answered, without running): else its slot stays taken.
    shared.queue.finished(&[job.id]);
    let _ = job.reply.send(outcome.map(|(output, _)| output));
}

/// The job's images as PNGs with their parameters, written under
/// `images/` (each to a temporary name, then renamed).
fn write_images(
    shared: &Shared,
    job: &Job,
    images: &[RgbImage],
    batch: &[i64],
) -> Result<(JobOutput, Vec<String>), ApiError> {
    let (model, sampler) = shared.model_and_sampler();
    let model = model.name();
    let mut output = JobOutput {
        id: job.id,
        pngs: Vec::new(),
        seeds: job.seeds.clone(),
        infotexts: Vec::new(),
        parameters: JobParameters::of(&job.checked, sampler.a1111_name(), &model),
        batch: batch.to_vec(),
    };
    if let Some(first) = images.first() {
        // The size the model chose when the request left it out.
        output.parameters.width = Some(first.width());
        output.parameters.height = Some(first.height());
    }
    let mut files = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let parameters = job
            .checked
            .generation_parameters(i, image.dimensions(), sampler, &model);
        let png = encode_png(image, &parameters).map_err(|e| pipeline_error(&e))?;
        let file = format!("{}-{i}.png", job.id);
        write_atomically(&shared.images_dir.join(&file), &png)
            .map_err(|e| ApiError::status(500, "storage", format!("cannot write {file}: {e}")))?;
        output.infotexts.push(parameters.infotext());
        output.pngs.push(png);
        files.push(file);
    }
    Ok((output, files))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp: PathBuf = path.with_extension("png.partial");
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path)
}
