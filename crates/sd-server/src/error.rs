//! The errors of `sd-server`: [`ServerError`] when the server cannot start,
//! [`ApiError`] for one request (an HTTP status and the field at fault).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Why the server could not start (or stopped).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A setting that cannot be used, named.
    #[error("{setting}: {message}")]
    Config {
        /// The setting (`--host`, `--api-key`, ...).
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The history database.
    #[error("database {path}: {source}")]
    Database {
        /// The database file.
        path: std::path::PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// Loading the model.
    #[error(transparent)]
    Pipeline(#[from] sd_pipeline::PipelineError),
    /// Files and sockets.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl ServerError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ServerError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A refused or failed request: the status, the request field at fault
/// (`"body"` for the request as a whole) and a message naming it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiError {
    /// The HTTP status.
    #[serde(skip)]
    pub status: u16,
    /// A short class: `invalid_request`, `queue_full`, `cancelled`, ...
    pub error: &'static str,
    /// The request field at fault, as the JSON names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong, with the field and value named.
    pub detail: String,
    /// Seconds to wait before retrying (503 only).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 422: a field with an unusable value.
    pub fn field(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        let detail = detail.into();
        ApiError {
            status: 422,
            error: "invalid_request",
            detail: format!("{field}: {detail}"),
            field: Some(field),
            retry_after: None,
        }
    }

    /// A request the request layer refused: 422 naming A1111's JSON field.
    pub fn from_request(error: &sd_pipeline::PipelineError) -> Self {
        match error {
            sd_pipeline::PipelineError::InvalidInput { field, message } => ApiError::field(
                sd_pipeline::front::a1111::json_field(*field),
                message.clone(),
            ),
            other => ApiError::status(500, "internal", other.to_string()),
        }
    }

    /// Any other status, with no field.
    pub fn status(status: u16, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            field: None,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 503 with Retry-After.
    pub fn queue_full(capacity: usize, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::status(
                503,
                "queue_full",
                format!("the queue is full ({capacity} jobs); retry later"),
            )
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.error, self.detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after;
        let mut response = (status, axum::Json(self)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
