//! A response body that carries a guard: the guard sees every frame and is dropped with the
//! body, so whatever it stands for (a call in flight, a call's metrics and span) ends exactly
//! when the response does, sent in full or dropped.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};

/// What rides along a response body.
pub trait FrameWatch {
    /// Sees each frame the body yields, and `None` at its end.
    fn frame<D, E>(&mut self, frame: Option<&Result<Frame<D>, E>>);
}

pin_project_lite::pin_project! {
    /// `inner`, with `guard` watching its frames until it is dropped.
    #[derive(Debug)]
    pub struct GuardedBody<B, G> {
        #[pin]
        inner: B,
        guard: G,
    }
}

impl<B, G> GuardedBody<B, G> {
    /// Wraps `inner`.
    pub fn new(inner: B, guard: G) -> Self {
        Self { inner, guard }
    }
}

impl<B: Body, G: FrameWatch> Body for GuardedBody<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        this.guard.frame(frame.as_ref());
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
