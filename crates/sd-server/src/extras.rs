//! `/sdapi/v1/upscalers` and `/sdapi/v1/extra-single-image`: A1111's Extras
//! tab over HTTP. The body is the request layer's
//! (`sd_pipeline::front::extras`); the upscaler is looked up by name among
//! those listed, never joined to a path.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use base64::Engine;
use image::imageops::FilterType;
use sd_pipeline::front::extras::{Extras, ExtrasRequest};
use sd_pipeline::resample::resize_lanczos;
use serde_json::{json, Value};

use crate::a1111::parse_body;
use crate::error::ApiError;
use crate::models::{upscalers, UpscalerEntry};
use crate::state::Shared;

type App = State<Arc<Shared>>;

pub async fn list(State(shared): App) -> Json<Vec<UpscalerEntry>> {
    Json(upscalers(shared.config.upscalers_dir.as_deref()))
}

pub async fn single_image(
    State(shared): App,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let bytes = crate::routes::body(bytes)?;
    let request: ExtrasRequest = parse_body(&bytes)?;
    let config = shared.config.clone();
    let png = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let extras = request.check().map_err(|e| ApiError::from_request(&e))?;
        let entries = upscalers(config.upscalers_dir.as_deref());
        let entry = entries
            .into_iter()
            .find(|e| e.name == extras.upscaler)
            .ok_or_else(|| {
                let message = format!("{:?} is not among /sdapi/v1/upscalers", extras.upscaler);
                ApiError::field("upscaler_1", message)
            })?;
        let image = enlarge(&extras, &entry, (config.device, config.dtype))?;
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| ApiError::status(500, "internal", e.to_string()))?;
        Ok(png)
    })
    .await
    .map_err(|e| ApiError::status(500, "internal", e.to_string()))??;
    let image = base64::engine::general_purpose::STANDARD.encode(png);
    Ok(Json(json!({"html_info": "", "image": image})))
}

/// The image at the size asked: `None` leaves it as it is; `Lanczos` (as
/// Pillow's, A1111's) and `Nearest` resize; a model enlarges by its scale,
/// then the result is resized (Lanczos) to the size asked when that differs.
fn enlarge(
    extras: &Extras,
    entry: &UpscalerEntry,
    (device, kind): (tch::Device, tch::Kind),
) -> Result<image::RgbImage, ApiError> {
    let (w, h) = extras.size;
    let resize = |image: &image::RgbImage, filter| image::imageops::resize(image, w, h, filter);
    let Some(path) = &entry.model_path else {
        return Ok(match entry.name.as_str() {
            "Lanczos" => resize_lanczos(&extras.image, w, h),
            "Nearest" => resize(&extras.image, FilterType::Nearest),
            _ => extras.image.clone(),
        });
    };
    let fail = |e: sd_upscale::UpscaleError| ApiError::field("upscaler_1", e.to_string());
    let model = sd_upscale::Upscaler::open(path, device, kind).map_err(fail)?;
    sd_pipeline::resample::upscale_to(&model, &extras.image, (w, h)).map_err(fail)
}
