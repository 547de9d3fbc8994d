//! What every gRPC call leaves behind, whichever service answers it (AuthService, health,
//! reflection): one log line, its count and latency in the metrics, when tracing is on a
//! server span that continues the caller's W3C `traceparent`, and, for the idle timeout, its
//! time in flight on its connection.
//!
//! The call's status is read where gRPC puts it: the response headers of a refusal
//! (trailers-only), else the trailers at the end of the body. A unary call's answer is one
//! message that tonic encodes whole, so its trailers say OK: it finishes with its response
//! head, and its body goes out unwrapped (watching it cost about 2% of a Validate's CPU:
//! tonic boxes any body type but its own). A streaming call finishes at its trailers. A call
//! dropped before it finishes is a call the client cancelled.
//!
//! One layer does all of it, so that a call pays for one wrapper of its future and one
//! reading of the clock at its end, not one of each per concern.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use prost::Message as _;
use tonic::{Code, body::Body, codegen::http};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::status::{grpc_status, refusal_status};
use crate::{
    guarded_body::{FrameWatch, GuardedBody},
    listener::{CallInFlight, ConnectionInfo},
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
                        let method = Method::new(
                            Arc::clone(&service_name),
                            method.name(),
                            method.server_streaming(),
                        );
                        by_path.push((path, Arc::new(method)));
                    }
                }
            }
        }
        Ok(Self {
            methods: Arc::new(Methods {
                by_path,
                // An unknown path is answered UNIMPLEMENTED in its head.
                unknown: Arc::new(Method::new("unknown".into(), "unknown", false)),
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
    /// Whether the server answers with a stream: the call then finishes at its trailers.
    streaming: bool,
    by_code: [OnceLock<Arc<crate::metrics::Latency>>; 17],
}

impl Method {
    fn new(service: Arc<str>, name: &str, streaming: bool) -> Self {
        Self {
            span_name: format!("{service}/{name}"),
            service,
            name: name.into(),
            streaming,
            by_code: Default::default(),
        }
    }

    /// Logs, counts and times one finished call, and closes its span with its status.
    fn finish(&self, code: Code, elapsed: std::time::Duration, span: &Span) {
        self.by_code[code as usize]
            .get_or_init(|| crate::metrics::rpc_calls(&self.service, &self.name, code))
            .record(elapsed);
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

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for Observe<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = ObservedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let in_flight = ConnectionInfo::begin_call(request.extensions());
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
            call: PendingCall(Some(Call {
                method: Arc::clone(method),
                started,
                span,
                in_flight,
            })),
        }
    }
}

/// A call not yet finished.
#[derive(Debug)]
struct Call {
    method: Arc<Method>,
    started: Instant,
    span: Span,
    /// `None` for a request that came on no connection of ours (a test's, say).
    in_flight: Option<CallInFlight>,
}

impl Call {
    fn finish(self, code: Code) {
        let now = Instant::now();
        self.method.finish(
            code,
            now.saturating_duration_since(self.started),
            &self.span,
        );
        if let Some(in_flight) = self.in_flight {
            in_flight.end_at(now.into());
        }
    }
}

pin_project_lite::pin_project! {
    /// The response on its way, polled inside the call's span when it has one.
    #[derive(Debug)]
    pub struct ObservedFuture<F> {
        #[pin]
        inner: F,
        call: PendingCall,
    }
}

impl<F, E> Future for ObservedFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = match &this.call.0 {
            Some(call) if !call.span.is_none() => call.span.in_scope(|| this.inner.poll(cx)),
            _ => this.inner.poll(cx),
        };
        let mut response = match std::task::ready!(polled) {
            Ok(response) => response,
            Err(error) => {
                this.call.finish(Code::Internal);
                return Poll::Ready(Err(error));
            }
        };
        // A refusal carries its status in the headers, and no trailers follow.
        if let Some(code) = refusal_status(&mut response) {
            this.call.finish(code);
        }
        match this.call.0.take() {
            Some(stream) if stream.method.streaming => {
                let call = PendingCall(Some(stream));
                Poll::Ready(Ok(
                    response.map(|inner| Body::new(GuardedBody::new(inner, call)))
                ))
            }
            Some(unary) => {
                unary.finish(Code::Ok);
                Poll::Ready(Ok(response))
            }
            None => Poll::Ready(Ok(response)),
        }
    }
}

/// A call whose status is not known yet; dropped unfinished (its answer or its body), the
/// client cancelled it.
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
        assert!(!login.streaming);
        let check = layer.methods.find("/grpc.health.v1.Health/Check");
        assert_eq!(&*check.name, "Check");
        assert!(!check.streaming);
        assert!(layer.methods.find("/grpc.health.v1.Health/Watch").streaming);
        assert!(
            layer
                .methods
                .find("/auth.v1.AuthService/WatchRevocations")
                .streaming
        );
        let unknown = layer.methods.find("/auth.v1.AuthService/Nope");
        assert_eq!((&*unknown.service, &*unknown.name), ("unknown", "unknown"));
    }
}
