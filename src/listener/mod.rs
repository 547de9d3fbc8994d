//! Accepting connections under bounds, for the gRPC and the HTTP listener alike.
//!
//! Every connection holds a slot of its listener's [`ConnectionLimits::max_connections`] for
//! as long as it is open; with none free the listener stops accepting, and new peers wait in
//! the kernel's backlog instead of taking descriptors the pool and the key files need. A new
//! connection must send its whole opening within the handshake timeout: the HTTP/2 preface,
//! or an HTTP/1 request head up to its empty line, so a peer that connects and says nothing,
//! or trickles a request line, cannot hold a slot. A connection with no call in flight for
//! the idle timeout is closed: calls are counted through the [`ConnectionInfo`] each
//! request carries, by [`TrackCallsLayer`] on the HTTP port and by the layer that observes
//! each gRPC call. A peer that vanished without closing is found by
//! the kernel's TCP keepalive where the listener asks for it ([`Keepalive`]). A failed
//! `accept` (EMFILE, ENFILE) is retried after a growing pause instead of at once.

mod calls;
mod stream;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_stream::wrappers::ReceiverStream;

pub use calls::{
    CallInFlight, Calls, ConnectionInfo, TrackCalls, TrackCallsLayer, TrackedBody, TrackedFuture,
};
pub use stream::BoundedStream;

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
    /// Dead-peer detection on each connection, if any.
    pub keepalive: Option<Keepalive>,
}

/// Dead-peer detection by the kernel: TCP keepalive probes once a connection has been silent
/// for `idle`, and the connection closed once a probe, or data sent, has gone unacknowledged
/// for `timeout` (`TCP_USER_TIMEOUT`, paired with keepalive as gRPC's own implementations
/// do). HTTP/2 PINGs would find the same peers, but hyper's keep-alive reads the clock and
/// takes a lock on every frame of every call; the kernel's probes cost a call nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe; whole seconds, 1 to 32,767 (the kernel's bounds).
    pub idle: Duration,
    /// How long a probe or sent data may go unacknowledged; whole seconds, 1 to 32,767.
    pub timeout: Duration,
}

impl Keepalive {
    fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        let socket = socket2::SockRef::from(stream);
        // One probe, answered within the timeout, or the connection is closed.
        socket.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(self.idle)
                .with_interval(self.timeout)
                .with_retries(1),
        )?;
        // Also bounds data left unacknowledged, which keepalive alone never probes.
        #[cfg(target_os = "linux")]
        socket.set_tcp_user_timeout(Some(self.timeout))?;
        Ok(())
    }
}

/// A listener that admits at most [`ConnectionLimits::max_connections`] at once.
#[derive(Debug)]
pub struct BoundedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
}

impl BoundedListener {
    /// Bounds `listener` by `limits`.
    pub fn new(listener: TcpListener, limits: ConnectionLimits) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
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
                    // delayed ACK: a flat 40 ms per call, measured. (tonic's own listener
                    // sets it too; connections to tonic come from here instead.)
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "TCP_NODELAY refused; connection dropped");
                        continue;
                    }
                    if let Some(keepalive) = &self.limits.keepalive
                        && let Err(error) = keepalive.apply(&stream)
                    {
                        tracing::debug!(%error, "TCP keepalive refused; connection dropped");
                        continue;
                    }
                    return BoundedStream::new(
                        stream,
                        peer,
                        slot,
                        self.limits.handshake_timeout,
                        self.limits.idle_timeout,
                    );
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
    /// and ends, closing the listening socket, as soon as the server drops the stream (not
    /// at the next connection: the port must be free once the server has stopped).
    pub fn into_stream(self) -> ReceiverStream<io::Result<BoundedStream>> {
        let (sender, receiver) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                let connection = tokio::select! {
                    () = sender.closed() => return,
                    connection = self.next() => connection,
                };
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
        let peer = connection.peer();
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

/// Raises this process's descriptor limit to its hard limit; returns the limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn accepted_connections_carry_the_keepalive_asked_for() {
        let keepalive = Keepalive {
            idle: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        };
        let limits = |keepalive| ConnectionLimits {
            max_connections: 4,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keepalive,
        };
        for keepalive in [Some(keepalive), None] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let listener = BoundedListener::new(listener, limits(keepalive));
            let _client = TcpStream::connect(address).await.unwrap();
            let accepted = listener.next().await;
            let socket = socket2::SockRef::from(&accepted.stream);
            assert_eq!(socket.keepalive().unwrap(), keepalive.is_some());
            let Some(keepalive) = keepalive else { continue };
            assert_eq!(socket.tcp_keepalive_time().unwrap(), keepalive.idle);
            assert_eq!(socket.tcp_keepalive_interval().unwrap(), keepalive.timeout);
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), 1);
            assert_eq!(socket.tcp_user_timeout().unwrap(), Some(keepalive.timeout));
        }
    }
}
