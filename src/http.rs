//! The plain-HTTP side: the JSON Web Key Set that lets any service verify access tokens
//! offline, and the Prometheus metrics.

use std::sync::Arc;

use axum::{
    Json, Router,
    http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue},
    routing::get,
};
use jsonwebtoken::jwk::JwkSet;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::store::Store;

/// How long clients may cache the key set. Short enough that a newly listed key is seen well
/// before it starts signing (list it as a verification key first, then switch).
const JWKS_CACHE_CONTROL: &str = "public, max-age=300";

/// The Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /.well-known/jwks.json`: the public keys of every key that may have signed a live
/// token. `GET /metrics`: Prometheus metrics, with the pool's usage read at scrape time.
pub fn router(jwks: JwkSet, metrics: PrometheusHandle, store: Store) -> Router {
    let jwks = Arc::new(jwks);
    Router::new()
        .route(
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
        .route(
            "/metrics",
            get(move || {
                if let Some(pool) = store.pool_usage() {
                    crate::metrics::db_pool(pool.in_use, pool.idle, pool.max);
                }
                let body = crate::metrics::render(&metrics);
                async move {
                    (
                        [(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE))],
                        body,
                    )
                }
            }),
        )
}
