//! A body declared larger than `--max-body-mb` is answered 413 only after it
//! has been read and thrown away. Answering at once and closing the
//! connection, as the body extractor does, races the client: one still
//! writing its body gets "broken pipe" and never reads the 413 that names the
//! problem (python-requests, ureq and curl all do).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::error::ApiError;
use crate::state::Shared;

/// Bodies declared beyond this many times the limit are not drained: the
/// connection is closed on them (the client may see a reset, as before).
const DRAIN_FACTOR: u64 = 8;

pub async fn refuse_after_draining(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let limit = shared.config.limits.max_body_bytes as u64;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|&n| n > limit) else {
        return next.run(request).await;
    };
    if declared <= limit.saturating_mul(DRAIN_FACTOR) {
        let mut body = request.into_body();
        while let Some(Ok(_)) = body.frame().await {}
    }
    let mut error = ApiError::field(
        "body",
        format!(
            "the request body is {declared} bytes, over this server's limit of {limit} \
             (--max-body-mb)"
        ),
    );
    error.status = 413;
    error.into_response()
}
