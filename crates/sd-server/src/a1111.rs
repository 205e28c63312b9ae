//! AUTOMATIC1111's response body, and JSON bodies read with the field named
//! on a wrong type. The request body and its checks are the request
//! layer's (`sd_pipeline::front::a1111`), shared with the Ray Serve app.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// A1111's response: base64 PNGs, the parameters as understood, and `info`
/// (a JSON string, as A1111 sends it) with the seeds used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateResponse {
    /// Base64 PNGs, with the parameters in their text chunks.
    pub images: Vec<String>,
    /// The request's parameters as the server understood them.
    pub parameters: serde_json::Value,
    /// A JSON object as a string: `seed`, `all_seeds`, `infotexts`, `job_id`, ...
    pub info: String,
}

/// Parses a JSON body; a wrong type names the field (`steps`, `width`, ...).
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            ApiError {
                status: 400,
                ..ApiError::field("body", format!("malformed JSON: {inner}"))
            }
        } else {
            ApiError::field(path, inner.to_string())
        }
    })
}
