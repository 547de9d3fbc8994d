//! Accepting connections under bounds, for the gRPC and the HTTP listener alike.
//!
//! Every connection holds a slot of its listener's [`ConnectionLimits::max_connections`] for
//! as long as it is open; with none free the listener stops accepting, and new peers wait in
//! the kernel's backlog instead of taking descriptors the pool and the key files need. A new
//! connection must send its first [`HANDSHAKE_BYTES`] within the handshake timeout (an HTTP/2
//! preface is exactly that long; an HTTP/1 request line with its headers is longer), so a
//! peer that connects and says nothing cannot hold a slot. A failed `accept` (EMFILE, ENFILE)
//! is retried after a growing pause instead of at once.

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
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Sleep,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a new connection must send within the handshake timeout: the HTTP/2 preface.
pub const HANDSHAKE_BYTES: usize = 24;

/// The longest pause after a failed `accept`.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// What one listener admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; more wait in the backlog.
    pub max_connections: usize,
    /// How long a new connection has to send its first [`HANDSHAKE_BYTES`].
    pub handshake_timeout: Duration,
}

/// A listener that admits at most [`ConnectionLimits::max_connections`] at once.
#[derive(Debug)]
pub struct BoundedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
}

impl BoundedListener {
    /// Bounds `listener` by `limits`.
    pub fn new(listener: TcpListener, limits: ConnectionLimits) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            handshake_timeout: limits.handshake_timeout,
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
                    return BoundedStream {
                        stream,
                        peer,
                        _slot: slot,
                        handshake: Some(Handshake {
                            due: HANDSHAKE_BYTES,
                            deadline: Box::pin(tokio::time::sleep(self.handshake_timeout)),
                        }),
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

/// The first bytes a connection still owes, and until when.
#[derive(Debug)]
struct Handshake {
    due: usize,
    deadline: Pin<Box<Sleep>>,
}

/// An accepted connection: holds its listener's slot until dropped, and fails its reads once
/// the handshake timeout passes before its first [`HANDSHAKE_BYTES`] arrived.
#[derive(Debug)]
pub struct BoundedStream {
    stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
    handshake: Option<Handshake>,
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
        let Some(handshake) = &mut this.handshake else {
            return read;
        };
        if let Poll::Ready(Ok(())) = &read {
            handshake.due = handshake.due.saturating_sub(buf.filled().len() - before);
            if handshake.due == 0 {
                this.handshake = None;
            }
            return read;
        }
        if read.is_pending() && handshake.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer sent no request within the handshake timeout",
            )));
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
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// Raises this process's descriptor limit to its hard limit; returns the limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}
