//! Calls in flight per connection, counted for the idle timeout.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::task::AtomicWaker;
use tokio::time::Instant;
use tonic::transport::server::TcpConnectInfo;

use crate::guarded_body::{FrameWatch, GuardedBody};

/// The calls in flight on one connection, since when none has been, and whether the server
/// has cut the connection.
#[derive(Debug)]
pub struct Calls {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when the last call ended.
    idle_since_ms: AtomicU64,
    /// Set by [`Calls::sever`]; the connection's reader notices it.
    severed: AtomicBool,
    /// Wakes the connection's reader, which waits for the peer otherwise.
    reader: AtomicWaker,
}

impl Default for Calls {
    fn default() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            severed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
        }
    }
}

impl Calls {
    /// Counts a call as in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> CallInFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        CallInFlight(Arc::clone(self))
    }

    /// Closes the connection, with every call on it: for a peer that stopped reading, whose
    /// stream HTTP/2 can no longer end (no window left even for its last frames), and which
    /// would otherwise hold its buffers, and hold up a shutdown, for as long as it likes.
    pub fn sever(&self) {
        self.severed.store(true, Ordering::Release);
        self.reader.wake();
    }

    /// Whether the connection was severed; otherwise the reader is woken when it is.
    pub(super) fn poll_severed(&self, cx: &Context<'_>) -> bool {
        self.reader.register(cx.waker());
        self.severed.load(Ordering::Acquire)
    }

    /// When the connection became idle, or `None` while a call is in flight.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::SeqCst) == 0)
            .then(|| self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst)))
    }
}

/// One call in flight on a connection; dropping it ends the call.
#[derive(Debug)]
pub struct CallInFlight(Arc<Calls>);

impl Drop for CallInFlight {
    fn drop(&mut self) {
        let since_opened = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(since_opened, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What each request on a connection carries about it: its addresses, and its call count.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The addresses, as tonic's own listener reports them.
    pub tcp: TcpConnectInfo,
    /// The connection's calls in flight.
    pub calls: Arc<Calls>,
}

/// Counts each request as a call in flight on its connection until its response body has
/// been sent (or dropped), for the idle timeout. Finds the connection in the request's
/// extensions as tonic (plain or TLS) and axum put it there, and gives tonic's own
/// [`TcpConnectInfo`] back, so `Request::remote_addr` keeps working.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackCallsLayer;

impl<S> tower::Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackCalls { inner }
    }
}

/// See [`TrackCallsLayer`].
#[derive(Debug, Clone)]
pub struct TrackCalls<S> {
    inner: S,
}

impl ConnectionInfo {
    /// The connection a request came on, as tonic (plain or TLS) and axum put it in the
    /// request's extensions.
    pub fn of(extensions: &http::Extensions) -> Option<&Self> {
        extensions
            .get::<Self>()
            .or_else(|| {
                extensions
                    .get::<tonic::transport::server::TlsConnectInfo<Self>>()
                    .map(|tls| tls.get_ref())
            })
            .or_else(|| {
                extensions
                    .get::<axum::extract::ConnectInfo<Self>>()
                    .map(|axum| &axum.0)
            })
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for TrackCalls<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let info = ConnectionInfo::of(request.extensions()).cloned();
        let call = info.map(|info| {
            let call = info.calls.begin();
            request.extensions_mut().insert(info.tcp);
            call
        });
        TrackedFuture {
            inner: self.inner.call(request),
            call,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response on its way, with its call still counted.
    #[derive(Debug)]
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        call: Option<CallInFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let call = this.call.take();
        Poll::Ready(Ok(response.map(|inner| GuardedBody::new(inner, call))))
    }
}

/// A response body; the call ends when it is dropped.
pub type TrackedBody<B> = GuardedBody<B, Option<CallInFlight>>;

impl FrameWatch for Option<CallInFlight> {
    fn frame<D, E>(&mut self, _: Option<&Result<http_body::Frame<D>, E>>) {}
}
