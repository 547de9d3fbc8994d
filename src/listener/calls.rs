//! Calls in flight per connection, counted for the idle timeout.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

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
        CallInFlight(Some(Arc::clone(self)))
    }

    fn end(&self, at: Instant) {
        let since_opened = u64::try_from(at.saturating_duration_since(self.opened).as_millis())
            .unwrap_or(u64::MAX);
        self.idle_since_ms.store(since_opened, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Closes the connection, with every call on it: for a peer that stopped reading, whose
    /// stream HTTP/2 can no longer end (no window left even for its last frames), and which
    /// would otherwise hold its buffers, and hold up a shutdown, for as long as it likes.
    pub fn sever(&self) {
        self.severed.store(true, Ordering::Release);
        self.reader.wake();
    }

    /// Wakes `reader` when the connection is severed. It stays registered until then, so a
    /// reader registers once, and again only when another task reads.
    pub(super) fn wake_on_sever(&self, reader: &Waker) {
        self.reader.register(reader);
    }

    /// Whether the connection was severed: checked after [`Calls::wake_on_sever`], so that a
    /// sever in between still wakes the reader.
    pub(super) fn is_severed(&self) -> bool {
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
pub struct CallInFlight(Option<Arc<Calls>>);

impl CallInFlight {
    /// Ends the call at `now`, as its caller has just read the clock.
    pub fn end_at(mut self, now: Instant) {
        if let Some(calls) = self.0.take() {
            calls.end(now);
        }
    }
}

impl Drop for CallInFlight {
    fn drop(&mut self) {
        if let Some(calls) = self.0.take() {
            calls.end(Instant::now());
        }
    }
}

/// What each request on a connection carries about it: its peer, and its call count.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The connection's calls in flight.
    pub calls: Arc<Calls>,
}

/// Counts each request as a call in flight on its connection until its response body has
/// been sent (or dropped), for the idle timeout: the HTTP port's layer. (The gRPC port's calls
/// are counted by the layer that observes them, which reads the clock at their end anyway.)
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

    /// The address of the peer a request came from, on a connection of ours. (tonic's own
    /// `Request::remote_addr` knows only the connections of tonic's listener.)
    pub fn peer_of(extensions: &http::Extensions) -> Option<SocketAddr> {
        Self::of(extensions).map(|info| info.peer)
    }

    /// Counts a request as a call in flight on the connection it came on, if it came on one
    /// of ours.
    pub fn begin_call(extensions: &http::Extensions) -> Option<CallInFlight> {
        Self::of(extensions).map(|info| info.calls.begin())
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

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = ConnectionInfo::begin_call(request.extensions());
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
