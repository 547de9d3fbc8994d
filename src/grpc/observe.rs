//! What every gRPC call leaves behind, whichever service answers it (AuthService, health,
//! reflection): one log line, its count and latency in the metrics, and when tracing is on a
//! server span that continues the caller's W3C `traceparent`.
//!
//! The call's status is read where gRPC puts it: the response headers of a refusal
//! (trailers-only), else the trailers at the end of the body. A body dropped before its
//! trailers is a call the client cancelled.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use metrics::{Counter, Histogram};
use prost::Message as _;
use tonic::{Code, codegen::http};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    guarded_body::{FrameWatch, GuardedBody},
    telemetry::{CallSampler, RPC_TARGET},
};

/// Observes every call of the services described by `descriptor_sets`; a path outside them
/// is labelled `unknown`, so a client cannot mint label values.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    methods: Arc<Methods>,
}

impl ObserveLayer {
    /// `descriptor_sets`: the encoded descriptor sets of every service served; `sampler`: which
    /// calls get a server span (`None`: tracing is off).
    pub fn new(
        descriptor_sets: &[&[u8]],
        sampler: Option<CallSampler>,
    ) -> Result<Self, prost::DecodeError> {
        let mut by_path = Vec::new();
        for encoded in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*encoded)?;
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    let service_name: Arc<str> = if package.is_empty() {
                        service.name().into()
                    } else {
                        format!("{package}.{}", service.name()).into()
                    };
                    for method in &service.method {
                        let path = format!("/{service_name}/{}", method.name());
                        let method = Method::new(Arc::clone(&service_name), method.name());
                        by_path.push((path, Arc::new(method)));
                    }
                }
            }
        }
        Ok(Self {
            methods: Arc::new(Methods {
                by_path,
                unknown: Arc::new(Method::new("unknown".into(), "unknown")),
                sampler,
            }),
        })
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            methods: Arc::clone(&self.methods),
        }
    }
}

#[derive(Debug)]
struct Methods {
    /// A dozen paths: a scan compares lengths first, and beats hashing a path per call.
    by_path: Vec<(String, Arc<Method>)>,
    unknown: Arc<Method>,
    sampler: Option<CallSampler>,
}

impl Methods {
    fn find(&self, path: &str) -> &Arc<Method> {
        self.by_path
            .iter()
            .find(|(known, _)| known == path)
            .map_or(&self.unknown, |(_, method)| method)
    }
}

/// One method's names and its metric handles, made on first use of each status code.
#[derive(Debug)]
struct Method {
    service: Arc<str>,
    name: Arc<str>,
    /// `service/method`, the server span's name.
    span_name: String,
    by_code: [OnceLock<(Counter, Histogram)>; 17],
}

impl Method {
    fn new(service: Arc<str>, name: &str) -> Self {
        Self {
            span_name: format!("{service}/{name}"),
            service,
            name: name.into(),
            by_code: Default::default(),
        }
    }

    /// Logs, counts and times one finished call, and closes its span with its status.
    fn finish(&self, code: Code, started: Instant, span: &Span) {
        let elapsed = started.elapsed();
        let (calls, latency) = self.by_code[code as usize].get_or_init(|| {
            crate::metrics::rpc_handles(Arc::clone(&self.service), Arc::clone(&self.name), code)
        });
        calls.increment(1);
        latency.record(elapsed.as_secs_f64());
        tracing::info!(
            service = &*self.service,
            method = &*self.name,
            code = ?code,
            latency_ms = elapsed.as_secs_f64() * 1e3,
            "rpc"
        );
        if !span.is_disabled() {
            span.record("rpc.grpc.status_code", code as i64);
            if is_server_error(code) {
                span.record("otel.status_code", "ERROR");
            }
        }
    }
}

/// The codes OpenTelemetry's RPC conventions count as a server's failure; the others are the
/// client's (a wrong password is not an error of authd's).
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// See [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    methods: Arc<Methods>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Observe<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ObservedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let method = self.methods.find(request.uri().path());
        let caller = self
            .methods
            .sampler
            .as_ref()
            .and_then(|sampler| sampler.sample(request.headers()));
        let span = match caller {
            None => Span::none(),
            Some(caller) => {
                let span = tracing::info_span!(
                    target: RPC_TARGET,
                    "rpc",
                    otel.name = method.span_name.as_str(),
                    otel.kind = "server",
                    rpc.system = "grpc",
                    rpc.service = &*method.service,
                    rpc.method = &*method.name,
                    rpc.grpc.status_code = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                );
                // Fails only for a span the subscriber does not export: nothing to report.
                let _ = span.set_parent(caller);
                span
            }
        };
        let inner = if span.is_none() {
            self.inner.call(request)
        } else {
            span.in_scope(|| self.inner.call(request))
        };
        ObservedFuture {
            inner,
            call: Some(Call {
                method: Arc::clone(method),
                started,
                span,
            }),
        }
    }
}

/// A call not yet finished.
#[derive(Debug)]
struct Call {
    method: Arc<Method>,
    started: Instant,
    span: Span,
}

impl Call {
    fn finish(self, code: Code) {
        self.method.finish(code, self.started, &self.span);
    }
}

pin_project_lite::pin_project! {
    /// The response on its way, polled inside the call's span when it has one.
    #[derive(Debug)]
    pub struct ObservedFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, B, E> Future for ObservedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<ObservedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = match this.call {
            Some(call) if !call.span.is_none() => call.span.in_scope(|| this.inner.poll(cx)),
            _ => this.inner.poll(cx),
        };
        let response = match std::task::ready!(polled) {
            Ok(response) => response,
            Err(error) => {
                if let Some(call) = this.call.take() {
                    call.finish(Code::Internal);
                }
                return Poll::Ready(Err(error));
            }
        };
        let mut call = this.call.take();
        // A refusal carries its status in the headers, and no trailers follow.
        if let Some(code) = grpc_status(response.headers())
            && let Some(call) = call.take()
        {
            call.finish(code);
        }
        Poll::Ready(Ok(
            response.map(|inner| GuardedBody::new(inner, PendingCall(call)))
        ))
    }
}

/// A response body; its call finishes at its trailers, or when it is dropped.
pub type ObservedBody<B> = GuardedBody<B, PendingCall>;

/// A call whose status is not known yet; dropped unfinished, the client cancelled it.
#[derive(Debug)]
pub struct PendingCall(Option<Call>);

impl PendingCall {
    fn finish(&mut self, code: Code) {
        if let Some(call) = self.0.take() {
            call.finish(code);
        }
    }
}

impl FrameWatch for PendingCall {
    fn frame<D, E>(&mut self, frame: Option<&Result<http_body::Frame<D>, E>>) {
        match frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                }
            }
            Some(Err(_)) => self.finish(Code::Internal),
            // The end without trailers: gRPC always sends a status, so this one is unknown.
            None => self.finish(Code::Unknown),
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get(GRPC_STATUS)?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(code))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_served_method_is_known_by_its_path() {
        let layer = ObserveLayer::new(
            &[
                crate::proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
            None,
        )
        .unwrap();
        let login = layer.methods.find("/auth.v1.AuthService/Login");
        assert_eq!(
            (&*login.service, &*login.name),
            ("auth.v1.AuthService", "Login")
        );
        assert_eq!(login.span_name, "auth.v1.AuthService/Login");
        let check = layer.methods.find("/grpc.health.v1.Health/Check");
        assert_eq!(&*check.name, "Check");
        let unknown = layer.methods.find("/auth.v1.AuthService/Nope");
        assert_eq!((&*unknown.service, &*unknown.name), ("unknown", "unknown"));
    }

    #[test]
    fn the_status_is_read_from_grpc_status() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(grpc_status(&headers), Some(Code::Unauthenticated));
        headers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&headers), None);
    }
}
