//! The API key: `Authorization: Bearer KEY` (API clients) or HTTP basic
//! auth with KEY as the password (browsers ask for it themselves), on every
//! route but `/healthz` (which `routes::router` leaves outside this layer),
//! compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::error::ApiError;
use crate::state::Shared;

/// Whether `given` equals `key`, in time that depends only on `given`'s
/// length: both are hashed to SHA-256 and the digests compared with
/// `subtle`'s constant-time equality (never where they first differ, nor the
/// key's length). An empty key never matches.
pub fn same_key(given: &[u8], key: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    !key.is_empty() && bool::from(Sha256::digest(given).ct_eq(&Sha256::digest(key)))
}

/// The key a request carries, if any.
fn presented(request: &Request) -> Option<Vec<u8>> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.trim().as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials.trim())
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

pub async fn require_key(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &shared.config.api_key else {
        return next.run(request).await;
    };
    match presented(&request) {
        Some(given) if same_key(&given, key.as_bytes()) => next.run(request).await,
        _ => {
            let mut response = ApiError::status(
                401,
                "unauthorized",
                "this server needs its API key: Authorization: Bearer KEY",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sd serve\", charset=\"UTF-8\""),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_key;

    #[test]
    fn keys_compare_whole() {
        assert!(same_key(b"secret", b"secret"));
        assert!(!same_key(b"secreT", b"secret"));
        assert!(!same_key(b"secret-and-more", b"secret"));
        assert!(
            !same_key(b"secretsecret", b"secret"),
            "a repeated key is not the key"
        );
        assert!(!same_key(b"sec", b"secret"));
        assert!(!same_key(b"", b"secret"));
        assert!(!same_key(b"", b""), "an empty key never matches");
    }
}
