//! Accepting connections under bounds, for the gRPC and the HTTP listener alike.
//!
//! Every connection holds a slot of its listener's [`ConnectionLimits::max_connections`] for
//! as long as it is open; with none free the listener stops accepting, and new peers wait in
//! the kernel's backlog instead of taking descriptors the pool and the key files need. A new
//! connection must send its whole opening within the handshake timeout: the HTTP/2 preface,
//! or an HTTP/1 request head up to its empty line, so a peer that connects and says nothing,
//! or trickles a request line, cannot hold a slot. A connection with no call in flight for
//! the idle timeout is closed: calls are counted by [`TrackCallsLayer`] through the
//! [`ConnectionInfo`] each request carries. A failed `accept` (EMFILE, ENFILE) is
//! retried after a growing pause instead of at once.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::{Instant, Sleep},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An idle timeout longer than this (about 30 years) is taken as this.
const LONGEST_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// The longest pause after a failed `accept`.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// What one listener admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; more wait in the backlog.
    pub max_connections: usize,
    /// How long a new connection has to send its HTTP/2 preface or its first HTTP/1 head.
    pub handshake_timeout: Duration,
    /// How long a connection may stay open with no call in flight.
    pub idle_timeout: Duration,
}

/// A listener that admits at most [`ConnectionLimits::max_connections`] at once.
#[derive(Debug)]
pub struct BoundedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

impl BoundedListener {
    /// Bounds `listener` by `limits`.
    pub fn new(listener: TcpListener, limits: ConnectionLimits) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    /// The next connection, once a slot is free; accept failures are retried after a pause.
    pub async fn next(&self) -> BoundedStream {
        let slot = match Arc::clone(&self.slots).acquire_owned().await {
            Ok(slot) => slot,
            // The semaphore is never closed; should it be, nothing more is accepted.
            Err(_) => std::future::pending().await,
        };
        let mut pause = Duration::from_millis(10);
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    // Without it, a response written in two segments waits for the client's
                    // delayed ACK: a flat 40 ms per call, measured.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "TCP_NODELAY refused; connection dropped");
                        continue;
                    }
                    let local = stream.local_addr().ok();
                    return BoundedStream {
                        stream,
                        peer,
                        _slot: slot,
                        opening: Some(Opening::new(self.handshake_timeout)),
                        idle: Idle::new(self.idle_timeout),
                        info: ConnectionInfo {
                            tcp: TcpConnectInfo {
                                local_addr: local,
                                remote_addr: Some(peer),
                            },
                            calls: Arc::default(),
                        },
                    };
                }
                // The peer gave up before it was accepted: nothing to wait for.
                Err(error) if is_connection_error(&error) => {}
                Err(error) => {
                    tracing::warn!(%error, ?pause, "accept failed; retrying after a pause");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_ACCEPT_PAUSE);
                }
            }
        }
    }

    /// The connections as a stream, for tonic's `serve_with_incoming`: a task accepts them
    /// and ends when the server drops the stream.
    pub fn into_stream(self) -> ReceiverStream<io::Result<BoundedStream>> {
        let (sender, receiver) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                let connection = self.next().await;
                if sender.send(Ok(connection)).await.is_err() {
                    return;
                }
            }
        });
        ReceiverStream::new(receiver)
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let connection = self.next().await;
        let peer = connection.peer;
        (connection, peer)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Errors of one connection, not of the listener (as hyper and axum classify them).
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A connection's opening, until it is complete: the HTTP/2 preface, or an HTTP/1 request
/// head up to its empty line. Every byte is looked at once, only until then.
#[derive(Debug)]
struct Opening {
    deadline: Pin<Box<Sleep>>,
    /// Bytes read so far.
    read: usize,
    /// Whether every byte so far matched the HTTP/2 preface.
    maybe_http2: bool,
    /// Where the last bytes leave an HTTP/1 head: a line just ended (after `\n`), perhaps
    /// followed by a `\r`. httparse accepts bare `\n` line ends, so this does too.
    line: LineEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineEnd {
    Within,
    Ended,
    EndedThenCr,
}

impl Opening {
    fn new(timeout: Duration) -> Self {
        Self {
            deadline: Box::pin(tokio::time::sleep(timeout)),
            read: 0,
            maybe_http2: true,
            line: LineEnd::Within,
        }
    }

    /// Takes `bytes` in; whether the opening is now complete.
    fn complete_after(&mut self, bytes: &[u8]) -> bool {
        for &byte in bytes {
            if self.maybe_http2 {
                self.maybe_http2 = HTTP2_PREFACE.get(self.read) == Some(&byte);
                if self.maybe_http2 && self.read + 1 == HTTP2_PREFACE.len() {
                    return true;
                }
            }
            self.read += 1;
            self.line = match (self.line, byte) {
                (LineEnd::Ended | LineEnd::EndedThenCr, b'\n') if !self.maybe_http2 => {
                    return true;
                }
                (_, b'\n') => LineEnd::Ended,
                (LineEnd::Ended, b'\r') => LineEnd::EndedThenCr,
                _ => LineEnd::Within,
            };
        }
        false
    }
}

/// The idle timeout's timer: when it fires, the connection is closed if no call has been in
/// flight since one timeout ago, and the timer is set again otherwise.
#[derive(Debug)]
struct Idle {
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// The task the timer wakes, once it has been polled: until it fires, polling it again
    /// for the same task changes nothing (and a busy connection reads often).
    registered: Option<std::task::Waker>,
}

impl Idle {
    fn new(timeout: Duration) -> Self {
        // Longer means never, and keeps the deadline arithmetic below from overflowing.
        let timeout = timeout.min(LONGEST_IDLE_TIMEOUT);
        Self {
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            registered: None,
        }
    }

    /// Ready once the connection has been idle for the whole timeout.
    fn poll_expired(&mut self, calls: &Calls, cx: &mut Context<'_>) -> Poll<()> {
        let same_task = self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        if same_task && !self.timer.is_elapsed() {
            return Poll::Pending;
        }
        self.registered = Some(cx.waker().clone());
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let due = match calls.idle_since() {
                Some(since) => since + self.timeout,
                None => now + self.timeout,
            };
            if due <= now {
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(due);
        }
        Poll::Pending
    }
}

/// The calls in flight on one connection, and since when none has been.
#[derive(Debug)]
pub struct Calls {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when the last call ended.
    idle_since_ms: AtomicU64,
}

impl Default for Calls {
    fn default() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }
}

impl Calls {
    /// Counts a call as in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> CallInFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        CallInFlight(Arc::clone(self))
    }

    /// When the connection became idle, or `None` while a call is in flight.
    fn idle_since(&self) -> Option<Instant> {
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

/// An accepted connection: holds its listener's slot until dropped. Its reads fail once the
/// handshake timeout passes before its opening is complete, or once it has been idle for the
/// idle timeout.
#[derive(Debug)]
pub struct BoundedStream {
    stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
    opening: Option<Opening>,
    idle: Idle,
    info: ConnectionInfo,
}

impl BoundedStream {
    /// What requests on this connection carry about it.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if read.is_pending() {
            // Polled only while nothing arrives, so a busy connection pays nothing for either.
            if let Some(opening) = &mut this.opening
                && opening.deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer sent no complete request within the handshake timeout",
                )));
            }
            if this.idle.poll_expired(&this.info.calls, cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection was idle for the idle timeout",
                )));
            }
        } else if let (Poll::Ready(Ok(())), Some(opening)) = (&read, &mut this.opening)
            && opening.complete_after(&buf.filled()[before..])
        {
            this.opening = None;
        }
        read
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for BoundedStream {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, BoundedListener>>
    for ConnectionInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, BoundedListener>) -> Self {
        stream.io().info().clone()
    }
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
        let extensions = request.extensions();
        let info = extensions
            .get::<ConnectionInfo>()
            .or_else(|| {
                extensions
                    .get::<tonic::transport::server::TlsConnectInfo<ConnectionInfo>>()
                    .map(|tls| tls.get_ref())
            })
            .or_else(|| {
                extensions
                    .get::<axum::extract::ConnectInfo<ConnectionInfo>>()
                    .map(|axum| &axum.0)
            })
            .cloned();
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
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, _call: call })))
    }
}

pin_project_lite::pin_project! {
    /// A response body; the call ends when it is dropped.
    #[derive(Debug)]
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _call: Option<CallInFlight>,
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Raises this process's descriptor limit to its hard limit; returns the limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` to a new opening; after which chunk it completed, if any.
    fn completes_after(chunks: &[&[u8]]) -> Option<usize> {
        let mut opening = Opening::new(Duration::from_secs(1));
        chunks
            .iter()
            .position(|chunk| opening.complete_after(chunk))
    }

    #[tokio::test]
    async fn an_http2_preface_completes_the_opening_on_its_last_byte() {
        assert_eq!(completes_after(&[HTTP2_PREFACE]), Some(0));
        let (head, tail) = HTTP2_PREFACE.split_at(23);
        assert_eq!(completes_after(&[head, tail]), Some(1));
        // Its own "\r\n\r\n" after 18 bytes does not end it as an HTTP/1 head would.
        assert_eq!(completes_after(&[&HTTP2_PREFACE[..18], b"XX"]), None);
    }

    #[tokio::test]
    async fn an_http1_head_completes_the_opening_at_its_empty_line() {
        let head: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(completes_after(&[head]), Some(0));
        assert_eq!(
            completes_after(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r", b"\n"]),
            Some(2)
        );
        assert_eq!(completes_after(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some(0));
        assert_eq!(
            completes_after(&[b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: abcdefgh"]),
            None
        );
        assert_eq!(completes_after(&[b"GET / HTTP/1.1\r\n\r\r\n"]), None);
    }
}
