//! WatchRevocations: a subscription's messages go to the client through a small queue, fed by
//! a task of the stream's own that gives up on a client that stops reading, and then cuts
//! its connection: a stream with no window left cannot even carry its final status.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::{
    mpsc::{self, error::TrySendError},
    oneshot,
};
use tonic::Status;

use super::{instant, uuid_text};
use crate::{
    auth::{AuthError, FeedMessage, FeedPosition, RevocationFeed},
    listener::ConnectionInfo,
    proto::{RevokedSession, WatchRevocationsRequest, WatchRevocationsResponse},
};

/// Messages made ahead of the client: a small queue, so a stalled client holds little.
const QUEUE: usize = 2;

/// Starts a subscription and the task that feeds its stream.
pub(super) fn watch(
    feed: &RevocationFeed,
    request: &tonic::Request<WatchRevocationsRequest>,
) -> Result<FeedStream, AuthError> {
    let resume_from = FeedPosition::parse(&request.get_ref().resume_from)?;
    let peer = ConnectionInfo::peer_of(request.extensions()).map(|address| address.ip());
    let connection = ConnectionInfo::of(request.extensions()).map(|info| Arc::clone(&info.calls));
    let mut subscription = feed.subscribe(peer, resume_from)?;
    let send_timeout = feed.send_timeout();
    let (queue, messages) = mpsc::channel(QUEUE);
    let (end, ended) = oneshot::channel();
    tokio::spawn(async move {
        let reason = loop {
            let next = tokio::select! {
                biased;
                () = queue.closed() => return,
                next = subscription.next() => next,
            };
            let message = match next {
                Ok(message) => response(message),
                Err(reason) => break reason,
            };
            let message = match queue.try_send(message) {
                Ok(()) => continue,
                // The client has gone.
                Err(TrySendError::Closed(_)) => return,
                Err(TrySendError::Full(message)) => message,
            };
            // The client is behind: wait for it, up to the send timeout, unless the server
            // is shutting down, which must not wait for it.
            let stalled = tokio::select! {
                biased;
                () = subscription.closing() => AuthError::ShuttingDown,
                sent = tokio::time::timeout(send_timeout, queue.send(message)) => match sent {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return,
                    Err(_) => AuthError::FeedConsumerTooSlow,
                },
            };
            // Its stream may have no window left even for the status: cut the connection,
            // or it would hold its buffers, and the shutdown, for as long as it likes.
            if let Some(calls) = &connection {
                calls.sever();
            }
            break stalled;
        };
        crate::metrics::feed_disconnected(match reason {
            AuthError::ShuttingDown => "shutting_down",
            _ => "too_slow",
        });
        // The client may have gone meanwhile.
        let _ = end.send(Status::from(reason));
    });
    Ok(FeedStream {
        messages,
        ended: Some(ended),
    })
}

fn response(message: FeedMessage) -> WatchRevocationsResponse {
    WatchRevocationsResponse {
        revoked: message
            .revoked
            .into_iter()
            .map(|revocation| RevokedSession {
                session_id: uuid_text(revocation.session_id),
                revoked_at: Some(instant(revocation.revoked_at)),
                forget_after: Some(instant(revocation.forget_after)),
            })
            .collect(),
        caught_up: message.caught_up,
        position: message.position.encode(),
        sent_at: Some(instant(message.sent_at)),
    }
}

/// The response stream: the queued messages, until the task ends it with a status, which
/// overtakes whatever is still queued (a resuming client gets those again).
#[derive(Debug)]
pub struct FeedStream {
    messages: mpsc::Receiver<WatchRevocationsResponse>,
    /// `None` once the status has gone out, or the task ended without one.
    ended: Option<oneshot::Receiver<Status>>,
}

impl futures_util::Stream for FeedStream {
    type Item = Result<WatchRevocationsResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(ended) = self.ended.as_mut()
            && let Poll::Ready(outcome) = Pin::new(ended).poll(cx)
        {
            self.ended = None;
            if let Ok(status) = outcome {
                // Nothing after the status.
                self.messages.close();
                while self.messages.try_recv().is_ok() {}
                return Poll::Ready(Some(Err(status)));
            }
        }
        self.messages.poll_recv(cx).map(|message| message.map(Ok))
    }
}
