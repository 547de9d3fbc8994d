//! The plain-HTTP side: the JSON Web Key Set that lets any service verify access tokens
//! offline.

use std::sync::Arc;

use axum::{
    Json, Router,
    http::header::{CACHE_CONTROL, HeaderValue},
    routing::get,
};
use jsonwebtoken::jwk::JwkSet;

/// How long clients may cache the key set. Short enough that a newly listed key is seen well
/// before it starts signing (list it as a verification key first, then switch).
const JWKS_CACHE_CONTROL: &str = "public, max-age=300";

/// `GET /.well-known/jwks.json`: the public keys of every key that may have signed a live token.
pub fn router(jwks: JwkSet) -> Router {
    let jwks = Arc::new(jwks);
    Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let jwks = Arc::clone(&jwks);
            async move {
                (
                    [(CACHE_CONTROL, HeaderValue::from_static(JWKS_CACHE_CONTROL))],
                    Json(jwks.as_ref().clone()),
                )
            }
        }),
    )
}
