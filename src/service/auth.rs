//! Bearer-token authentication. Tokens are 32 random bytes, hex; the store keeps only their
//! sha256, so a leaked database does not leak usable tokens.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{ApiError, Shared};
use crate::store::TokenRow;

/// Prefix that makes a ClassGuard token recognisable in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "cg_";

/// A new token value (shown once) and a webhook signing secret.
pub fn new_token() -> (String, String) {
    let mut rng = rand::rng();
    let mut t = [0u8; 32];
    rng.fill_bytes(&mut t);
    let mut s = [0u8; 32];
    rng.fill_bytes(&mut s);
    (
        format!("{TOKEN_PREFIX}{}", hex::encode(t)),
        format!("whsec_{}", hex::encode(s)),
    )
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The authenticated caller of a request.
pub struct Caller(pub TokenRow);

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let tus = parts.uri.path().starts_with("/files");
        let unauthorized = |m: &str| {
            let e = ApiError::new(StatusCode::UNAUTHORIZED, m.to_string());
            if tus {
                e.tus()
            } else {
                e
            }
        };
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("Authorization must be: Bearer <token>"))?;
        let hash = token_hash(token);
        match state.db(move |s| s.token_by_hash(&hash)).await? {
            Some(t) => Ok(Caller(t)),
            None => Err(unauthorized("unknown or revoked token")),
        }
    }
}
