//! The process-wide bound on calls in flight: a call beyond it is refused at once, and a call
//! that runs too long (a request whose body never comes, say) is abandoned, so that no set of
//! peers can hold every slot.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tonic::{body::Body, codegen::http, server::NamedService};

use super::status::{call_timed_out, calls_shed};

/// Wraps a gRPC service (AuthService) so that at most `permits` of its calls run at once across
/// every connection, each for at most `timeout`. Health and reflection stay outside it, so
/// that an overloaded server still answers its probes.
#[derive(Debug, Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl<S> InFlightLimit<S> {
    /// `inner`, with at most `max_calls` calls in flight, each for at most `timeout`.
    pub fn new(inner: S, max_calls: usize, timeout: Duration) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max_calls)),
            timeout,
        }
    }
}

impl<S: NamedService> NamedService for InFlightLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for InFlightLimit<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = LimitedCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => LimitedCall {
                call: Some(self.inner.call(request)),
                timeout: self.timeout,
                timer: None,
                _permit: Some(permit),
            },
            Err(_) => {
                crate::metrics::call_shed();
                LimitedCall {
                    call: None,
                    timeout: self.timeout,
                    timer: None,
                    _permit: None,
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A call holding its slot, or a refusal for want of one. Its timer is set only once the
    /// call has to wait, for the whole timeout from then: most calls (a Validate whose request
    /// has arrived whole) answer at their first poll and never read the clock or touch the
    /// timer wheel, and those microseconds do not matter to a timeout of seconds.
    #[derive(Debug)]
    pub struct LimitedCall<F> {
        #[pin]
        call: Option<F>,
        timeout: Duration,
        timer: Option<Pin<Box<Sleep>>>,
        _permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F> Future for LimitedCall<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>>,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(call) = this.call.as_pin_mut() else {
            return Poll::Ready(Ok(calls_shed().into_http()));
        };
        if let Poll::Ready(answered) = call.poll(cx) {
            return Poll::Ready(answered);
        }
        let timeout = *this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        std::task::ready!(timer.as_mut().poll(cx));
        crate::metrics::call_timed_out();
        Poll::Ready(Ok(call_timed_out().into_http()))
    }
}
