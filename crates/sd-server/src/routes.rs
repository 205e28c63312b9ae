//! The HTTP routes: A1111's `/sdapi/v1/*`, this server's `/api/v1/*`,
//! `/healthz`, `/metrics` and the web page at `/`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::a1111::{parse_body, GenerateResponse};
use crate::error::ApiError;
use crate::job::{CancelFlag, Job, JobOutput, JobParameters};
use crate::queue::Cancelled;
use crate::state::Shared;
use sd_pipeline::front::a1111::GenerateRequest;
use sd_pipeline::front::Checked;
use sd_pipeline::SamplerKind;

type App = State<Arc<Shared>>;
type ApiResult<T> = Result<T, ApiError>;

pub fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.config.limits.max_body_bytes;
    // Every route but the health check sits behind the API key.
    let guarded = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/sdapi/v1/txt2img", post(txt2img))
        .route("/sdapi/v1/img2img", post(img2img))
        .route("/sdapi/v1/samplers", get(samplers))
        .route("/sdapi/v1/sd-models", get(sd_models))
        .route("/sdapi/v1/loras", get(loras))
        .route("/sdapi/v1/upscalers", get(crate::extras::list))
        .route("/sdapi/v1/latent-upscale-modes", get(latent_upscale_modes))
        .route(
            "/sdapi/v1/extra-single-image",
            post(crate::extras::single_image),
        )
        .route("/sdapi/v1/options", get(options).post(set_options))
        .route("/sdapi/v1/progress", get(progress))
        .route("/sdapi/v1/interrupt", post(interrupt))
        .route("/api/v1/history", get(history))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/images/{file}", get(image_file))
        .fallback(|| async { ApiError::status(404, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::oversized::refuse_after_draining,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::auth::require_key,
        ));
    let mut router = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .merge(guarded);
    if !shared.config.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = shared
            .config
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        router = router.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods(tower_http::cors::Any)
                .allow_headers(tower_http::cors::Any),
        );
    }
    router.with_state(shared)
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// The body, or a 413/400 naming it.
pub(crate) fn body(bytes: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    bytes.map_err(|rejection| {
        let status = rejection.status().as_u16();
        ApiError {
            status,
            ..ApiError::field("body", rejection.body_text())
        }
    })
}

async fn txt2img(
    State(shared): App,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<GenerateResponse>> {
    generate(shared, bytes, false).await
}

async fn img2img(
    State(shared): App,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<GenerateResponse>> {
    generate(shared, bytes, true).await
}

async fn generate(
    shared: Arc<Shared>,
    bytes: Result<Bytes, BytesRejection>,
    img2img: bool,
) -> ApiResult<Json<GenerateResponse>> {
    let bytes = body(bytes)?;
    let request: GenerateRequest = parse_body(&bytes)?;
    // Decoding base64 images takes a while: off the async threads.
    let limits = shared.config.limits.request.clone();
    let lora_dir = shared.config.lora_dir.clone();
    let upscalers_dir = shared.config.upscalers_dir.clone();
    let checked = tokio::task::spawn_blocking(move || {
        // hires fix's `hr_upscaler` names a listed model, never a path
        let find = |name: &str| {
            let listed = crate::models::upscalers(upscalers_dir.as_deref());
            let entry = listed.into_iter().find(|u| u.name == name);
            entry
                .and_then(|u| u.model_path)
                .map(std::path::PathBuf::from)
        };
        request
            .parameters_with_upscalers(img2img, &find)?
            .check(&limits, lora_dir.as_deref())
    })
    .await
    .map_err(|e| ApiError::status(500, "internal", e.to_string()))?
    .map_err(|e| ApiError::from_request(&e))?;
    let output = submit(&shared, checked).await?;
    let images = output
        .pngs
        .iter()
        .map(|png| base64::engine::general_purpose::STANDARD.encode(png))
        .collect();
    let p = &output.parameters;
    let info = json!({
        "job_id": output.id,
        "prompt": p.prompt,
        "all_prompts": vec![&p.prompt; output.seeds.len()],
        "negative_prompt": p.negative_prompt,
        "seed": output.seeds.first(),
        "all_seeds": output.seeds,
        "width": p.width,
        "height": p.height,
        "sampler_name": p.sampler_name,
        "cfg_scale": p.cfg_scale,
        "steps": p.steps,
        "infotexts": output.infotexts,
        "batch_job_ids": output.batch,
    });
    Ok(Json(GenerateResponse {
        images,
        parameters: serde_json::to_value(&output.parameters).unwrap_or_default(),
        info: info.to_string(),
    }))
}

/// Cancels a job whose request went away before it finished.
struct CancelOnDrop(Option<CancelFlag>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.cancel();
        }
    }
}

/// `call` on the history database on a blocking thread (SQLite blocks;
/// the async threads serve other requests meanwhile).
async fn with_db<T: Send + 'static>(
    shared: &Arc<Shared>,
    call: impl FnOnce(&crate::db::Db) -> Result<T, crate::ServerError> + Send + 'static,
) -> ApiResult<T> {
    let owner = shared.clone();
    tokio::task::spawn_blocking(move || call(&owner.db))
        .await
        .map_err(|e| ApiError::status(500, "internal", e.to_string()))?
        .map_err(|e| ApiError::status(500, "database", e.to_string()))
}

/// Records, queues and awaits a job.
async fn submit(shared: &Arc<Shared>, checked: Checked) -> ApiResult<JobOutput> {
    let queue = &shared.queue;
    if queue.depth() >= queue.capacity() {
        return Err(ApiError::queue_full(queue.capacity(), retry_after(shared)));
    }
    let seeds = checked.image_seeds();
    let (model, sampler) = shared.model_and_sampler();
    let sampler = checked.parameters().sampler.unwrap_or(sampler).a1111_name();
    let model = model.name();
    let parameters = JobParameters::of(&checked, sampler, &model);
    let (kind, recorded) = (crate::job::kind(&checked), seeds.clone());
    let id = with_db(shared, move |db| {
        db.insert(kind, &model, &parameters, &recorded)
    })
    .await?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let cancel = CancelFlag::default();
    let job = Job {
        id,
        checked: Box::new(checked),
        seeds,
        cancel: cancel.clone(),
        queued_at: std::time::Instant::now(),
        reply,
    };
    if let Err(job) = queue.push(job) {
        let detail = "refused: the queue was full";
        let id = job.id;
        let _ = with_db(shared, move |db| {
            db.finish(id, crate::db::Status::Failed, Some(detail), &[])
        })
        .await;
        return Err(ApiError::queue_full(queue.capacity(), retry_after(shared)));
    }
    let mut guard = CancelOnDrop(Some(cancel));
    let result = answer.await.map_err(|_| {
        ApiError::status(
            503,
            "shutting_down",
            "the server stopped before this job ran",
        )
    });
    guard.0 = None;
    result?
}

/// Seconds until a slot is likely free: the mean job time so far.
fn retry_after(shared: &Shared) -> u64 {
    shared.metrics.mean_seconds().ceil().clamp(1.0, 600.0) as u64
}

async fn metrics(State(shared): App) -> Response {
    let waiting = shared.queue.waiting();
    let running = shared.queue.depth().saturating_sub(waiting);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(waiting, running),
    )
        .into_response()
}

async fn samplers() -> Json<Value> {
    let list: Vec<Value> = SamplerKind::A1111_NAMES
        .iter()
        .map(|(name, kind)| json!({"name": name, "aliases": [kind.name()], "options": {}}))
        .collect();
    Json(Value::Array(list))
}

/// Hires fix's latent modes, as A1111 lists them (`hr_upscaler` takes these
/// and the names in `/sdapi/v1/upscalers`).
async fn latent_upscale_modes() -> Json<Value> {
    let names = sd_pipeline::HiresUpscaler::latent_mode_names();
    Json(json!(names
        .iter()
        .map(|name| json!({"name": name}))
        .collect::<Vec<_>>()))
}

async fn sd_models(State(shared): App) -> Json<Vec<crate::models::ModelEntry>> {
    let (model, _) = shared.model_and_sampler();
    Json(crate::models::entries(
        &model,
        shared.config.models_dir.as_deref(),
    ))
}

async fn loras(State(shared): App) -> Json<Vec<crate::models::LoraEntry>> {
    Json(crate::models::loras(shared.config.lora_dir.as_deref()))
}

async fn options(State(shared): App) -> Json<Value> {
    let (model, _) = shared.model_and_sampler();
    Json(json!({
        "sd_model_checkpoint": crate::models::ModelEntry::of_source(&model).title,
        "CLIP_stop_at_last_layers": 1,
        "samples_format": "png",
    }))
}

/// A1111's options: only `sd_model_checkpoint` does anything here (the
/// others are accepted and ignored, as clients send whole option sets).
async fn set_options(
    State(shared): App,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let options: serde_json::Map<String, Value> = parse_body(&body(bytes)?)?;
    let Some(name) = options.get("sd_model_checkpoint") else {
        return Ok(Json(Value::Null));
    };
    let field = "sd_model_checkpoint";
    let name = name
        .as_str()
        .ok_or_else(|| ApiError::field(field, format!("{name} is not a string")))?;
    let path =
        crate::models::resolve(name, shared.config.models_dir.as_deref()).ok_or_else(|| {
            ApiError::field(field, format!("{name:?} is not among /sdapi/v1/sd-models"))
        })?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    shared.queue.push_load(name.to_string(), path, reply);
    answer
        .await
        .map_err(|_| ApiError::status(503, "shutting_down", "the server is stopping"))??;
    Ok(Json(Value::Null))
}

#[derive(Deserialize)]
struct ProgressQuery {
    #[serde(default)]
    skip_current_image: bool,
}

async fn progress(State(shared): App, Query(query): Query<ProgressQuery>) -> Json<Value> {
    let p = shared.progress();
    let fraction = if p.total > 0 {
        p.step as f64 / p.total as f64
    } else {
        0.0
    };
    let elapsed = p.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let eta = if fraction > 0.0 {
        elapsed / fraction - elapsed
    } else {
        0.0
    };
    let image = match (&p.preview, query.skip_current_image) {
        (Some(preview), false) => png_base64(preview),
        _ => None,
    };
    Json(json!({
        "progress": fraction,
        "eta_relative": eta,
        "state": {
            "job": p.jobs.first().map(|id| format!("job-{id}")).unwrap_or_default(),
            "job_ids": p.jobs,
            "job_count": shared.queue.depth(),
            "sampling_step": p.step,
            "sampling_steps": p.total,
            "interrupted": false,
            "skipped": false,
        },
        "current_image": image,
        "textinfo": null,
    }))
}

fn png_base64(image: &image::RgbImage) -> Option<String> {
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

async fn interrupt(State(shared): App) -> Json<Value> {
    Json(json!({"interrupted": shared.queue.interrupt()}))
}

#[derive(Deserialize)]
struct Page {
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    offset: usize,
}

fn default_limit() -> usize {
    50
}

async fn history(
    State(shared): App,
    query: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(page) = query.map_err(|e| ApiError {
        status: 400,
        ..ApiError::field("query", e.body_text())
    })?;
    if page.limit == 0 || page.limit > 500 {
        return Err(ApiError::field(
            "limit",
            format!("{} is outside 1..=500", page.limit),
        ));
    }
    let (items, total) = with_db(&shared, move |db| db.history(page.limit, page.offset)).await?;
    let mut headers = HeaderMap::new();
    headers.insert("x-total-count", HeaderValue::from(total));
    Ok((headers, Json(items)).into_response())
}

async fn job(State(shared): App, Path(id): Path<i64>) -> ApiResult<Json<crate::db::HistoryItem>> {
    with_db(&shared, move |db| db.job(id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::status(404, "not_found", format!("no job {id}")))
}

async fn cancel(State(shared): App, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    match shared.queue.cancel(id) {
        Cancelled::Queued(job) => {
            // Answered now, not when the worker would have reached it (it
            // writes the history: off the async threads).
            let owner = shared.clone();
            tokio::task::spawn_blocking(move || {
                crate::worker::finish(&owner, *job, Err(crate::worker::cancelled_error()), &[id])
            })
            .await
            .map_err(|e| ApiError::status(500, "internal", e.to_string()))?;
            Ok(Json(json!({"id": id, "was": "queued"})))
        }
        Cancelled::Running => Ok(Json(json!({"id": id, "was": "running"}))),
        Cancelled::NotFound => Err(ApiError::status(
            404,
            "not_found",
            format!("job {id} is neither queued nor running"),
        )),
    }
}

/// A generated PNG; only names the server writes (`<job>-<index>.png`).
async fn image_file(State(shared): App, Path(file): Path<String>) -> ApiResult<Response> {
    let valid = file
        .strip_suffix(".png")
        .and_then(|stem| stem.split_once('-'))
        .is_some_and(|(job, index)| {
            !job.is_empty()
                && !index.is_empty()
                && job.bytes().chain(index.bytes()).all(|b| b.is_ascii_digit())
        });
    if !valid {
        return Err(ApiError::status(
            404,
            "not_found",
            format!("no image {file:?}"),
        ));
    }
    let bytes = tokio::fs::read(shared.images_dir.join(&file))
        .await
        .map_err(|_| ApiError::status(404, "not_found", format!("no image {file:?}")))?;
    Ok(([(header::CONTENT_TYPE, "image/png")], bytes).into_response())
}
