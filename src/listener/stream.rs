//! One accepted connection: its listener's slot, the handshake and idle timeouts on its reads.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::OwnedSemaphorePermit,
    time::{Instant, Sleep},
};
use tonic::transport::server::Connected;

use super::{BoundedListener, Calls, ConnectionInfo};

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An idle timeout longer than this (about 30 years) is taken as this.
const LONGEST_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// An accepted connection: holds its listener's slot until dropped. Its reads fail once the
/// handshake timeout passes before its opening is complete, or once it has been idle for the
/// idle timeout.
#[derive(Debug)]
pub struct BoundedStream {
    pub(super) stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
    opening: Option<Opening>,
    idle: Idle,
    info: ConnectionInfo,
    /// The task that reads this connection, as last registered with the idle timer and with
    /// [`Calls::wake_on_sever`]: until it changes, neither needs registering again (and a busy
    /// connection's reads come up empty thousands of times a second).
    reader: Option<std::task::Waker>,
}

impl BoundedStream {
    pub(super) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        handshake_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            stream,
            peer,
            _slot: slot,
            opening: Some(Opening::new(handshake_timeout)),
            idle: Idle::new(idle_timeout),
            info: ConnectionInfo {
                peer,
                calls: Arc::default(),
            },
            reader: None,
        }
    }

    /// The peer's address.
    pub(super) fn peer(&self) -> SocketAddr {
        self.peer
    }

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
            let registered = this
                .reader
                .as_ref()
                .is_some_and(|reader| reader.will_wake(cx.waker()));
            if !registered {
                this.info.calls.wake_on_sever(cx.waker());
                this.reader = Some(cx.waker().clone());
            }
            if this
                .idle
                .poll_expired(&this.info.calls, cx, registered)
                .is_ready()
            {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection was idle for the idle timeout",
                )));
            }
            if this.info.calls.is_severed() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the server cut the connection of a peer that stopped reading",
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
}

impl Idle {
    fn new(timeout: Duration) -> Self {
        // Longer means never, and keeps the deadline arithmetic below from overflowing.
        let timeout = timeout.min(LONGEST_IDLE_TIMEOUT);
        Self {
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// Ready once the connection has been idle for the whole timeout. `registered`: the timer
    /// was last polled by this task, so until it fires, polling it again changes nothing.
    fn poll_expired(&mut self, calls: &Calls, cx: &mut Context<'_>, registered: bool) -> Poll<()> {
        if registered && !self.timer.is_elapsed() {
            return Poll::Pending;
        }
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
