//! Browsers: gRPC-Web calls, CORS, and the HttpOnly cookie that carries their refresh token so
//! that page scripts never see it.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::Either;
use tonic::{
    Request,
    body::Body,
    codegen::{
        Bytes, StdError,
        http::{self, HeaderName, HeaderValue, Method, header},
    },
    metadata::{AsciiMetadataValue, errors::InvalidMetadataValue},
};
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::Layer as _;
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

use crate::config::CookieSettings;

/// Request extension marking a call that arrived as gRPC-Web. tonic-web rewrites the content
/// type before the service sees it, so [`BrowserSplit`] records it first.
#[derive(Debug, Clone, Copy)]
pub struct BrowserCall;

/// Whether `request` came from a browser through gRPC-Web.
pub fn is_browser_call<T>(request: &Request<T>) -> bool {
    request.extensions().get::<BrowserCall>().is_some()
}

/// What a request is, from its version and headers, looked at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// Plain gRPC over HTTP/2 with no `Origin`: another service. Nothing to translate, no
    /// CORS to answer.
    Service,
    /// gRPC-Web (HTTP/1.1 or HTTP/2), tagged with [`BrowserCall`].
    BrowserGrpcWeb,
    /// Anything else: a CORS preflight, plain gRPC with an `Origin`, a stray HTTP/1.1
    /// request. CORS and tonic-web answer it as they would any request.
    Other,
}

impl Caller {
    fn of<B>(request: &http::Request<B>) -> Self {
        let headers = request.headers();
        let grpc_web = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc-web"));
        if grpc_web {
            Self::BrowserGrpcWeb
        } else if request.version() == http::Version::HTTP_2
            && !headers.contains_key(header::ORIGIN)
        {
            Self::Service
        } else {
            Self::Other
        }
    }
}

/// The browser door: gRPC-Web translation (tonic-web) behind CORS for only the listed origins,
/// with credentials (the cookie), and the gRPC status headers readable by the page. An empty
/// list allows no cross-origin call.
///
/// Only requests from browsers, or that might be, pass through it: a service's plain gRPC call
/// goes straight on, and pays on every call for neither a translation it does not need nor
/// `Vary` headers nothing reads.
pub fn browsers(origins: &[String]) -> Result<BrowserLayer, http::header::InvalidHeaderValue> {
    let origins = origins
        .iter()
        .map(|origin| HeaderValue::from_str(origin))
        .collect::<Result<Vec<_>, _>>()?;
    let cors = CorsLayer::new()
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
        .max_age(Duration::from_secs(24 * 3600));
    Ok(BrowserLayer(Arc::new(cors)))
}

/// See [`browsers`].
#[derive(Debug, Clone)]
pub struct BrowserLayer(Arc<CorsLayer>);

impl<S> tower::Layer<S> for BrowserLayer {
    type Service = BrowserSplit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BrowserSplit {
            cors: Arc::clone(&self.0),
            inner,
        }
    }
}

/// Sends a service's call straight to `inner`, and any other request through CORS and tonic-web
/// around it (made for that request alone). The server clones its service stack for every
/// call, and this clone costs a reference count, not a copy of the CORS rules.
#[derive(Debug, Clone)]
pub struct BrowserSplit<S> {
    cors: Arc<CorsLayer>,
    inner: S,
}

/// What a browser request goes through.
type BrowserStack<S> = Cors<GrpcWebService<S>>;

impl<S, ResBody> tower::Service<http::Request<Body>> for BrowserSplit<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<StdError> + std::fmt::Display,
{
    type Response = http::Response<Either<ResBody, Body>>;
    type Error = S::Error;
    type Future =
        SplitFuture<S::Future, <BrowserStack<S> as tower::Service<http::Request<Body>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let caller = Caller::of(&request);
        if caller == Caller::Service {
            return SplitFuture {
                door: Door::Service {
                    future: self.inner.call(request),
                },
            };
        }
        if caller == Caller::BrowserGrpcWeb {
            request.extensions_mut().insert(BrowserCall);
        }
        // The ready service goes into the browser stack; a clone waits for the next call.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let mut browser = self.cors.layer(GrpcWebLayer::new().layer(ready));
        SplitFuture {
            door: Door::Browser {
                future: browser.call(request),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of either door, its body as either kind.
    #[derive(Debug)]
    pub struct SplitFuture<S, B> {
        #[pin]
        door: Door<S, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = DoorProjection]
    #[derive(Debug)]
    enum Door<S, B> {
        Service { #[pin] future: S },
        Browser { #[pin] future: B },
    }
}

impl<S, B, ResBody, E> Future for SplitFuture<S, B>
where
    S: Future<Output = Result<http::Response<ResBody>, E>>,
    B: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = Result<http::Response<Either<ResBody, Body>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().door.project() {
            DoorProjection::Service { future } => future
                .poll(cx)
                .map_ok(|response| response.map(Either::Left)),
            DoorProjection::Browser { future } => future
                .poll(cx)
                .map_ok(|response| response.map(Either::Right)),
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
    fn only_plain_grpc_over_http2_without_an_origin_skips_the_browser_door() {
        let request = |version, content_type: &'static str, origin: Option<&'static str>| {
            let mut builder = http::Request::builder()
                .version(version)
                .header(header::CONTENT_TYPE, content_type);
            if let Some(origin) = origin {
                builder = builder.header(header::ORIGIN, origin);
            }
            builder.body(()).unwrap()
        };
        let h2 = http::Version::HTTP_2;
        let h1 = http::Version::HTTP_11;
        for content_type in ["application/grpc-web+proto", "application/grpc-web-text"] {
            for version in [h1, h2] {
                let caller = Caller::of(&request(version, content_type, None));
                assert_eq!(caller, Caller::BrowserGrpcWeb, "{content_type} {version:?}");
            }
        }
        let plain = request(h2, "application/grpc", None);
        assert_eq!(Caller::of(&plain), Caller::Service);
        let with_origin = request(h2, "application/grpc", Some("https://app.example.com"));
        assert_eq!(Caller::of(&with_origin), Caller::Other);
        assert_eq!(
            Caller::of(&request(h1, "application/grpc", None)),
            Caller::Other
        );
    }
}
