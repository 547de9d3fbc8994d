//! Browsers: gRPC-Web calls, CORS, and the HttpOnly cookie that carries their refresh token so
//! that page scripts never see it.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::Either;

use tonic::{
    Request,
    codegen::http::{self, HeaderName, HeaderValue, Method, header},
    metadata::{AsciiMetadataValue, errors::InvalidMetadataValue},
};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::CookieSettings;

/// Request extension marking a call that arrived as gRPC-Web. tonic-web rewrites the content
/// type before the service sees it, so [`mark_browser_calls`] records it first.
#[derive(Debug, Clone, Copy)]
pub struct BrowserCall;

/// Tags gRPC-Web requests with [`BrowserCall`]; runs outside the gRPC-Web translation.
pub fn mark_browser_calls<B>(mut request: http::Request<B>) -> http::Request<B> {
    let grpc_web = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc-web"));
    if grpc_web {
        request.extensions_mut().insert(BrowserCall);
    }
    request
}

/// Whether `request` came from a browser through gRPC-Web.
pub fn is_browser_call<T>(request: &Request<T>) -> bool {
    request.extensions().get::<BrowserCall>().is_some()
}

/// CORS for gRPC-Web: only the listed origins, with credentials (the cookie), and the gRPC
/// status headers readable by the page. An empty list allows no cross-origin call.
///
/// Only requests that name an `Origin` pass through it: browsers send one with every preflight
/// and every POST, while service-to-service calls, which send none, would pay on every call
/// for `Vary` headers nothing reads.
pub fn cors(
    origins: &[String],
) -> Result<BrowsersOnly<CorsLayer>, http::header::InvalidHeaderValue> {
    let origins = origins
        .iter()
        .map(|origin| HeaderValue::from_str(origin))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_credentials(true)
        .allow_methods([Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(24 * 3600)))
    .map(|layer| BrowsersOnly(Arc::new(layer)))
}

/// Applies the layer it holds to requests with an `Origin` header only (see [`cors`]).
#[derive(Debug, Clone)]
pub struct BrowsersOnly<L>(Arc<L>);

impl<L, S> tower::Layer<S> for BrowsersOnly<L> {
    type Service = OriginSplit<L, S>;

    fn layer(&self, inner: S) -> Self::Service {
        OriginSplit {
            browsers: Arc::clone(&self.0),
            inner,
        }
    }
}

/// Sends a request with an `Origin` through `browsers` (its layer is wrapped around `inner` for
/// that request alone), any other straight to `inner`. The server clones its service stack for
/// every call, and this clone costs a reference count, not a copy of the CORS rules.
#[derive(Debug, Clone)]
pub struct OriginSplit<L, S> {
    browsers: Arc<L>,
    inner: S,
}

impl<L, S, ReqBody> tower::Service<http::Request<ReqBody>> for OriginSplit<L, S>
where
    L: tower::Layer<S>,
    L::Service: tower::Service<http::Request<ReqBody>, Response = S::Response, Error = S::Error>,
    S: tower::Service<http::Request<ReqBody>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<<L::Service as tower::Service<http::Request<ReqBody>>>::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if request.headers().contains_key(header::ORIGIN) {
            // The ready service goes into the CORS wrapper; a clone waits for the next call.
            let clone = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, clone);
            Either::Left(self.browsers.layer(ready).call(request))
        } else {
            Either::Right(self.inner.call(request))
        }
    }
}

/// The refresh-token cookie: `HttpOnly` (no script reads it), `Secure`, `Path=/`, host-only.
#[derive(Debug, Clone)]
pub struct RefreshCookie {
    name: String,
    /// Everything after the value, but `Max-Age`.
    attributes: String,
}

impl RefreshCookie {
    /// The cookie as configured.
    pub fn new(settings: &CookieSettings) -> Self {
        Self {
            name: settings.name.clone(),
            attributes: format!(
                "Path=/; HttpOnly; Secure; SameSite={}",
                settings.same_site.as_str()
            ),
        }
    }

    /// The refresh token the browser sent in the cookie, if any.
    pub fn read<T>(&self, request: &Request<T>) -> Option<String> {
        request
            .metadata()
            .get_all("cookie")
            .iter()
            .filter_map(|header| header.to_str().ok())
            .flat_map(|header| header.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.name)
            .map(|(_, value)| value.to_owned())
    }

    /// `Set-Cookie` delivering `token` for `lifetime`.
    pub fn set(
        &self,
        token: &str,
        lifetime: Duration,
    ) -> Result<AsciiMetadataValue, InvalidMetadataValue> {
        let max_age = lifetime.as_secs();
        format!(
            "{}={token}; Max-Age={max_age}; {}",
            self.name, self.attributes
        )
        .try_into()
    }

    /// `Set-Cookie` deleting the cookie.
    pub fn clear(&self) -> Result<AsciiMetadataValue, InvalidMetadataValue> {
        format!("{}=; Max-Age=0; {}", self.name, self.attributes).try_into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SameSite;

    fn cookie() -> RefreshCookie {
        RefreshCookie::new(&CookieSettings {
            name: "__Host-authd_refresh".into(),
            same_site: SameSite::Strict,
        })
    }

    #[test]
    fn the_cookie_is_http_only_secure_and_host_wide() {
        let set = cookie().set("abc", Duration::from_secs(604_800)).unwrap();
        assert_eq!(
            set.to_str().unwrap(),
            "__Host-authd_refresh=abc; Max-Age=604800; Path=/; HttpOnly; Secure; SameSite=Strict"
        );
        assert!(
            cookie()
                .clear()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("__Host-authd_refresh=; Max-Age=0; Path=/; HttpOnly")
        );
    }

    #[test]
    fn the_token_is_found_among_other_cookies() {
        let mut request = Request::new(());
        let headers = request.metadata_mut();
        headers.append(
            "cookie",
            "theme=dark; __Host-authd_refresh_x=no".parse().unwrap(),
        );
        headers.append(
            "cookie",
            "__Host-authd_refresh=tok-en_1; lang=en".parse().unwrap(),
        );
        assert_eq!(cookie().read(&request).as_deref(), Some("tok-en_1"));
        assert_eq!(cookie().read(&Request::new(())), None);
    }

    #[test]
    fn only_grpc_web_requests_are_marked() {
        let request = |content_type: &'static str| {
            http::Request::builder()
                .header(header::CONTENT_TYPE, content_type)
                .body(())
                .unwrap()
        };
        for content_type in ["application/grpc-web+proto", "application/grpc-web-text"] {
            let marked = mark_browser_calls(request(content_type));
            assert!(marked.extensions().get::<BrowserCall>().is_some());
        }
        let native = mark_browser_calls(request("application/grpc"));
        assert!(native.extensions().get::<BrowserCall>().is_none());
    }
}
