//! A tower layer for gRPC servers: the bearer token of every request is verified before the
//! service sees it, and its claims go in the request's extensions.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::header::AUTHORIZATION;
use tonic::body::Body;

use crate::{AccessClaims, Verifier};

/// Verifies `authorization: Bearer <token>` on every request. A missing, malformed or refused
/// token is answered with UNAUTHENTICATED (a stale feed, UNAVAILABLE) without reaching the
/// service; an accepted one reaches it with its `Arc<AccessClaims>` in the extensions
/// (`request.extensions().get::<Arc<AccessClaims>>()` in a tonic handler).
///
/// ```no_run
/// # async fn example(verifier: authd_verifier::Verifier) -> Result<(), Box<dyn std::error::Error>> {
/// use authd_verifier::VerifyLayer;
/// # let service = tonic_health::server::health_reporter().1;
/// tonic::transport::Server::builder()
///     .layer(VerifyLayer::new(verifier))
///     .add_service(service)
///     .serve("127.0.0.1:50052".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct VerifyLayer {
    verifier: Verifier,
}

impl VerifyLayer {
    /// Verifies with `verifier`.
    pub fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }
}

impl<S> tower::Layer<S> for VerifyLayer {
    type Service = VerifyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyService {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// See [`VerifyLayer`].
#[derive(Debug, Clone)]
pub struct VerifyService<S> {
    inner: S,
    verifier: Verifier,
}

impl<S, B> tower::Service<http::Request<B>> for VerifyService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is not ready; the instance polled ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let Some(token) = bearer_token(&request) else {
                let status = tonic::Status::unauthenticated("a bearer access token is required");
                return Ok(status.into_http());
            };
            match verifier.verify(token).await {
                Ok(claims) => {
                    request.extensions_mut().insert::<Arc<AccessClaims>>(claims);
                    inner.call(request).await
                }
                Err(refused) => Ok(tonic::Status::from(refused).into_http()),
            }
        })
    }
}

/// The token of an `authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token<B>(request: &http::Request<B>) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_scheme_with_a_token_is_read() {
        let with = |value: &str| {
            http::Request::builder()
                .header(AUTHORIZATION, value)
                .body(())
                .unwrap()
        };
        assert_eq!(bearer_token(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&with("Basic abc")), None);
        assert_eq!(bearer_token(&with("Bearer ")), None);
        assert_eq!(bearer_token(&http::Request::new(())), None);
    }
}
